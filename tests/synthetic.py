"""Synthetic pytest-benchmark JSON in the shape the harness writes: one benchmark per (case, block)."""
from __future__ import annotations

import zlib

import numpy as np

ROLES = {"local": "local", "naive": "blind", "remote_cache": "blind", "op_sync": "blind", "semantic": "semantic"}


def case(mode, phase="decode", latency_s=0.1, payload=(1000, 1000), tcp_extra=100, link_extra=None, rate=None,
         bps=None, round_trips=4, agreement=1.0, **extra):
    """One case's settings; byte pairs are (sent, received) per round, TCP = payload + tcp_extra each way."""
    return dict(mode=mode, phase=phase, latency_s=latency_s, payload=payload, tcp_extra=tcp_extra,
                link_extra=link_extra, rate=rate, bps=bps, round_trips=round_trips, agreement=agreement, extra=extra)


def bench(spec, block, blocks, rounds, drift, noise, model="gpt2-test", data=True, load=0.4, steal=0.0):
    """The benchmark of ``spec`` in ``block``: rounds with block drift (shared) and seeded noise (its own)."""
    mode, phase, rate = spec["mode"], spec["phase"], spec["rate"]
    case_id = spec["extra"].get("case") or f"{mode}-{phase}" + (f"-{rate}" if rate else "")
    rng = np.random.default_rng([zlib.crc32(case_id.encode()), block])
    level = spec["latency_s"] * (1.0 + drift * np.sin(block))
    latency = [float(x) for x in level * np.exp(noise * rng.standard_normal(rounds))]
    local = mode == "local"
    payload = (0, 0) if local else spec["payload"]
    extra = {"case": case_id, "mode": mode, "phase": phase, "model": model, "role": ROLES.get(mode, "blind"),
             "lossless": True, "weights": "random", "block": block, "blocks": blocks, "position_in_block": 0,
             "decode_steps": 5 if phase == "decode" else 0, "link": "netns" if rate else "loopback",
             "link_rate": rate, "link_rate_bps": spec["bps"], "rpc_round_trips": 0 if local else spec["round_trips"],
             "server_compute_ms": 1.5, "token_agreement_with_local": 1.0 if local else spec["agreement"],
             "load_avg_1m": load, "cpu_steal_pct": steal}
    levels = {"payload_bytes": payload}
    if not local and spec["tcp_extra"] is not None:
        levels["wire_tcp_bytes"] = tuple(p + spec["tcp_extra"] for p in payload)
    if not local and spec["link_extra"] is not None:
        levels["wire_link_bytes"] = tuple(p + spec["link_extra"] for p in payload)
    for prefix, pair in levels.items():
        for direction, value in zip(("sent", "received"), pair):
            extra[f"{prefix}_{direction}"] = value
            extra[f"{prefix}_{direction}_rounds"] = [value] * rounds
    extra["wire_levels"] = ["payload"] + [lv for lv, p in (("tcp", "wire_tcp_bytes"), ("link", "wire_link_bytes"))
                                          if p in levels]
    extra.update(spec["extra"])
    st = {"median": float(np.median(latency)), "min": min(latency), "max": max(latency), "rounds": rounds}
    if data:
        st["data"] = latency
    return {"name": f"test_semantic_gap[{case_id}-block{block}]", "group": phase, "params": {}, "stats": st,
            "extra_info": extra}


def run_json(specs, blocks=10, rounds=3, drift=0.2, noise=0.02, loads=None, steals=None, data=True, **semgap):
    """A run of ``specs`` over ``blocks`` blocks, block-major as the harness runs them."""
    benches = [bench(spec, b, blocks, rounds, drift, noise, data=data,
                     load=(loads or {}).get(b, 0.4), steal=(steals or {}).get(b, 0.0))
               for b in range(blocks) for spec in specs]
    meta = {"model": "gpt2-test", "link": "loopback", "device": "cpu", "dtype": "bfloat16", "versions": {"python": "3.11.7", "torch": "2.3.0"},
            "failures": [], "blocks": blocks, "rounds_per_block": rounds, "warmup_rounds_per_block": 1,
            "block_order_seed": 7, "h1": 0.30, "h2": 0.15, "alpha": 0.05, "min_agreement": 1.0, "cores": 2,
            "run_status": "complete", "interrupted_by": None}
    meta.update(semgap)
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU 9000"}, "python_version": "3.11.7"},
            "commit_info": {"id": "abc123", "dirty": True}, "benchmarks": benches,
            "datetime": "2026-11-30T00:00:00.000001", "version": "5.3.0", "semgap": meta}


def standard(phase="decode", semantic_latency=0.06, semantic_payload=(300, 300), agreement=1.0, **kw):
    """local, naive, remote_cache and semantic in one phase; semantic 40 % faster and 70 % fewer payload bytes."""
    return [case("local", phase, 0.05, **kw), case("naive", phase, 0.5, payload=(10**6, 10**5), **kw),
            case("remote_cache", phase, 0.1, **kw),
            case("semantic", phase, semantic_latency, payload=semantic_payload, agreement=agreement, **kw)]


def legacy(output_json):
    """The same run as JSON from before blocks and roles: one benchmark per case, all its rounds pooled."""
    pooled: dict[str, dict] = {}
    for b in output_json["benchmarks"]:
        extra = {k: v for k, v in b["extra_info"].items()
                 if k not in ("case", "role", "lossless", "weights", "block", "blocks", "position_in_block",
                              "load_avg_1m", "cpu_steal_pct")}
        entry = pooled.setdefault(b["extra_info"]["case"], {**b, "name": b["name"].rsplit("-block", 1)[0] + "]",
                                                            "extra_info": extra, "stats": {"data": []}})
        entry["stats"]["data"] = entry["stats"]["data"] + b["stats"]["data"]
    meta = {k: v for k, v in output_json["semgap"].items()
            if k not in ("blocks", "rounds_per_block", "warmup_rounds_per_block", "block_order_seed", "cores",
                         "run_status", "interrupted_by", "min_agreement")}
    return {**output_json, "benchmarks": list(pooled.values()), "semgap": meta}


def variant(techniques, phase="decode", latency_s=0.06, payload=(300, 300), agreement=1.0, headline=False, **kw):
    """A semantic case with a technique set: the headline ``semantic`` row, or the variant ``semantic:<techniques>``."""
    label = "semantic" if headline else f"semantic:{techniques}"
    case_id = f"semantic[{techniques}]-{phase}" + (f"-{kw['rate']}" if kw.get("rate") else "")
    return case("semantic", phase, latency_s, payload=payload, agreement=agreement, label=label,
                techniques=techniques, case=case_id, **kw)


def calibration(transport="rpc", small_call_us=100.0, throughput_bytes_per_s=1e9, link="loopback"):
    """The ``semgap.bench.calibration`` section the transport calibration writes, for raw TCP and one transport."""
    return {"link": link, "transports": {
        "raw": {"small_call_us": 20.0, "throughput_bytes_per_s": 4e9, "peer": "calibration peer"},
        transport: {"small_call_us": small_call_us, "throughput_bytes_per_s": throughput_bytes_per_s,
                    "peer": "the run's server"}}}
