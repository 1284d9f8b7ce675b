"""The report's "Model shape" section: what the model's config says its transfers weigh (semgap/model/shapes.py),
and each shape check against the bytes the run moved."""
from __future__ import annotations

from semgap.report.render import Section, Table, count


def section(output_json: dict) -> list[Section]:
    """The shape table and the checks; [] for a run that recorded no shape (before issue 22)."""
    meta = output_json.get("semgap") or {}
    shape = meta.get("model_shape")
    if not shape:
        return []
    quantities = (("parameters", shape["parameters"]), ("weight bytes", shape["weight_bytes"]),
                  ("KV bytes per token", shape["kv_bytes_per_token"]),
                  ("KV heads x head dim", f"{shape['kv_heads']} x {shape['head_dim']}"),
                  ("logits-row bytes", shape["logits_row_bytes"]), ("vocabulary", shape["vocab_size"]),
                  ("experts (per token)", f"{shape['experts']} ({shape['experts_per_token']})" if shape["experts"] else "-"),
                  ("active parameters per token", shape["active_parameters"] or shape["parameters"]))
    rows = [(shape["model"], shape["dtype"], name, f"{value:,}" if isinstance(value, int) else value)
            for name, value in quantities]
    tables = [Table.from_rows("model_shape", "Model shape, from its config", ("model", "dtype", "quantity", "value"), rows)]
    checks = meta.get("shape_checks") or []
    if checks:
        tables.append(Table.from_rows(
            "shape_checks", "The shape against the bytes the run moved (one row per transfer and prediction)",
            ("transfer", "checks", "shape says B", "run moved B", "framing allowance B", "agree"),
            [_grouped(group) for group in _by_transfer(checks)],
            {"shape says B": count, "framing allowance B": count}))
    text = ("Computed from the model's config (semgap/model/shapes.py), then checked against the payload bytes of the "
            "transfers they predict: the weight upload, `remote_cache`'s prefill answer (one logits row under the "
            "generate program) and an eviction's whole-cache export. A check that disagrees beyond framing fails its "
            "benchmark.")
    return [Section("Model shape", (text, ""), tuple(tables))]


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
