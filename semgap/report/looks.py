"""The report's "Sequential design" section and terminal line: each look of H2's sequential design
(semgap.analysis.looks), the p-values it judged and where the run stopped."""
from __future__ import annotations

from semgap.analysis.verdicts import RunVerdicts
from semgap.report.render import Section, Table, fixed


def stop_line(rv: RunVerdicts) -> str | None:
    """One line: how many blocks the design ran and why it stopped; None for a fixed design."""
    design = rv.design
    if not design:
        return None
    looks, planned = design["looks"], design["design"]["looks"]
    taken = f"{design['stopped_after_blocks'] or (looks[-1]['blocks'] if looks else 0)} blocks, look {len(looks)} of {len(planned)}"
    why = design["stop_reason"] or "the run ended before its last look"
    return (f"sequential design (looks at {', '.join(map(str, planned))} blocks, alpha spent "
            f"{', '.join(f'{a:.3g}' for a in design['design']['alphas'])}): stopped after {taken}: {why}")


def section(rv: RunVerdicts) -> list[Section]:
    """The looks, one row per (look, headline); [] for a fixed design."""
    if not rv.design:
        return []
    rows = [(look["look"], look["blocks"], look["alpha"], h["model"], h["phase"], h["link_rate"], h["p_for"],
             h["holm_for"], h["p_against"], h["holm_against"], h["decision"] or "-", look["still_open"])
            for look in rv.design["looks"] for h in look["headlines"]]
    header = ("look", "blocks", "alpha spent", "model", "phase", "rate", "p", "p Holm", "p against", "p against Holm",
              "decided", "open after")
    p = fixed(4)
    formats = {"alpha spent": fixed(4), "p": p, "p Holm": p, "p against": p, "p against Holm": p}
    text = (f"{stop_line(rv)}. At each look every open H2 headline is tested on the blocks so far: p is the largest "
            "one-sided signed-rank p over its blind baselines (against 'reduction <= threshold'), p against the "
            "smallest p of the mirror test times the number of baselines; both Holm-adjusted over the headlines still "
            "open, and compared with that look's share of alpha (Lan-DeMets Pocock-type spending; the shares sum to "
            "alpha). The estimates and intervals beside the verdicts are the fixed-sample ones on the blocks that "
            "ran, not adjusted for the looks (semgap/analysis/sequential.py).")
    return [Section("Sequential design", (text, ""), (Table.from_rows("looks", "Sequential design: looks", header, rows,
                                                                         formats),))]
