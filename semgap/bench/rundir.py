"""One directory per run under the results folder, and `latest` pointing at the newest run that measured something."""
from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

LATEST = "latest"
_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def new_run_id(now_s: float | None = None) -> str:
    """A run's name: UTC time to the second, so names sort by start, then 6 random hex digits ("20261128-094014-3fa2c1")."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now_s is None else now_s))
    return f"{stamp}-{secrets.token_hex(3)}"


def point_latest(results_dir: Path, run_dir: Path) -> None:
    """Make `results_dir/latest` a relative symlink to `run_dir`, replaced in one step (readers never see none)."""
    link = results_dir / LATEST
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} is not a symlink semgap made; move it away so it can point at the newest run")
    staging = results_dir / f".{LATEST}-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(run_dir, results_dir))
    os.replace(staging, link)


def is_run_id(name: str) -> bool:
    """Whether `name` is a run's name as new_run_id makes them."""
    return _RUN_ID.fullmatch(name) is not None


def run_dirs(results_dir: Path) -> list[Path]:
    """The run directories under `results_dir`, oldest first (their names sort by start time)."""
    if not results_dir.is_dir():
        return []
    return sorted(path for path in results_dir.iterdir() if is_run_id(path.name) and not path.is_symlink())
