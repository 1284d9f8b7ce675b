"""SIGINT and SIGTERM as an orderly stop: named, raised where a run can stop, held while it cleans up.

Python's default SIGTERM ends the process on the spot, so no teardown runs and a network namespace,
its veth and the log of a half-measured run are left as they were. Under a `SignalGuard` both signals
raise `Interrupted` (a KeyboardInterrupt, so pytest stops, tears its fixtures down and writes what
was measured, as it does on Ctrl-C), and the guard remembers which signal came first. Inside `held()`
a signal is only recorded: cleanup that must finish (deleting a link, stopping a server, writing the
report) is not cut in half by a second Ctrl-C.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signal_name` says which."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class SignalGuard:
    """Turns SIGINT and SIGTERM into `Interrupted` in the main thread and records the first one's name."""

    def __init__(self) -> None:
        self.received: str | None = None  # the first signal's name, e.g. "SIGTERM"
        self.pending = False  # a signal arrived inside held() and has not been raised yet
        self._previous: dict[int, object] = {}
        self._outer: SignalGuard | None = None

    def install(self) -> bool:
        """Take over both signals; False (and nothing changed) outside the main thread, where Python cannot."""
        global _active
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._outer, _active = _active, self
        return True

    def uninstall(self) -> None:
        """Give both signals back to whatever handled them before `install`."""
        global _active
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous:
            _active = self._outer
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        self.received = self.received or name
        if _holds:
            if not self.pending:
                print(f"\nsemgap: {name} received; finishing the cleanup under way first", file=sys.stderr, flush=True)
            self.pending = True
            return
        raise Interrupted(name)


_active: SignalGuard | None = None  # signals are per process, so one guard handles them at a time
_holds = 0  # held() sections open now


@contextlib.contextmanager
def held(reraise: bool = True) -> Iterator[None]:
    """Defer SIGINT/SIGTERM until the block ends; then raise `Interrupted` if one came and `reraise`.

    Without an installed guard (semgap used as a library) this changes nothing: Python's own
    handlers run as usual.
    """
    global _holds
    _holds += 1
    try:
        yield
    finally:
        _holds -= 1
        guard = _active
        if not _holds and guard is not None and guard.pending:
            guard.pending = False
            if reraise:
                raise Interrupted(guard.received or "signal")
