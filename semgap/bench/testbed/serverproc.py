"""Start a semgap server as a separate process group, wait until it serves, and stop all of it."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

READY_LINE = "semgap server ready on"


def ready_line(host: str, port: int, what: str) -> str:
    """The line a server prints once it serves: it names the port it is bound to (it may have been asked for 0)."""
    return f"{READY_LINE} {host}:{port} ({what})"


def reported_port(log_text: str) -> int | None:
    """The port on the last ready line in `log_text`, or None when there is none yet."""
    for line in reversed(log_text.splitlines()):
        if READY_LINE in line:
            address = line.split(READY_LINE, 1)[1].split()[0]
            return int(address.rsplit(":", 1)[1])
    return None
PR_SET_PDEATHSIG = 1
PROGRESS_EVERY_S = 15.0


class ServerStartError(RuntimeError):
    """The server process exited or did not become ready in time; the message holds its log's tail.

    `summary` is the same in one line: the reason, the log's last line (usually the server's own
    error, e.g. a checkpoint it cannot load) and where the whole log is.
    """

    def __init__(self, reason: str, log_path: Path, log_tail: str):
        super().__init__(f"{reason}; log {log_path}:\n{log_tail}")
        last_line = next((line.strip() for line in reversed(log_tail.splitlines()) if line.strip()), "(empty log)")
        self.summary = f"{reason}: {last_line} (whole log: {log_path})"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel kills the server if the pytest process dies
    # without running its teardown (SIGKILL, a crash), so no server outlives its run. SIGKILL, since a
    # server whose client vanished mid-call may never finish a graceful shutdown.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    host: str
    port: int
    log_path: Path

    @classmethod
    def spawn(cls, model: str, host: str, port: int, log_dir: Path, *, extra_args: tuple[str, ...] = (),
              **options) -> "ServerProcess":
        """Start `python -m semgap.server` for `model` and wait until it serves; `options` as for `start`."""
        python_args = ("-m", "semgap.server", "--model", model, "--host", host, "--port", str(port), *extra_args)
        return cls.start(python_args, host, port, log_dir, label=model.replace("/", "_"), **options)

    @classmethod
    def start(
        cls,
        python_args: tuple[str, ...],
        host: str,
        port: int,
        log_dir: Path,
        *,
        label: str,
        command_prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 300.0,
        progress: Callable[[str], None] = lambda line: None,
    ) -> "ServerProcess":
        """Run `python PYTHON_ARGS` (after `command_prefix`, e.g. `ip netns exec NS`) until it prints READY_LINE.

        Its output goes to a log named after `label` and the port in `log_dir`. With `port` 0 the server
        binds a port the kernel picks and names it on its ready line; `port` is then that port, so no
        other process can take it between a probe and the bind.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"server-{label}-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        argv = [*command_prefix, sys.executable, "-u", *python_args]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {}), "PYTHONPATH": _source_root()},
                start_new_session=True,  # its own process group: teardown kills the whole group
                preexec_fn=_die_with_parent,
            )
        server = cls(process, host, port, log_path)
        try:
            server.wait_ready(ready_timeout_s, progress)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout_s: float, progress: Callable[[str], None] = lambda line: None) -> None:
        """Wait for the ready line; every PROGRESS_EVERY_S say how long it has been (large models take minutes)."""
        start = time.monotonic()
        deadline, next_progress = start + timeout_s, start + PROGRESS_EVERY_S
        while time.monotonic() < deadline:
            if time.monotonic() >= next_progress:
                last_line = (self.log_tail(1) or "(no output yet)").strip()
                progress(f"semgap: waiting {time.monotonic() - start:.0f} s for the server; its log says: {last_line}")
                next_progress += PROGRESS_EVERY_S
            port = reported_port(self.log_tail(20))
            if port is not None:
                if self.port not in (0, port):
                    raise ServerStartError(f"semgap server asked for port {self.port} reports port {port}",
                                           self.log_path, self.log_tail())
                self.port = port
                return
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"semgap server exited with code {self.process.returncode} before it was ready",
                    self.log_path, self.log_tail(),
                )
            time.sleep(0.1)
        raise ServerStartError(f"semgap server not ready after {timeout_s:.0f} s", self.log_path, self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `timeout_s`.

        A stopped server (SIGSTOP, a debugger) is continued after the SIGTERM, so it stops cleanly at
        once rather than be killed after `timeout_s`. Once the server itself has exited, anything else
        still in its group (a compile worker, an `ip netns exec` child) is killed at once rather than
        waited for.
        """
        for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, signum)
                if signum == signal.SIGTERM:
                    os.killpg(self.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait(5.0)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: the usual case


def _source_root() -> str:
    """The checkout holding the semgap package, so the server imports the same code as the client."""
    root = str(Path(__file__).resolve().parents[3])
    existing = os.environ.get("PYTHONPATH", "")
    return f"{root}{os.pathsep}{existing}" if existing else root
