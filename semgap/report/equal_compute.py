"""The report's "Equal compute" section: the premise of H2 (analysis/premise.py) and the run's CPU policy."""
from __future__ import annotations

from semgap.analysis import premise
from semgap.analysis.verdicts import RunVerdicts
from semgap.report.render import Section, Table, fixed


def sections(rv: RunVerdicts, output_json: dict) -> list[Section]:
    """The premise of H2: each remote mode's server compute per step against local's, and the CPU policy."""
    if not rv.compute_checks:
        return []
    meta = output_json.get("semgap") or {}
    if meta.get("cpus_pinned"):
        policy = (f"Client and server ran pinned on disjoint CPUs (client {meta.get('client_cpus')}, "
                  f"{meta.get('client_threads')} thread(s); server {meta.get('server_cpus')}, "
                  f"{meta.get('server_threads')} thread(s)); local computed with the server's thread count.")
    else:
        policy = (f"Client and server were not pinned (policy {meta.get('cpu_policy', 'unknown')}; client CPUs "
                  f"{meta.get('client_cpus', '?')}, server CPUs {meta.get('server_cpus') or '?'}): they may have "
                  "shared cores.")
    rows = [(c.model, c.phase, c.link_rate, c.decode_steps or None, c.label, c.local_ms_per_step, c.server_ms_per_step,
             c.ratio, {True: "yes", False: "NO", None: None}[c.within]) for c in rv.compute_checks]
    header = ("model", "phase", "rate", "steps", "mode", "local ms/step", "server ms/step", "server/local",
              f"within ±{premise.TOLERANCE:.0%}")
    formats = {"local ms/step": fixed(2), "server ms/step": fixed(2), "server/local": fixed(2)}
    outside = [c.warning() for c in rv.compute_checks if c.within is False]
    warning = (f"**Warning: {len(outside)} of {len(rv.compute_checks)} remote cases computed a step more than "
               f"±{premise.TOLERANCE:.0%} away from local; their H2 verdicts measure the CPU as well as the wire.**",
               "") if outside else ()
    before = (*warning, policy, "H2 reads a latency difference as the wire's only where both sides compute a step alike: "
              "a server slower or faster than local by more than the tolerance makes part of the difference "
              "the CPU's.", "")
    return [Section("Equal compute", before, (Table.from_rows("equal_compute", "Server compute per step against local's",
                                                              header, rows, formats),))]
