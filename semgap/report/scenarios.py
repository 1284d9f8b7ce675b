"""The report's sections of the benchmarks beside the matrix: transport calibration, batching, KV recovery."""
from __future__ import annotations

from semgap import schema
from semgap.analysis import gap
from semgap.analysis.verdicts import DEFAULT_THRESHOLDS, LOSSY, tokens_label
from semgap.report.render import Section, Table, count, fixed, pct, percent, ratio, share


def calibration(output_json: dict) -> list[Section]:
    """The run's transport calibration (``semgap.bench.calibration``): each transport's per-call cost and
    throughput against a raw socket on the same link, and the framing it added per request."""
    section = (output_json.get("semgap") or {}).get("calibration") or {}
    if not section:
        return []
    columns = ("peer", "small_call_us", "raw_tcp_alongside_us", "ratio_to_raw_tcp", "throughput_bytes_per_s",
               "raw_tcp_alongside_bytes_per_s", "fraction_of_raw_throughput", "framing_bytes_sent_per_request",
               "framing_bytes_received_per_request", "mac_bytes_per_frame", "mac_us_per_small_call",
               "mac_share_of_small_call", "mac_us_per_25MB", "mac_share_of_25MB")
    rows = [(name, *(entry.get(column) for column in columns)) for name, entry in section["transports"].items()]
    header = ("transport", "peer", "small call us", "raw TCP alongside us", "per-call cost vs raw",
              "25 MB one way MB/s", "raw alongside MB/s", "throughput vs raw", "framing B/request sent", "received",
              "MAC B/frame", "MAC us/small call", "MAC share small", "MAC us/25 MB", "MAC share 25 MB")

    def megabytes(value: float) -> str:
        return count(value / 1e6)

    formats = {"small call us": fixed(1), "raw TCP alongside us": fixed(1), "per-call cost vs raw": ratio,
               "25 MB one way MB/s": megabytes, "raw alongside MB/s": megabytes, "throughput vs raw": percent,
               "framing B/request sent": fixed(0), "received": fixed(0), "MAC B/frame": fixed(0),
               "MAC us/small call": fixed(1), "MAC share small": percent, "MAC us/25 MB": fixed(0),
               "MAC share 25 MB": percent}
    return [Section("Transport calibration", (
        f"Same session, same link ({section['link']}): each transport's 8-byte echo call and 25 MB sink call, "
        "each round alternating with a raw socket's 8-byte ping-pong or 25 MB send (raw alongside); medians. "
        "The MAC columns are the per-frame MAC's cost on a transport that authenticates frames (tcp with a "
        "secret): its bytes per frame, and the time to tag and check a request and its answer, alone and as a "
        "share of the call's median.", ""),
        (Table.from_rows("calibration", "Transport calibration", header, rows, formats),))]


def batching(output_json: dict, min_agreement: float = DEFAULT_THRESHOLDS["min_agreement"]) -> list[Section]:
    """The batching benchmark (benchmarks/test_batching.py): N sessions decoding at once, served one forward per
    request (blind) or one batched forward per step of all sessions (semantic); medians over rounds. Tokens are
    measured (the worst session's agreement with local), LOSSY below `min_agreement`: a batched forward need not
    reproduce a batch of one bit for bit."""
    infos = [bench["extra_info"] for bench in output_json.get("benchmarks", [])
             if isinstance(bench.get("extra_info"), dict) and schema.KIND_BATCHING in bench["extra_info"]]
    if not infos:
        return []
    key = lambda info: (info["model"], info["sessions"], info.get("link_rate"))  # noqa: E731
    blind = {key(info): info["tokens_per_s"] for info in infos if info["role"] == "blind"}
    header = ("model", "weights", "link rate", "sessions", "flavour", "tokens/s", "vs blind", "latency ms/token",
              "p90 ms/token", "payload B/token", "TCP B/token", "mean batch", "agreement", "tokens", "SM util %", "GPU note")
    rows = [(info["model"], info["weights"], info.get("link_rate"), info["sessions"], info["flavour"], info["tokens_per_s"],
             info["tokens_per_s"] / blind[key(info)] if key(info) in blind else None,
             info["token_latency_ms"], info["token_latency_p90_ms"], info["payload_bytes_per_token"],
             info["wire_tcp_bytes_per_token"], info["mean_batch_size"], info["token_agreement_with_local"],
             tokens_label(info["token_agreement_with_local"], min_agreement), info.get("gpu_sm_util_mean_pct"),
             info.get("gpu_monitor_note"))
            for info in sorted(infos, key=lambda info: (info["model"], info["sessions"], info["role"]))]
    formats = {"tokens/s": fixed(1), "vs blind": ratio, "latency ms/token": fixed(2), "p90 ms/token": fixed(2),
               "payload B/token": count, "TCP B/token": count, "mean batch": fixed(2), "agreement": share,
               "SM util %": fixed(1)}
    header, rows, said_once = _said_once(header, rows, ("SM util %", "GPU note"))
    steps = infos[0]["decode_steps"]
    return [Section("Semantic batching", (
        f"N client sessions, each on its own connection, decode {steps} tokens each at once. Blind: the server runs "
        "each request as it comes, one forward each; semantic: it steps every live session in one batched forward. "
        "tokens/s = all sessions' tokens / the round's wall time; latency is each decode step's, client to client; "
        "vs blind = tokens/s over blind's at the same N and link rate; mean batch = sessions per forward; tokens = "
        f"{LOSSY} when the worst session's agreement with local is below {min_agreement:g}.{said_once}", ""),
        (Table.from_rows("batching", "Semantic batching", header, rows, formats, prose=("GPU note",)),))]


def _said_once(header: tuple, rows: list[tuple], columns: tuple[str, ...]) -> tuple[tuple, list[tuple], str]:
    """Drop each of `columns` whose value is the same on every row (e.g. "NVML unavailable" on a CPU), and say
    that value once, for the section's text; columns that differ between rows stay."""
    said = ""
    for column in columns:
        index = header.index(column)
        values = {row[index] for row in rows}
        if len(values) == 1:
            [value] = values
            said += f" {column}: {'-' if value is None else value} (every row)."
            header = header[:index] + header[index + 1:]
            rows = [row[:index] + row[index + 1:] for row in rows]
    return header, rows, said


def _kv_note(info: dict, baseline: dict | None, saved_bytes: float | None) -> str | None:
    """Why a strategy that moves fewer bytes is slower: it pays in server compute what the link would have cost,
    so on a fast link (loopback) it loses by design, and gains only where moving the bytes takes longer."""
    if baseline is None or info["recovery_ms"] <= baseline["recovery_ms"]:
        return None
    moved = f" to move {count(saved_bytes)} B fewer" if saved_bytes else ""
    return (f"slower by design on this link: {fixed(1)(info['server_compute_ms'])} ms of server compute{moved}; "
            "it gains only where the link takes longer than that")


def kv_recovery(output_json: dict, min_agreement: float = DEFAULT_THRESHOLDS["min_agreement"]) -> list[Section]:
    """KV recovery (benchmarks/test_kv_recovery.py): each strategy's bytes and latency per recovery, its saving
    against the blind strategy of its model, scenario and link rate (1 - strategy / blind: positive = cheaper), and its
    tokens after the recovery against local's: LOSSY below `min_agreement`, as for the techniques."""
    infos = gap.infos_of(output_json, schema.KIND_KV_RECOVERY)
    if not infos:
        return []
    level = gap.kv_level(infos)

    def bytes_per_round(info: dict) -> float:
        return gap.kv_bytes_per_recovery(info, level)

    def saving(value: float, blind: dict | None, of) -> float | None:
        return None if blind is None or not of(blind) else 1 - value / of(blind)

    def where(info: dict) -> tuple:  # each model's strategies against that model's blind one
        return info.get("model"), info.get("weights"), info[schema.KIND_KV_RECOVERY], info.get("link_rate")

    blind = {where(info): info for info in infos if info.get("role") == "blind"}
    rows = []
    for info in infos:
        baseline, recovered_bytes = blind.get(where(info)), bytes_per_round(info)
        rows.append((info.get("model"), info.get("weights"), info[schema.KIND_KV_RECOVERY], info.get("link_rate"),
                     info.get(schema.KV_STRATEGY, info.get("mode")),  # JSON from before the strategy key: "mode"
                     info["role"], info["lossless"], info.get("cached_positions"), recovered_bytes,
                     info["rpc_round_trips"], info["recovery_ms"], info["server_compute_ms"],
                     saving(recovered_bytes, baseline, bytes_per_round),
                     saving(info["recovery_ms"], baseline, lambda other: other["recovery_ms"]),
                     info["token_agreement_with_local"], tokens_label(info["token_agreement_with_local"], min_agreement),
                     _kv_note(info, baseline, baseline and bytes_per_round(baseline) - recovered_bytes)))
    header = ("model", "weights", "scenario", "rate", "strategy", "role", "lossless", "cached positions",
              f"{level} B/recovery", "round trips",
              "recovery ms", "server ms", "bytes saving", "latency saving", "token agreement", "tokens", "note")
    formats = {f"{level} B/recovery": count, "round trips": fixed(0), "recovery ms": fixed(2), "server ms": fixed(2),
               "bytes saving": pct, "latency saving": pct, "token agreement": fixed(3)}
    title = "KV recovery: eviction and migration"
    return [Section(title, (
        f"One recovery per round: the cache of a session's prompt and first decode steps is evicted and restored, "
        f"or moves to a second server. Bytes: {level} level, sent + received over both servers' connections, median "
        "over rounds; recovery ms: the median round, until the target holds the cache again. Savings are against "
        "the blind strategy (full_cache) of the same scenario and link rate. Token agreement: the tokens decoded after the "
        "recovery against local's, the worst measured round; a strategy below the min agreement "
        f"{min_agreement:g} is {LOSSY}, whatever its saving (lossy ones, recompute*, are measured, never assumed).", ""),
        (Table.from_rows("kv_recovery", title, header, rows, formats, prose=("note",)),))]
