"""A train-once cache of model directories outside the repository: a file lock, then an atomic rename."""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

CACHE_VARIABLE = "SEMGAP_CACHE"
PROGRESS_EVERY_S = 15.0
POLL_S = 0.2


def cache_root() -> Path:
    """`$SEMGAP_CACHE`, else `~/.cache/semgap`: never inside the checkout, so no weights get committed."""
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "semgap"


def cached_directory(entry: str, build: Callable[[Path], None], progress: Callable[[str], None]) -> Path:
    """The directory `entry` of the cache, made by `build(empty_directory)` the first time it is asked for.

    Processes that ask at once (a client and the server it spawns) take a lock in turn: one builds while
    the others wait, then find the entry and load it. `build` writes into a partial directory that is
    renamed into place only when complete, so no process ever sees half an entry; a build that fails or
    is killed leaves only a partial directory, removed by the next build.
    """
    if "/" in entry or entry.startswith("."):
        raise ValueError(f"a cache entry is a plain directory name, got {entry!r}")
    root = cache_root()
    final = root / entry
    if final.is_dir():
        return final
    with entry_lock(entry, progress):
        if final.is_dir():  # built by the process that held the lock before us
            return final
        for stale in root.glob(f"{entry}.partial-*"):  # we hold the lock, so their builders are gone
            shutil.rmtree(stale)
        partial = root / f"{entry}.partial-{os.getpid()}"
        partial.mkdir()
        try:
            build(partial)
            _flush_to_disk(partial)
            os.rename(partial, final)
            _flush_to_disk_directory(root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return final


@contextmanager
def entry_lock(entry: str, progress: Callable[[str], None] = lambda line: None) -> Iterator[None]:
    """Hold the lock of cache entry `entry` (a file next to it), waiting for it with a line every 15 s."""
    cache_root().mkdir(parents=True, exist_ok=True)
    path = cache_root() / f"{entry}.lock"
    with open(path, "a") as lock_file:
        start = time.monotonic()
        next_progress = start
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= next_progress:
                    progress(f"semgap: waiting {time.monotonic() - start:.0f} s for another process to build "
                             f"{entry} (lock {path})")
                    next_progress += PROGRESS_EVERY_S
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _flush_to_disk(directory: Path) -> None:
    # The rename publishes the entry, so its files must be on disk before it, not after a crash.
    for path in directory.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    _flush_to_disk_directory(directory)


def _flush_to_disk_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
