"""The ablation table: one row per technique set of the semantic runtime, per group, against every baseline.

Each semantic-role benchmark names its technique set (``extra_info["techniques"]``, a comma list,
or ``none``) and its label: ``semantic`` for the headline set that H1 and H2 judge, and
``semantic:<techniques>`` for each ablation variant. This table only describes; it judges nothing.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from semgap.analysis import frames
from semgap.schema import CANDIDATE_LABEL
from semgap.report.render import Section, Table, count, fixed, general, pct, percent, ratio
from semgap.analysis.summaries import CaseSummary, TaxEntry
from semgap.analysis.verdicts import LOSSY, RunVerdicts, tokens_label

MEDIANS = (*frames.CLIENT_CODEC_COLUMNS, "server_codec_ms", "zstd_level", "compression_ratio")


def _order(row: CaseSummary) -> tuple:
    """The headline set first, then variants by how many techniques they combine."""
    techniques = [] if row.techniques in (None, "none") else row.techniques.split(",")
    return (row.label != CANDIDATE_LABEL, len(techniques), row.label)


def _tax(taxes: Sequence[TaxEntry], row: CaseSummary, reference: str) -> TaxEntry | None:
    key = (row.model, row.phase, row.link_rate, row.decode_steps, row.label)
    return next((t for t in taxes if t.reference == reference and
                 (t.model, t.phase, t.link_rate, t.decode_steps, t.label) == key), None)


def _sum(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def frame(rv: RunVerdicts, rounds: pd.DataFrame) -> pd.DataFrame:
    """The ablation table's values: one row per semantic-role case, grouped as the report groups cases."""
    medians = frames.per_case(rounds, MEDIANS)
    worst = frames.per_case(rounds, ("max_abs_logit_error",), statistic="max")
    blind = list(dict.fromkeys(s.label for s in rv.summaries if s.role == "blind"))
    groups: dict[tuple, list[CaseSummary]] = {}
    for s in rv.summaries:
        if s.role == "semantic":
            groups.setdefault((s.model, s.phase, s.link_rate, s.decode_steps), []).append(s)
    records = []
    for members in groups.values():
        for s in sorted(members, key=_order):
            key = (s.model, s.phase, s.link_rate, s.decode_steps, s.label)
            extra = medians.get(key, {})
            client_codec = _sum(*(extra.get(c) for c in frames.CLIENT_CODEC_COLUMNS))
            codec = _sum(client_codec, extra.get("server_codec_ms"))
            agreement = s.token_agreement_with_local
            record = {"model": s.model, "weights": s.weights, "phase": s.phase, "rate": s.link_rate,
                      "steps": s.decode_steps or None, "label": s.label, "techniques": s.techniques,
                      "sent B/round": s.bytes_sent_per_round, "recv B/round": s.bytes_received_per_round,
                      "byte level": s.byte_level, "median ms": s.median_latency_ms}
            for baseline in blind:
                tax = _tax(rv.taxes, s, baseline)
                record[f"bytes vs {baseline}"] = None if tax is None or tax.bytes_ratio is None else 1 - tax.bytes_ratio
                record[f"latency vs {baseline}"] = None if tax is None else 1 - tax.latency_ratio
            local = _tax(rv.taxes, s, "local")
            record.update({
                "token agreement": agreement,
                "tokens": tokens_label(agreement, rv.min_agreement),
                "latency vs local": None if local is None else local.latency_ratio,
                "max abs logit error": worst.get(key, {}).get("max_abs_logit_error"),
                "client codec ms": client_codec, "server codec ms": extra.get("server_codec_ms"),
                "codec share": None if codec is None else codec / s.median_latency_ms,
                "zstd level": extra.get("zstd_level"), "compression ratio": extra.get("compression_ratio"),
            })
            records.append(record)
    return pd.DataFrame(records)


FORMATS = {"steps": fixed(0), "sent B/round": count, "recv B/round": count, "median ms": fixed(2), "token agreement": fixed(3),
           "latency vs local": ratio, "max abs logit error": general, "client codec ms": fixed(2),
           "server codec ms": fixed(2), "codec share": percent, "zstd level": fixed(0), "compression ratio": fixed(2)}


def sections(rv: RunVerdicts, rounds: pd.DataFrame) -> list[Section]:
    """The ablation section, or nothing when the run has no semantic-role case."""
    values = frame(rv, rounds)
    if values.empty:
        return []
    formats = {**FORMATS, **{c: pct for c in values.columns if c.startswith(("bytes vs ", "latency vs "))
                             and c != "latency vs local"}}
    notes = [f"One row per technique set of the semantic runtime: `{CANDIDATE_LABEL}` is the headline set, the "
             f"only one H1 and H2 judge; `{CANDIDATE_LABEL}:<techniques>` rows are ablation variants.",
             "- **bytes vs X**, **latency vs X**: reduction 1 - row/X (bytes at the group's judged level, latency "
             "from the paired-block ratio); **latency vs local**: the ratio row/local, the tax of the network.",
             "- **Codec time counts**: median ms is the whole round, encoding and decoding on both ends included; "
             "codec share is the part of it they took.",
             f"- **Lossy techniques**: a row whose tokens agree with local less than {rv.min_agreement:g} reads "
             f"{LOSSY} beside its saving; max abs logit error is the worst round's ('-' where no logits return or "
             "none was recorded)."]
    if (values["weights"] == "random").any():
        notes.append("- **Random weights**: rows whose weights are `random` ran on an untrained preset. Their token "
                     "agreement and logit error say little about a trained model: quote those of a trained preset.")
    table = Table("ablation", "Ablation: technique sets of the semantic runtime against every baseline",
                  values, formats)
    return [Section("Ablation", (*notes, ""), (table,))]
