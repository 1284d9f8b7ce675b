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
            "shape_checks", "The shape against the bytes the run moved",
            ("transfer", "shape says B", "run moved B", "framing allowance B", "agrees"),
            [(c["quantity"], c["expected_bytes"], c["measured_bytes"], c["framing_bytes"], "yes" if c["ok"] else "NO")
             for c in checks],
            {"shape says B": count, "run moved B": count, "framing allowance B": count}))
    text = ("Computed from the model's config (semgap/model/shapes.py), then checked against the payload bytes of the "
            "transfers they predict: the weight upload, `remote_cache`'s prefill answer (one logits row under the "
            "generate program) and an eviction's whole-cache export. A check that disagrees beyond framing fails its "
            "benchmark.")
    return [Section("Model shape", (text, ""), tuple(tables))]
