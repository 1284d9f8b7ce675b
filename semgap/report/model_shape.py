"""The report's "Model shape" section: what the model's config says its transfers weigh (semgap/model/shapes.py),
and each shape check against the bytes the run moved."""
from __future__ import annotations

from semgap.report.render import Section, Table, count


def section(output_json: dict) -> list[Section]:
    """The shape table (a column per model) and the checks; [] for a run that recorded no shape (before issue 22)."""
    meta = output_json.get("semgap") or {}
    each = [m for m in meta.get("models") or [meta] if m.get("model_shape")]  # a run of several: one entry per model
    if not each:
        return []
    shapes = [m["model_shape"] for m in each]
    quantities = (("dtype", lambda s: s["dtype"]), ("parameters", lambda s: s["parameters"]),
                  ("weight bytes", lambda s: s["weight_bytes"]), ("KV bytes per token", lambda s: s["kv_bytes_per_token"]),
                  ("KV heads x head dim", lambda s: f"{s['kv_heads']} x {s['head_dim']}"),
                  ("logits-row bytes", lambda s: s["logits_row_bytes"]), ("vocabulary", lambda s: s["vocab_size"]),
                  ("experts (per token)", lambda s: f"{s['experts']} ({s['experts_per_token']})" if s["experts"] else "-"),
                  ("active parameters per token", lambda s: s["active_parameters"] or s["parameters"]))
    rows = [(name, *(_cell(value(shape)) for shape in shapes)) for name, value in quantities]
    header = ("quantity", *(shape["model"] for shape in shapes))
    tables = [Table.from_rows("model_shape", "Model shape, from its config", header, rows)]
    checks = [(m["model_shape"]["model"], group) for m in each for group in _by_transfer(m.get("shape_checks") or [])]
    if checks:
        tables.append(Table.from_rows(
            "shape_checks", "The shape against the bytes the run moved (one row per model, transfer and prediction)",
            ("model", "transfer", "checks", "shape says B", "run moved B", "framing allowance B", "agree"),
            [(model, *_grouped(group)) for model, group in checks],
            {"shape says B": count, "framing allowance B": count}))
    text = ("Computed from each model's config (semgap/model/shapes.py), then checked against the payload bytes of the "
            "transfers they predict: the weight upload, `remote_cache`'s prefill answer (one logits row under the "
            "generate program) and an eviction's whole-cache export. A check that disagrees beyond framing fails its "
            "benchmark.")
    return [Section("Model shape", (text, ""), tuple(tables))]


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _by_transfer(checks: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for check in checks:
        groups.setdefault((check["quantity"], check["expected_bytes"], check["framing_bytes"]), []).append(check)
    return list(groups.values())


def _grouped(checks: list[dict]) -> tuple:
    """One transfer's checks as a row: how many, the range moved, and how many agreed."""
    moved = sorted(c["measured_bytes"] for c in checks)
    span = f"{moved[0]:,}" if moved[0] == moved[-1] else f"{moved[0]:,} to {moved[-1]:,}"
    agreed = sum(c["ok"] for c in checks)
    return (checks[0]["quantity"], len(checks), checks[0]["expected_bytes"], span, checks[0]["framing_bytes"],
            f"{agreed} of {len(checks)}" + ("" if agreed == len(checks) else " (NO)"))
