"""Transport calibration: what raw TCP and each transport cost per call and per 25 MB, on the run's link.

Every run measures, as benchmarks of the suite (benchmarks/test_calibration.py), a raw-socket
ping-pong of 8 bytes and each transport's `call("echo", 8 bytes)`, and 25 MB sent one way (a raw
socket's `sendall` against each transport's `call("sink", 25 MB)`). Each transport's round
alternates with a raw round (untimed by the benchmark, timed apart), and its ratio to raw TCP is
taken against those: both measured at one time, whatever else the machine does. The peers are
processes of `python -m semgap.server.calibration_peer` where the run's server runs: on loopback, or
inside the netns namespace behind the veth. PyTorch RPC allows one RPC group per process, so when the run itself
uses rpc, rpc is calibrated over the run's own connection to its server (ops echo and sink). A run on
tcp calibrates rpc only when asked (--semgap-calibrate-rpc): its peer unpickles whatever reaches it.
Where the tcp transport MACs its frames (a secret, as in every run), the cost of the MAC is measured
apart too: the tag's bytes per frame and the time to tag and check one request and its answer.
`summarize` turns the benchmarks of a run's JSON into its `semgap.bench.calibration` section.
"""
from __future__ import annotations

import functools
import socket
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from semgap.wire import names
from semgap.wire.calibration_protocol import BULK, MESSAGE_BYTES, RAW, RAW_START, SMALL
from semgap import schema
from semgap.bench.design import measured
from semgap.wire import transport
from semgap.bench.testbed.placement import Placement
from semgap.bench.testbed.serverproc import ServerProcess
from semgap.wire.transport import auth, tcp
from semgap.bench.testbed.tcpcounters import TcpCounter, delta, tcp_counters_available

# Small calls take tens of microseconds: many more rounds than a benchmark round of the experiment.
SMALL_ROUNDS_PER_ROUND = 25
# Before its warm-up rounds each probe runs unmeasured for this long: 500 small calls last only
# ~20 ms, short enough for whatever else the machine does to swing a median.
SETTLE_S = 0.5
NETNS_FIRST_PORT = 29510  # inside a fresh namespace nothing else listens


@dataclass(frozen=True)
class Probe:
    """One calibration benchmark: a transport (or raw TCP) and a message size."""

    transport: str
    kind: str  # SMALL: 8-byte round trips; BULK: 25 MB one way, a short answer back

    @property
    def id(self) -> str:
        return f"{self.transport}-{'small' if self.kind == SMALL else '25MB'}"

    @property
    def message_bytes(self) -> int:
        return MESSAGE_BYTES[self.kind]


def calibrated_transports(settings) -> tuple[str, ...]:
    """The transports a run calibrates: every registered one but rpc, unless the run uses rpc or asks for it."""
    return tuple(name for name in transport.TRANSPORTS
                 if name != "rpc" or settings.transport == "rpc" or settings.calibrate_rpc)


def probes(transports: tuple[str, ...] = tuple(transport.TRANSPORTS)) -> list[Probe]:
    """Raw TCP first (each transport's figures are ratios to it), then each of `transports`."""
    return [Probe(name, kind) for kind in (SMALL, BULK) for name in (RAW, *transports)]


def mac_cost_us(message_bytes: int, answer_bytes: int, repeats: int = 20) -> float:
    """Microseconds one request of `message_bytes` and its answer spend in their MACs: each tagged by its
    sender and checked by its receiver (the median of `repeats`, on this machine, whatever else it does)."""
    sending, receiving = auth.FrameMac(bytes(32)), auth.FrameMac(bytes(32))
    request, answer = bytes(message_bytes), bytes(answer_bytes)
    header = bytes(tcp.REQUEST.size)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        receiving.verify(sending.tag(header, request), header, request)
        receiving.verify(sending.tag(header, answer), header, answer)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


class RawClient:
    """The client side of a raw-socket probe: one connection, no framing beyond the first 9 bytes."""

    def __init__(self, host: str, port: int, probe: Probe):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(RAW_START.pack(probe.kind[:1].encode(), probe.message_bytes))
        self.answer = bytearray(probe.message_bytes if probe.kind == SMALL else 1)

    def round_trip(self, message: bytes) -> None:
        self.sock.sendall(message)
        view, received = memoryview(self.answer), 0
        while received < len(self.answer):
            count = self.sock.recv_into(view[received:])
            if count == 0:
                raise ConnectionError("the raw calibration peer closed the connection")
            received += count

    def close(self) -> None:
        self.sock.close()


class Calibration:
    """For one session: starts the peers on the run's link, runs each probe, and stops everything at close."""

    def __init__(self, session):
        self.session, self.settings = session, session.settings
        self.resources = ExitStack()
        self.secret = session.secret or auth.new_secret().encode()
        self.link = session.link
        self.place = self.link.placement() if self.settings.link == "netns" else Placement(self.settings.host)
        self.host = self.place.host
        self.peers: dict[str, ServerProcess] = {}
        self.connections: dict[str, transport.Transport] = {}
        self.tcp_available = tcp_counters_available()[0]

    def start(self) -> "Calibration":
        """Start every peer and open every connection the probes need, so no probe pays for them."""
        self._peer(RAW)
        for name in calibrated_transports(self.settings):
            if not self.probe_unavailable(Probe(name, SMALL)):
                self._connection(name)
        return self

    @staticmethod
    def unavailable(session) -> str:
        """Why this session cannot calibrate at all, or ""."""
        if session.settings.server is not None:
            return (f"--semgap-server names {session.settings.external_server}: the calibration peers would "
                    "have to run beside it, and the suite starts nothing for it")
        if session.settings.link == "netns" and session.link is None:
            return "no remote mode in this run, so no netns link to calibrate"
        return ""

    def probe_unavailable(self, probe: Probe) -> str:
        """Why this probe cannot run on this run's link (rpc on IPv6, say), or ""."""
        if probe.transport == RAW:
            return ""
        try:
            transport.check_bind(transport.transport_kind(probe.transport), self.host, has_secret=True,
                                 allow_unauthenticated=self.place.namespaced)
        except transport.BindRefused as error:
            return str(error)
        return ""

    def run(self, benchmark, probe: Probe) -> None:
        self.session.set_link_rate(None)  # the framework's own cost, not the shaper's
        scale = SMALL_ROUNDS_PER_ROUND if probe.kind == SMALL else 1
        rounds, warmup_rounds = self.settings.rounds * scale, self.settings.warmup_rounds * scale
        message = bytes(probe.message_bytes)
        target, peer, close = self._target(probe, message)
        # A transport's rounds alternate with raw rounds on their own connection, timed apart and
        # untimed by the benchmark (its setup): the ratio compares two things measured at one time.
        raw = RawClient(self.host, self._peer(RAW).port, probe) if probe.transport != RAW else None
        raw_s: list[float] = []

        def raw_round():
            start = time.perf_counter()
            raw.round_trip(message)
            raw_s.append(time.perf_counter() - start)

        try:
            settled = time.monotonic() + SETTLE_S
            while time.monotonic() < settled:
                target()
            # Every socket of this process to the peers' address, but the raw one: what the probe's requests moved.
            counter = TcpCounter(self.host, exclude_ports=[self._peer(RAW).port] if raw else ()) if self.tcp_available else None
            before = counter.snapshot() if counter else None
            # One call of target per round, warm-ups included (pedantic's iterations=1): the requests counted.
            benchmark.pedantic(target, setup=raw_round if raw else None, rounds=rounds, warmup_rounds=warmup_rounds)
            moved = delta(before, counter.snapshot()) if counter else None
        finally:
            close()
            if raw:
                raw.close()
        median_s = benchmark.stats.stats.median
        interleaved_raw_s = statistics.median(measured(raw_s, warmup_rounds, rounds)) if raw else median_s
        benchmark.extra_info.update(self._extra_info(probe, peer, median_s, interleaved_raw_s, moved, rounds + warmup_rounds))

    def _target(self, probe: Probe, message: bytes) -> tuple[Callable[[], object], str, Callable[[], None]]:
        """(the measured action, which peer answers it, how to close what it opened)."""
        if probe.transport == RAW:
            client = RawClient(self.host, self._peer(RAW).port, probe)
            return functools.partial(client.round_trip, message), "calibration peer", client.close
        op = names.ECHO if probe.kind == SMALL else names.SINK
        connection, peer = self._connection(probe.transport)
        return functools.partial(connection.call, op, message), peer, lambda: None

    def _connection(self, name: str) -> tuple[transport.Transport, str]:
        """One connection per transport for all its probes (PyTorch RPC cannot start twice in a process)."""
        if name == "rpc" and self.settings.transport == "rpc" and self.session.transport is not None:
            return self.session.transport.inner, "the run's server"
        if name not in self.connections:
            self.connections[name] = transport.connect(name, self.host, self._peer(name).port,
                                                       timeout_s=self.settings.rpc_timeout_s, secret=self.secret)
            self.resources.callback(self.connections[name].close)
        return self.connections[name], "calibration peer"

    def _peer(self, name: str) -> ServerProcess:
        if name not in self.peers:
            port = NETNS_FIRST_PORT + len(self.peers) if self.place.namespaced else 0
            args = ("-m", "semgap.server.calibration_peer", "--transport", name, "--host", self.host, "--port", str(port),
                    *self.place.server_args(name))
            self.peers[name] = ServerProcess.start(
                args, self.host, port, self.settings.results_dir / "logs", label=f"calibration-{name}",
                command_prefix=self.place.command_prefix,
                env={**self.place.env, auth.SECRET_VARIABLE: self.secret.decode()}, ready_timeout_s=60,
            )
            self.resources.callback(self.peers[name].stop)
        return self.peers[name]

    def _extra_info(self, probe: Probe, peer: str, median_s: float, raw_s: float, moved, requests: int) -> dict:
        info = {
            schema.KIND_CALIBRATION: probe.kind, "transport": probe.transport, "message_bytes": probe.message_bytes,
            "peer": peer, "link": self.settings.link, "median_us": median_s * 1e6,
            "raw_tcp_interleaved_median_us": raw_s * 1e6,
        }
        if probe.kind == SMALL:
            info["ratio_to_raw_tcp"] = median_s / raw_s
        else:
            info["throughput_bytes_per_s"] = probe.message_bytes / median_s
            info["fraction_of_raw_throughput"] = raw_s / median_s
        if probe.transport == "tcp":  # its connections prove self.secret: every frame carries a MAC
            answer_bytes = probe.message_bytes if probe.kind == SMALL else 0
            info["mac_bytes_per_frame"] = auth.TAG_BYTES
            info["mac_us_per_request"] = mac_cost_us(probe.message_bytes, answer_bytes)
            info["mac_share_of_median"] = info["mac_us_per_request"] / info["median_us"]
        if moved is not None and moved.sockets_closed == 0:
            answer_bytes = probe.message_bytes if probe.kind == SMALL else 0 if probe.transport != RAW else 1
            info["framing_bytes_sent_per_request"] = (moved.bytes_sent - requests * probe.message_bytes) / requests
            info["framing_bytes_received_per_request"] = (moved.bytes_received - requests * answer_bytes) / requests
        return info

    def close(self) -> None:
        self.resources.close()


def summarize(benchmarks: list[dict]) -> dict:
    """The `semgap.bench.calibration` section of a run's JSON, from its calibration benchmarks ({} if none ran).

    Per transport: the median small call (us), the raw ping-pong alongside it and the ratio; the
    25 MB throughput (bytes/s), the raw socket's alongside it and the fraction; the framing.
    """
    found = {(info["transport"], info["calibration"]): info for info in
             (bench.get("extra_info") or {} for bench in benchmarks) if schema.KIND_CALIBRATION in info}
    if not found:
        return {}
    section: dict = {"link": next(iter(found.values()))["link"], "transports": {}}
    for (name, kind), info in sorted(found.items()):
        entry = section["transports"].setdefault(name, {})
        if kind == SMALL:
            entry["small_call_us"] = info["median_us"]
            entry["raw_tcp_alongside_us"] = info.get("raw_tcp_interleaved_median_us")
            entry["ratio_to_raw_tcp"] = info.get("ratio_to_raw_tcp")
        else:
            entry["throughput_bytes_per_s"] = info["throughput_bytes_per_s"]
            raw_us = info.get("raw_tcp_interleaved_median_us")
            entry["raw_tcp_alongside_bytes_per_s"] = info["message_bytes"] / raw_us * 1e6 if raw_us else None
            entry["fraction_of_raw_throughput"] = info.get("fraction_of_raw_throughput")
        for direction in ("sent", "received"):
            key = f"framing_bytes_{direction}_per_request"
            if kind == SMALL and key in info:
                entry[key] = info[key]
        if "mac_us_per_request" in info:
            entry["mac_bytes_per_frame"] = info["mac_bytes_per_frame"]
            entry[f"mac_us_per_{'small_call' if kind == SMALL else '25MB'}"] = info["mac_us_per_request"]
            entry[f"mac_share_of_{'small_call' if kind == SMALL else '25MB'}"] = info["mac_share_of_median"]
        entry.setdefault("peer", info["peer"])
    return section
