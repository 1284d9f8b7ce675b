"""The calibration probes' wire format, which the client (semgap.bench.calibration) and its peers
(semgap.server.calibration_peer) share. Kept apart from both, so a peer starts without importing the
client's torch and scipy (2.7 s a peer on the 2-core VM, against 0.04 s)."""
import struct

RAW = "raw"  # the probe of raw TCP: no framework, the floor the transports are set against
SMALL, BULK = "small", "bulk"
MESSAGE_BYTES = {SMALL: 8, BULK: 25_000_000}
RAW_START = struct.Struct("<cQ")  # the raw peer's only header: which probe, and its message size
RAW_KINDS = (b"s", b"b")  # the probe kinds' first letters, as RAW_START carries them
