"""Where the gap is: per scenario a run measured, semantic's saving against the strongest blind row that ran it (pure).

Scenarios: each matrix group (phase, link rate, decode steps; labelled by the run's sampler when it
is not greedy), the batching benchmark at each session count, and KV recovery (eviction, migration)
at each link rate. "Strongest" describes, it does not judge: the blind row with the fewest bytes
for the byte column, the one with the lowest latency for the latency column. Matrix rows carry the
intersection-union headline verdict (against every blind baseline, naming its binding one); batching
and KV rows have no statistical test, so their reductions are of medians and their verdict says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from semgap import schema
from semgap.analysis import stats
from semgap.analysis.headlines import LOSSY, Headline, Verdict
from semgap.analysis.measurements import CaseRecord, blind_baselines, judged_level
from semgap.schema import CANDIDATE_LABEL

NO_TEST = "no test (measured, not judged)"
KV_SCENARIO_ORDER = ("eviction", "migration")


@dataclass(frozen=True)
class GapRow:
    """One scenario's reductions (1 - semantic / strongest blind; positive: semantic cheaper) and verdicts.

    ``bytes_binding``/``latency_binding`` name the headline's binding baseline (matrix rows only);
    ``note`` says plainly where there is no gap (a reduction <= 0) or the candidate is lossy.
    """

    scenario: str
    kind: str  # "matrix", "batching" or "kv_recovery"
    model: str
    candidate: str
    byte_level: str
    bytes_baseline: str | None
    byte_reduction: float | None
    bytes_verdict: str
    bytes_binding: str | None
    latency_baseline: str | None
    latency_reduction: float | None
    latency_verdict: str
    latency_binding: str | None
    note: str


def strongest(group: dict[str, CaseRecord], hypothesis: str, level: str) -> str | None:
    """The blind row hardest to beat on its own measure: fewest bytes (H1) or lowest latency (H2). Descriptive only."""
    blind = blind_baselines(group)
    if not blind:
        return None
    if hypothesis == "H1":
        return min(blind, key=lambda label: group[label].bytes_per_round(level))
    return min(blind, key=lambda label: stats.blocked_median(group[label].latency_blocks()))


def _notes(byte_reduction: float | None, latency_reduction: float | None, lossy: str = "") -> str:
    notes = [lossy] if lossy else []
    for what, value in (("bytes", byte_reduction), ("latency", latency_reduction)):
        if value is None:
            notes.append(f"no {what} figure")
        elif value <= 0:
            notes.append(f"no gap in {what}: semantic is not cheaper ({value:+.1%})")
    return "; ".join(notes)


def _saving(candidate: float | None, baseline: float | None) -> float | None:
    return None if candidate is None or not baseline else 1.0 - candidate / baseline


# ---------------------------------------------------------------- the matrix

def _scenario(key: tuple, sampler: str | None) -> str:
    _, phase, rate, steps = key
    label = phase + (f" ({steps} steps)" if steps else "") + (f" at {rate}" if rate else "")
    return label + (f", sampler {sampler}" if sampler and not sampler.startswith("greedy") else "")


def matrix_rows(groups: dict[tuple, dict[str, CaseRecord]], headlines: Sequence[Headline],
                verdicts: Sequence[Verdict]) -> list[GapRow]:
    """One row per matrix group with a candidate and a blind baseline."""
    heads = {(h.hypothesis, h.group_key): h for h in headlines}
    pairwise = {(v.hypothesis, v.group_key, v.baseline): v for v in verdicts}
    rows = []
    for key, group in groups.items():
        if CANDIDATE_LABEL not in group or not blind_baselines(group):
            continue
        fewest = strongest(group, "H1", judged_level(list(group.values())))
        fastest = strongest(group, "H2", "-")
        h1, h2 = pairwise[("H1", key, fewest)], pairwise[("H2", key, fastest)]
        head1, head2 = heads[("H1", key)], heads[("H2", key)]
        lossy = "" if head1.verdict != LOSSY else f"LOSSY: token agreement {head1.token_agreement:.3f}"
        rows.append(GapRow(
            scenario=_scenario(key, group[CANDIDATE_LABEL].sampler), kind="matrix", model=key[0],
            candidate=CANDIDATE_LABEL, byte_level=h1.byte_level, bytes_baseline=fewest, byte_reduction=h1.estimate,
            bytes_verdict=head1.verdict, bytes_binding=head1.binding_baseline, latency_baseline=fastest,
            latency_reduction=h2.estimate, latency_verdict=head2.verdict, latency_binding=head2.binding_baseline,
            note=_notes(h1.estimate, h2.estimate, lossy)))
    return rows


# ---------------------------------------------------------------- batching and KV recovery (no test)

def infos_of(output_json: dict, kind: str) -> list[dict]:
    """The extra_info of every benchmark of ``kind`` (schema.KIND_BATCHING, schema.KIND_KV_RECOVERY)."""
    return [bench["extra_info"] for bench in output_json.get("benchmarks", [])
            if isinstance(bench, dict) and isinstance(bench.get("extra_info"), dict) and kind in bench["extra_info"]]


def kv_level(infos: Sequence[dict]) -> str:
    """The byte level every KV-recovery benchmark counted: tcp, else payload."""
    return "tcp" if all(info.get(schema.level_key("tcp", "sent")) is not None for info in infos) else "payload"


def kv_bytes_per_recovery(info: dict, level: str) -> float:
    """The median over rounds of one recovery's bytes, sent + received, at ``level``."""
    sent, received = (info[schema.rounds_key(schema.level_key(level, direction))] for direction in schema.DIRECTIONS)
    return stats.median([a + b for a, b in zip(sent, received)])


def _measured_rows(kind: str, scenario: Callable[[dict], tuple[Any, str]], infos: Sequence[dict], level: str,
                   bytes_of: Callable[[dict], float | None], latency_of: Callable[[dict], float | None],
                   name_of: Callable[[dict], str], min_agreement: float) -> list[GapRow]:
    """Each semantic row against the blind rows of its scenario: reductions of medians, no verdict."""
    by_scenario: dict[Any, list[dict]] = {}
    for info in infos:
        by_scenario.setdefault(scenario(info)[0], []).append(info)
    rows = []
    for where in sorted(by_scenario, key=lambda key: tuple((part is None, part or 0) for part in key)):
        blind = [info for info in by_scenario[where] if info.get("role") == "blind"]
        for info in (info for info in by_scenario[where] if info.get("role") == "semantic"):
            fewest = min((b for b in blind if bytes_of(b) is not None), key=bytes_of, default=None)
            fastest = min((b for b in blind if latency_of(b) is not None), key=latency_of, default=None)
            byte_reduction = _saving(bytes_of(info), bytes_of(fewest) if fewest else None)
            latency_reduction = _saving(latency_of(info), latency_of(fastest) if fastest else None)
            agreement = info.get(schema.TOKEN_AGREEMENT)
            short = agreement is not None and agreement < min_agreement
            lossy = f"LOSSY: token agreement {agreement:.3f}" if short else ""
            rows.append(GapRow(
                scenario=scenario(info)[1], kind=kind, model=str(info.get("model")), candidate=name_of(info),
                byte_level=level, bytes_baseline=name_of(fewest) if fewest else None, byte_reduction=byte_reduction,
                bytes_verdict=NO_TEST, bytes_binding=None, latency_baseline=name_of(fastest) if fastest else None,
                latency_reduction=latency_reduction, latency_verdict=NO_TEST, latency_binding=None,
                note=_notes(byte_reduction, latency_reduction, lossy)))
    return rows


def batching_rows(output_json: dict, min_agreement: float) -> list[GapRow]:
    """The batching benchmark at each session count: bytes per token and decode-step latency (medians over rounds)."""
    infos = infos_of(output_json, schema.KIND_BATCHING)
    level = "tcp" if infos and all(info.get("wire_tcp_bytes_per_token") is not None for info in infos) else "payload"
    field = "wire_tcp_bytes_per_token" if level == "tcp" else "payload_bytes_per_token"
    return _measured_rows("batching", lambda info: ((info.get("model"), info["sessions"]),
                                                    f"batching, {info['sessions']} sessions"),
                          infos, level, lambda info: info.get(field), lambda info: info.get("token_latency_ms"),
                          lambda info: str(info.get("flavour")), min_agreement)


def kv_rows(output_json: dict, min_agreement: float) -> list[GapRow]:
    """KV eviction and migration at each link rate: bytes and milliseconds per recovery (medians over rounds)."""
    infos = infos_of(output_json, schema.KIND_KV_RECOVERY)
    level = kv_level(infos)

    def scenario(info: dict) -> tuple[Any, str]:
        name, rate = info[schema.KIND_KV_RECOVERY], info.get("link_rate")
        order = KV_SCENARIO_ORDER.index(name) if name in KV_SCENARIO_ORDER else len(KV_SCENARIO_ORDER)
        return ((info.get("model"), order, name, info.get("link_rate_bps") or 0, rate),
                f"KV {name}" + (f" at {rate}" if rate else ""))

    return _measured_rows("kv_recovery", scenario, infos, level, lambda info: kv_bytes_per_recovery(info, level),
                          lambda info: info.get("recovery_ms"),
                          lambda info: str(info.get(schema.KV_STRATEGY, info.get("mode"))), min_agreement)


def where_the_gap_is(groups: dict[tuple, dict[str, CaseRecord]], headlines: Sequence[Headline],
                     verdicts: Sequence[Verdict], output_json: dict, min_agreement: float) -> list[GapRow]:
    """Every scenario's row: the matrix groups, then batching, then KV recovery."""
    return (matrix_rows(groups, headlines, verdicts) + batching_rows(output_json, min_agreement)
            + kv_rows(output_json, min_agreement))
