"""Link rates: parsing and naming them as tc does, and sizing the tbf shaper for a rate."""
from __future__ import annotations

import math
import re

# tbf sizing (measured on this 2-core VM, kernel 6.18, HZ=250, veth unshaped ~14 Gbit/s):
# - The classic rule "burst >= rate/HZ" comes from tick-driven timers: if tbf can only release
#   tokens once per tick, a smaller bucket caps the rate below the configured one.  tbf's
#   watchdog is an hrtimer, so the bucket only has to outlast timer/softirq latency.  With 1 ms
#   of traffic (= rate/HZ for HZ=1000) TCP payload goodput over 50 MB was 958 Mbit/s at 1gbit,
#   4.83 Gbit/s at 5gbit, 9.76 Gbit/s at 10gbit (tbf charges per-segment headers, so the ideal is
#   95.6 %; the excess is the initial bucket); even 0.2 ms held 10gbit (9.52 Gbit/s).
# - The bucket must hold the largest packet tbf sees: veth has GSO/TSO on, so TCP hands it
#   super-frames of up to 64 KiB; two of them keep back-to-back super-frames flowing.  This
#   floor dominates below ~1gbit (128 KiB = 10 ms at 100mbit).
# - A bucket is also a free pass: after idle, up to `burst` bytes leave at veth speed.  Keeping
#   it at ~1 ms keeps messages larger than 1 ms of link time paced like on a real link.
_BURST_SECONDS = 0.001
_MIN_BURST_BYTES = 2 * 65536
# The queue behind the bucket: 50 ms at the rate (at least 1 MiB) absorbs TCP's bursts without
# tail drops (drops would show up as retransmissions) while keeping queueing delay modest.
_QUEUE_SECONDS = 0.050
_MIN_LIMIT_BYTES = 1 << 20

_RATE_UNITS = {
    "": 1, "bit": 1,
    "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
}
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
def parse_rate(text: str) -> int:
    """Parse a tc-style rate ("100mbit", "1.5gbit", "500kbit", "1000000") into bits per second."""
    match = _RATE_RE.match(str(text))
    if not match:
        raise ValueError(f"invalid rate {text!r}: expected a number with a unit such as 100mbit, 1gbit, 10gbit")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit.endswith("bps"):
        # tc reads "mbps" as megaBYTES per second, which people rarely mean; refuse the trap.
        raise ValueError(f"invalid rate {text!r}: tc reads '{unit}' as bytes per second; write bits, e.g. 100mbit")
    if unit not in _RATE_UNITS:
        raise ValueError(f"invalid rate {text!r}: unknown unit {unit!r} (use bit, kbit, mbit, gbit, tbit)")
    bps = number * _RATE_UNITS[unit]
    if not math.isfinite(bps) or round(bps) <= 0:
        raise ValueError(f"invalid rate {text!r}: must be a positive rate")
    return int(round(bps))


def format_rate(bps: int) -> str:
    """Format bits per second with the largest decimal unit that keeps it exact ("1gbit", "1500mbit")."""
    if bps <= 0:
        raise ValueError(f"rate must be positive, got {bps}")
    for unit in ("tbit", "gbit", "mbit", "kbit"):
        if bps % _RATE_UNITS[unit] == 0:
            return f"{bps // _RATE_UNITS[unit]}{unit}"
    return f"{bps}bit"


def tbf_parameters(rate_bps: int) -> tuple[int, int]:
    """(burst_bytes, limit_bytes) for a tbf at rate_bps; see the sizing notes at the top of the module."""
    rate_bytes = rate_bps / 8
    burst = max(_MIN_BURST_BYTES, int(rate_bytes * _BURST_SECONDS))
    limit = max(_MIN_LIMIT_BYTES, burst + int(rate_bytes * _QUEUE_SECONDS))
    return burst, limit
