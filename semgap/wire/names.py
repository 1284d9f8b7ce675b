"""The names on the wire: every operation a semgap server answers, and the metadata fields and tensor names
its requests and answers carry. Client and server import them from here, so a name is spelled once.

A name's length is part of what a message weighs (codec headers carry names as text), so renaming one
moves the byte gate: run `scripts/byte_gate.sh --update` with the change.
"""

# Operations (a request's op).
HELLO = "hello"
ECHO = "echo"  # answered byte for byte, undecoded: the transports' calibration and wire tests
SINK = "sink"  # received whole and dropped: one-way throughput
UPLOAD_WEIGHTS = "upload_weights"
NAIVE_STEP = "naive_step"
PREFILL = "prefill"
DECODE = "decode"
RELEASE = "release"
GPU_SUMMARY = "gpu_summary"
OP_BATCH = "op_batch"
OP_STATS = "op_stats"
BATCH_PREFILL = "batch_prefill"
BATCH_DECODE = "batch_decode"
BATCH_RELEASE = "batch_release"
KV_EXPORT = "kv_export"
KV_IMPORT = "kv_import"
KV_EXTEND = "kv_extend"

# Metadata fields (string values).
WEIGHTS_HANDLE = "weights_handle"
KV_HANDLE = "kv_handle"
BASE_HANDLE = "base_handle"
TOKEN = "token"
SERVER_COMPUTE_MS = "server_compute_ms"
SERVER_CODEC_MS = "server_codec_ms"
BATCH_SIZE = "batch_size"
SINCE = "since"
SUMMARY = "summary"
MARK = "mark"  # gpu_summary: where the monitor's window starts
RELEASE_AFTER = "release"  # kv_export: free the cache once exported
COMPRESS = "compress"
MAX_ABS_LOGIT_ERROR = "max_abs_logit_error"
LOGITS_TO_KEEP = "logits_to_keep"  # prefill: the program keeps the last N positions' logits (absent: every position's)

# hello: where the server computes.
CPUS = "cpus"  # the CPUs it runs on, as taskset writes them
THREADS = "threads"  # torch's intra-op threads

# Tensor names.
INPUT_IDS = "input_ids"
LOGITS = "logits"
