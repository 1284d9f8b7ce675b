"""The text the trained preset learns from: the Python standard library's own sources, as bytes."""
from __future__ import annotations

import hashlib
import math
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_EVERY = 10  # every 10th file (in sorted order) is held out for evaluation, never trained on


@dataclass(frozen=True)
class Corpus:
    """Training and held-out text, split by file so no held-out file is seen in training."""

    train_bytes: bytes
    held_out_bytes: bytes
    file_count: int
    source: str  # where the files came from, for the record
    digest: str  # sha256 over every file's name and contents, in order: what the weights depend on


def stdlib_sources() -> list[Path]:
    """The top-level `*.py` files of this interpreter's standard library, sorted by name.

    Every Python installation has them, no download is needed, and a fixed sorted selection makes the
    corpus a function of the Python version alone (its digest says which).
    """
    directory = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(path for path in directory.glob("*.py") if path.is_file())
    if not files:
        raise FileNotFoundError(f"no *.py files in the standard library directory {directory}; "
                                "the trained preset needs the standard library's sources")
    return files


def read_corpus(files: list[Path]) -> Corpus:
    """Concatenate `files`, every HELD_OUT_EVERY-th into the held-out part, and digest them all."""
    if len(files) < HELD_OUT_EVERY:
        raise ValueError(f"a corpus needs at least {HELD_OUT_EVERY} files to hold one out, got {len(files)}")
    digest = hashlib.sha256()
    train, held_out = [], []
    for index, path in enumerate(files):
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
        (held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(data)
    source = str(files[0].parent) if len({path.parent for path in files}) == 1 else "several directories"
    return Corpus(b"".join(train), b"".join(held_out), len(files), source, digest.hexdigest())


def stdlib_corpus() -> Corpus:
    return read_corpus(stdlib_sources())


def unigram_bits_per_byte(train: bytes, evaluated: bytes) -> float:
    """Cross-entropy (bits per byte) of `evaluated` under the byte frequencies of `train`.

    The baseline a byte-level model must beat: a model that ignores context entirely. Counts are
    add-one smoothed, so a byte never seen in training costs log2(len(train) + 256) bits, not infinity.
    """
    if not evaluated:
        raise ValueError("no bytes to evaluate")
    counts = [1] * 256
    for byte, count in Counter(train).items():
        counts[byte] += count
    total = sum(counts)
    return sum(count * -math.log2(counts[byte] / total) for byte, count in Counter(evaluated).items()) / len(evaluated)
