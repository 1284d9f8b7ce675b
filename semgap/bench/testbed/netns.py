"""A private veth link into a network namespace, optionally rate-shaped with tbf, with byte counters."""
from __future__ import annotations

import contextlib
import ipaddress
import itertools

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from semgap.bench.testbed import interrupts
from semgap.bench.testbed.placement import Placement
from semgap.bench.testbed.rates import format_rate, tbf_parameters

NAMESPACE_PREFIX = "semgap-"
# Root-side veth names must identify the owner too, but IFNAMSIZ allows only 15 characters,
# so they use the short fixed prefix "sg": sg<pid>n<serial>c (client) / ...s (server).
VETH_PREFIX = "sg"
# Only addresses inside this block are ever assigned, and only the two ends of our own /30 are contacted.
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")

_serials = itertools.count(1)


class LinkUnavailable(RuntimeError):
    """The namespace link cannot be built here (not root, no `ip`, no netns support)."""


class LinkCommandError(RuntimeError):
    """An `ip`/`tc` command failed; the message carries the command and its stderr."""


@dataclass(frozen=True)
class LinkCounters:
    """Interface counters of the client veth end, i.e. from the client's point of view.

    Count bytes, not packets: veth has segmentation offload on, so one "packet" can be a 64 KiB
    GSO super-frame (and its headers are counted once per super-frame, not per wire packet).
    """

    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int

    def __sub__(self, other: "LinkCounters") -> "LinkCounters":
        return LinkCounters(
            self.bytes_sent - other.bytes_sent,
            self.bytes_received - other.bytes_received,
            self.packets_sent - other.packets_sent,
            self.packets_received - other.packets_received,
        )


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure raise LinkCommandError naming the command and its stderr."""
    try:
        # Its own session: a Ctrl-C or `timeout` sent to the run's process group must not kill an `ip`
        # that is deleting the link; whether to stop is this process's decision (semgap.bench.testbed.interrupts).
        return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30,
                              start_new_session=True)
    except subprocess.CalledProcessError as exc:
        raise LinkCommandError(f"`{' '.join(argv)}` failed (exit {exc.returncode}): {exc.stderr.strip()}") from None
    except FileNotFoundError:
        raise LinkUnavailable(f"`{argv[0]}` is not installed (iproute2 is needed for the namespace link; "
                              "the default loopback link works without it)") from None


def _missing_requirements() -> str | None:
    """Why a namespace link cannot be built here, or None when the cheap checks pass."""
    hint = "the default loopback link works without it"
    if os.geteuid() != 0:
        return f"creating network namespaces needs root (euid is {os.geteuid()}); {hint}"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not on PATH; {hint}"
    if not Path("/proc/self/ns/net").exists():
        return f"this kernel has no network namespaces; {hint}"
    return None


@contextlib.contextmanager
def _probe_namespace(purpose: str):
    """A throwaway namespace for a capability probe, deleted afterwards; raises LinkCommandError."""
    name = f"{NAMESPACE_PREFIX}{purpose}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        _run(["ip", "netns", "del", name], check=False)


def link_available() -> tuple[bool, str]:
    """(ok, reason): whether a NetnsLink can be created here; probes by creating a throwaway namespace."""
    missing = _missing_requirements()
    if missing:
        return False, missing
    try:
        with _probe_namespace("probe"):
            pass
    except (LinkCommandError, LinkUnavailable) as exc:
        return False, f"cannot create a network namespace ({exc}); the default loopback link works without it"
    return True, "root, iproute2 and network namespaces are available"


def netem_available() -> tuple[bool, str]:
    """(ok, reason): whether `tc ... netem delay` works, tried on `lo` of a throwaway namespace.

    On the development kernel (6.18, CONFIG_NET_SCH_NETEM not set) this returns
    (False, "... Error: Specified qdisc kind is unknown."), so added latency cannot be emulated
    there; tbf rate shaping works.
    """
    missing = _missing_requirements()
    if missing:
        return False, missing
    try:
        with _probe_namespace("netem") as probe:
            _run(["ip", "-n", probe, "link", "set", "lo", "up"])
            result = _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    except (LinkCommandError, LinkUnavailable) as exc:
        return False, f"cannot create a probe namespace: {exc}"
    if result.returncode != 0:
        return False, f"netem delay is not supported by this kernel: {result.stderr.strip()}"
    return True, "netem delay works"


def _boot_time_s() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def _process_start_time_s(pid: int) -> float | None:
    """Wall-clock start time of pid (about 1 s resolution), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # a crashed owner not yet reaped by its parent
    start_ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    return _boot_time_s() + start_ticks / os.sysconf("SC_CLK_TCK")


def _owner_alive(pid: int, created_at_s: float | None) -> bool:
    """Whether the process that created a link still runs; a reused pid started after creation is not it."""
    started = _process_start_time_s(pid)
    if started is None:
        return False
    # btime has 1 s resolution, so only a process started clearly after the link is a different one.
    return created_at_s is None or started <= created_at_s + 2.0


def _list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _list_root_links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"]).stdout
    # Lines look like "7: sg123n1c@if2: <...>"; the part after '@' names the peer.
    return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]


def cleanup_stale(prefix: str = NAMESPACE_PREFIX) -> list[str]:
    """Remove namespaces and root-side veths left by crashed runs whose owner process is gone.

    Names carry the owner pid (namespace `<prefix><pid>-<serial>`, veth `sg<pid>n<serial>c`); a
    namespace's creation time (its nsfs inode ctime) guards against a reused pid.  Links of live
    owners are left alone.  Processes still running inside a removed namespace keep it alive but
    lose their link.  Returns the names removed.
    """
    missing = _missing_requirements()
    if missing:
        return []
    removed: list[str] = []
    ns_re = re.compile(rf"^{re.escape(prefix)}(?:(?:probe|netem)-)?(\d+)-(\w+)$")
    for name in _list_namespaces():
        match = ns_re.match(name)
        if not match:
            continue
        try:
            created = Path(f"/run/netns/{name}").stat().st_ctime
        except FileNotFoundError:
            created = None
        if not _owner_alive(int(match.group(1)), created):
            # Delete the root-side veth first: that removes both ends at once even if some leftover
            # process keeps the namespace itself alive.
            client_if = _client_ifname(int(match.group(1)), match.group(2))
            if Path(f"/sys/class/net/{client_if}").exists():
                _run(["ip", "link", "del", "dev", client_if], check=False)
                removed.append(client_if)
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    veth_re = re.compile(rf"^{VETH_PREFIX}(\d+)n(\d+)c$")
    for ifname in _list_root_links():
        match = veth_re.match(ifname)
        if match and not _owner_alive(int(match.group(1)), None):
            _run(["ip", "link", "del", "dev", ifname], check=False)
            removed.append(ifname)
    return removed


def _client_ifname(pid: int, serial: int | str) -> str:
    return f"{VETH_PREFIX}{pid}n{serial}c"


def _server_ifname(pid: int, serial: int | str) -> str:
    return f"{VETH_PREFIX}{pid}n{serial}s"


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    nets = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return nets


def _pick_subnet(pid: int, serial: int) -> ipaddress.IPv4Network:
    """A free /30 from SUBNET_POOL, starting at a slot derived from (pid, serial)."""
    slots = list(SUBNET_POOL.subnets(new_prefix=30))
    used = _used_ipv4_networks()
    start = (pid * 7919 + serial) % len(slots)
    for offset in range(len(slots)):
        candidate = slots[(start + offset) % len(slots)]
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise LinkUnavailable(f"no free /30 left in {SUBNET_POOL}")


class NetnsLink:
    """A veth pair from the root namespace (client) into a fresh namespace (server), on a private /30.

    Both directions are shaped with tbf at rate_bps (None: unshaped).  tbf limits throughput but
    not per-packet serialization delay: after idle, a message smaller than the burst
    (tbf_parameters: max(128 KiB, 1 ms of rate)) passes at veth speed.  No added latency: this
    kernel lacks netem (see netem_available).
    Use as a context manager or call close() (idempotent, safe in finally blocks).
    """

    def __init__(self, rate_bps: int | None = None) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError(f"rate must be positive or None, got {rate_bps}")
        missing = _missing_requirements()
        if missing:
            raise LinkUnavailable(missing)
        self.owner_pid = os.getpid()
        serial = next(_serials)
        self.namespace = f"{NAMESPACE_PREFIX}{self.owner_pid}-{serial}"
        self.client_ifname = _client_ifname(self.owner_pid, serial)
        self.server_ifname = _server_ifname(self.owner_pid, serial)
        if len(self.client_ifname) > 15:
            raise LinkUnavailable(f"interface name {self.client_ifname!r} exceeds 15 characters")
        self.rate_bps: int | None = None
        self._created_namespace = False
        self._created_veth = False
        self._closed = False
        try:
            subnet = _pick_subnet(self.owner_pid, serial)
            client, server = list(subnet.hosts())
            self.client_address, self.server_address = str(client), str(server)
            self._setup(subnet.prefixlen)
            self.set_rate(rate_bps)
        except BaseException:
            # Undo whatever half of the setup happened; the setup error is the one to report.
            with contextlib.suppress(LinkCommandError):
                self.close()
            raise

    def _setup(self, prefixlen: int) -> None:
        ns, cif, sif = self.namespace, self.client_ifname, self.server_ifname
        # Each flag is set before its command: an interrupt that stops `ip` may come after the kernel
        # made the thing, and close() tolerates what does not exist.
        self._created_namespace = True
        _run(["ip", "netns", "add", ns])
        # Both ends start in the root namespace, where their sysfs is at hand, and the server end
        # moves into the namespace once flow steering is set (the setting moves with it).
        self._created_veth = True
        _run(["ip", "link", "add", cif, "type", "veth", "peer", "name", sif])
        for ifname in (cif, sif):
            _keep_flows_in_order(ifname)
        _run(["ip", "link", "set", "dev", sif, "netns", ns])
        # addrgenmode none: no IPv6 link-local address, hence no DAD/router solicitations adding
        # background bytes to the counters.
        _run(["ip", "link", "set", "dev", cif, "addrgenmode", "none"])
        _run(["ip", "-n", ns, "link", "set", "dev", sif, "addrgenmode", "none"])
        _run(["ip", "addr", "add", f"{self.client_address}/{prefixlen}", "dev", cif])
        _run(["ip", "-n", ns, "addr", "add", f"{self.server_address}/{prefixlen}", "dev", sif])
        _run(["ip", "link", "set", "dev", cif, "up"])
        _run(["ip", "-n", ns, "link", "set", "dev", sif, "up"])
        _run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        # Permanent neighbour entries: no ARP traffic in the counters, and no ARP delay on first use.
        client_mac = Path(f"/sys/class/net/{cif}/address").read_text().strip()
        server_mac = self._server_mac()
        _run(["ip", "neigh", "replace", self.server_address, "lladdr", server_mac, "dev", cif, "nud", "permanent"])
        _run(["ip", "-n", ns, "neigh", "replace", self.client_address, "lladdr", client_mac, "dev", sif,
              "nud", "permanent"])

    def _server_mac(self) -> str:
        out = _run(["ip", "-n", self.namespace, "-o", "link", "show", "dev", self.server_ifname]).stdout
        match = re.search(r"link/ether ([0-9a-f:]{17})", out)
        if not match:
            raise LinkCommandError(f"no MAC address for {self.server_ifname} in {out!r}")
        return match.group(1)

    def set_rate(self, rate_bps: int | None) -> None:
        """Shape both directions at rate_bps (tbf), or remove shaping with None; works in place."""
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError(f"rate must be positive or None, got {rate_bps}")
        for prefix, ifname in ((["tc"], self.client_ifname), (["tc", "-n", self.namespace], self.server_ifname)):
            if rate_bps is None:
                if self.rate_bps is not None:
                    _run([*prefix, "qdisc", "del", "dev", ifname, "root"])
            else:
                burst, limit = tbf_parameters(rate_bps)
                _run([*prefix, "qdisc", "replace", "dev", ifname, "root", "tbf",
                      "rate", f"{rate_bps}bit", "burst", str(burst), "limit", str(limit)])
        self.rate_bps = rate_bps

    def placement(self) -> Placement:
        """A process in the server namespace, bound to the server veth."""
        return Placement(self.server_address, tuple(self.server_command([])), self.server_env())

    def server_command(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the server namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def server_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment (a copy of `base`, default os.environ) binding TensorPipe and Gloo to the server veth.

        The namespace only forces traffic onto the veth for TCP: TensorPipe's "cma" channel
        (process_vm_readv) needs only a shared PID namespace, so restrict the agent to
        _transports=["uv"], _channels=["basic"] or tensors bypass the link.
        """
        return _ifname_env(self.server_ifname, base)

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment (a copy of `base`, default os.environ) binding TensorPipe and Gloo to the client veth."""
        return _ifname_env(self.client_ifname, base)

    def counters(self) -> LinkCounters:
        """Client-side interface counters (sent = client to server)."""
        stats = Path(f"/sys/class/net/{self.client_ifname}/statistics")
        read = lambda name: int((stats / name).read_text())  # noqa: E731
        return LinkCounters(read("tx_bytes"), read("rx_bytes"), read("tx_packets"), read("rx_packets"))

    def close(self) -> None:
        """Delete the veth pair and the namespace; idempotent, tolerates a half-built link."""
        with interrupts.held():  # Ctrl-C now would leave the link half deleted: finish, then stop
            self._delete()

    def _delete(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        # Deleting one veth end deletes both, synchronously, even if a process pins the namespace.
        if self._created_veth:
            result = _run(["ip", "link", "del", "dev", self.client_ifname], check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                errors.append(result.stderr.strip())
        if self._created_namespace:
            result = _run(["ip", "netns", "del", self.namespace], check=False)
            if result.returncode != 0 and "No such file" not in result.stderr:
                errors.append(result.stderr.strip())
        if errors:
            raise LinkCommandError(f"cleanup of {self.namespace} incomplete: {'; '.join(errors)}")

    def __enter__(self) -> "NetnsLink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        rate = format_rate(self.rate_bps) if self.rate_bps else "unshaped"
        return (f"NetnsLink({self.namespace}: {self.client_ifname} {self.client_address} <-> "
                f"{self.server_ifname} {self.server_address}, {rate})")


def _keep_flows_in_order(ifname: str) -> None:
    """Turn on RPS for ifname's receive queue so each TCP flow is processed on one CPU, in order.

    A veth hands a packet to the receive backlog of whichever CPU the sender runs on.  When the
    sender migrates mid-stream, two CPUs drain parts of one flow at once and the receiver sees
    segments out of order; TCP answers with spurious fast retransmissions.  Measured on the 2-core
    dev VM: 4 of 50 echoes of 10 MB retransmitted 65 KB to 1.9 MB (up to 20 % more link bytes,
    varying run to run); with RPS, which picks the CPU by flow hash, 0 of 150.  A real NIC keeps a
    flow in order too.  Best effort: a kernel without CONFIG_RPS has no rps_cpus file.
    """
    cpus = os.sched_getaffinity(0) or {0}
    mask = sum(1 << cpu for cpu in cpus)
    words = []  # rps_cpus takes comma-separated 32-bit hex words, most significant first
    while True:
        words.append(f"{mask & 0xFFFFFFFF:08x}")
        mask >>= 32
        if not mask:
            break
    with contextlib.suppress(OSError):
        Path(f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus").write_text(",".join(reversed(words)))


def _ifname_env(ifname: str, base: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["TP_SOCKET_IFNAME"] = ifname
    env["GLOO_SOCKET_IFNAME"] = ifname
    return env

