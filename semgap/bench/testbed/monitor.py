"""Background GPU sampling (NVML via nvidia-ml-py) summarised over benchmark windows."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any, Callable, Protocol

# Design notes
# - We poll NVML ourselves at a fixed interval instead of reading the driver's
#   nvmlDeviceGetSamples buffer: one poll yields utilisation, GPM SM activity and
#   memory together on one monotonic clock, whereas the driver buffer covers only
#   utilisation, is stamped with wall-clock microseconds, has a device-dependent
#   period and length, and silently drops old entries. Polling is simpler and
#   fails in one visible place.
# - util_pct is NVML's "a kernel was running" fraction, averaged by the driver over
#   its own period (1/6 s to 1 s depending on the GPU), so polling faster than that
#   repeats values; SM activity from GPM (Hopper+) covers exactly the time between
#   two of our polls and is preferred when present.
# - A sample is attributed to the window in which it was taken; the period it
#   describes may start up to one interval (or one driver period) before the mark.

METRIC_GPM_SM_UTIL = "gpm_sm_util"  # NVML_GPM_METRIC_SM_UTIL: % of SMs busy
METRIC_NVML_UTIL = "nvml_util"  # nvmlDeviceGetUtilizationRates().gpu
NOTE_SHORT_WINDOW = "window shorter than the sampling interval"


class GpuUnavailable(RuntimeError):
    """A sample source cannot be opened; the message is the recorded reason."""


@dataclass(frozen=True)
class GpuSample:
    time_s: float  # monotonic clock of the sampler
    util_pct: float | None
    sm_activity_pct: float | None
    mem_used_bytes: int | None
    mem_reserved_bytes: int | None


class GpuSource(Protocol):
    """Where samples come from; `note` explains missing metrics (None if all present)."""

    note: str | None

    def read(self) -> GpuSample: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class GpuSummary:
    sm_util_mean_pct: float | None
    sm_util_max_pct: float | None
    mem_peak_bytes: int | None
    samples: int
    metric: str | None  # METRIC_GPM_SM_UTIL or METRIC_NVML_UTIL; None with no values
    note: str | None  # why values are None, or what was degraded; None if all is well

    def to_extra_info(self) -> dict[str, Any]:
        return {
            "gpu_sm_util_mean_pct": self.sm_util_mean_pct,
            "gpu_sm_util_max_pct": self.sm_util_max_pct,
            "gpu_mem_peak_bytes": self.mem_peak_bytes,
            "gpu_samples": self.samples,
            "gpu_metric": self.metric,
            "gpu_monitor_note": self.note,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuSummary:
        # Unknown keys are ignored so a newer server can talk to an older client.
        values = {f.name: data.get(f.name) for f in fields(cls)}
        values["samples"] = int(values["samples"] or 0)
        return cls(**values)


def unavailable_summary(note: str) -> GpuSummary:
    return GpuSummary(None, None, None, 0, None, note)


class _GpmSmActivity:
    """SM activity between consecutive reads, from two alternating GPM samples."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._prev = nvml.nvmlGpmSampleAlloc()
        self._cur = nvml.nvmlGpmSampleAlloc()
        # Prime so the very first read already has an interval to measure.
        nvml.nvmlGpmSampleGet(handle, self._prev)

    def read(self) -> float | None:
        nvml = self._nvml
        nvml.nvmlGpmSampleGet(self._handle, self._cur)
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 1
        request.sample1 = self._prev
        request.sample2 = self._cur
        request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
        nvml.nvmlGpmMetricsGet(request)
        self._prev, self._cur = self._cur, self._prev
        metric = request.metrics[0]
        return float(metric.value) if metric.nvmlReturn == nvml.NVML_SUCCESS else None

    def close(self) -> None:
        for sample in (self._prev, self._cur):
            try:
                self._nvml.nvmlGpmSampleFree(sample)
            except self._nvml.NVMLError:
                pass  # freeing during teardown must not mask the real outcome


def _nvml_reason(prefix: str, err: Exception) -> str:
    return f"{prefix}: {type(err).__name__}: {err}"


class NvmlSource:
    """Reads one GPU through NVML. `device_index` is NVML's index (all GPUs, ignoring
    CUDA_VISIBLE_DEVICES); pass the right one if the process is pinned elsewhere."""

    def __init__(self, device_index: int = 0, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self.note: str | None = None
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as err:
            raise GpuUnavailable(_nvml_reason("NVML unavailable", err)) from err
        try:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
        except self._nvml.NVMLError as err:
            self._nvml.nvmlShutdown()
            raise GpuUnavailable(_nvml_reason(f"NVML device {device_index} unavailable", err)) from err
        self._mem_v2 = True
        self._gpm = self._open_gpm()

    def _open_gpm(self) -> _GpmSmActivity | None:
        nvml = self._nvml
        try:
            if not nvml.nvmlGpmQueryDeviceSupport(self._handle).isSupportedDevice:
                self.note = "GPM unsupported on this GPU (pre-Hopper?); using NVML utilisation"
                return None
            return _GpmSmActivity(nvml, self._handle)
        except nvml.NVMLError as err:  # old driver (FunctionNotFound), MIG, vGPU ...
            self.note = _nvml_reason("GPM unavailable; using NVML utilisation", err)
            return None

    def _read_sm_activity(self) -> float | None:
        if self._gpm is None:
            return None
        try:
            return self._gpm.read()
        except self._nvml.NVMLError as err:
            # GPM failing should not cost us utilisation and memory: degrade, once.
            self._gpm.close()
            self._gpm = None
            self.note = _nvml_reason("GPM stopped; using NVML utilisation", err)
            return None

    def _read_memory(self) -> tuple[int, int | None]:
        nvml = self._nvml
        if self._mem_v2:
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(self._handle, version=nvml.nvmlMemory_v2)
                return int(mem.used), int(mem.reserved)
            except nvml.NVMLError:
                self._mem_v2 = False  # driver predates v2; v1 folds reserved into used
        mem = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(mem.used), None

    def read(self) -> GpuSample:
        sm_activity = self._read_sm_activity()
        util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        used, reserved = self._read_memory()
        return GpuSample(self._clock(), float(util.gpu), sm_activity, used, reserved)

    def close(self) -> None:
        if self._gpm is not None:
            self._gpm.close()
            self._gpm = None
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass  # already shut down


def _import_pynvml() -> Any:
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError as err:
        raise GpuUnavailable("pynvml not installed (pip install nvidia-ml-py)") from err
    return pynvml


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _join_notes(*notes: str | None) -> str | None:
    present = [n for n in notes if n]
    return "; ".join(present) if present else None


def summarise(window: list[GpuSample]) -> tuple[float | None, float | None, str | None, int | None]:
    """(mean, max, metric, mem peak) of a window; GPM SM activity wins over util."""
    sm = [s.sm_activity_pct for s in window if s.sm_activity_pct is not None]
    util = [s.util_pct for s in window if s.util_pct is not None]
    values, metric = (sm, METRIC_GPM_SM_UTIL) if sm else (util, METRIC_NVML_UTIL)
    mem = [s.mem_used_bytes for s in window if s.mem_used_bytes is not None]
    peak = max(mem) if mem else None
    if not values:
        return None, None, None, peak
    return _mean(values), max(values), metric, peak


class GpuMonitor:
    """Samples a GpuSource on a daemon thread; summary(mark()) covers a window.

    Never raises for a missing driver/module/GPU: the reason lands in every summary.
    """

    def __init__(self, source_factory: Callable[[], GpuSource] = NvmlSource,
                 interval_s: float = 0.05, max_samples: int = 100_000) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._factory = source_factory
        self.interval_s = interval_s
        self._samples: deque[GpuSample] = deque(maxlen=max_samples)
        self._taken = 0  # samples ever taken; marks index into this, immune to trimming
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: GpuSource | None = None
        self.unavailable_reason: str | None = None
        self._error: str | None = None
        self._error_at = 0  # value of _taken when sampling failed
        self._source_note: str | None = None  # kept past stop(), which drops the source

    # -- lifecycle ---------------------------------------------------------
    def _open(self) -> bool:
        if self._source is not None:
            return True
        try:
            self._source = self._factory()
        except GpuUnavailable as err:
            self.unavailable_reason = str(err)
        except Exception as err:  # any factory failure is a reason, not a crash
            self.unavailable_reason = f"GPU source failed to open: {type(err).__name__}: {err}"
        return self._source is not None

    def start(self) -> GpuMonitor:
        if self.is_running or not self._open():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="semgap-gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        # Fixed-rate schedule: a slow read delays one sample, not every later one.
        next_s = time.monotonic()
        while not self._stop.is_set():
            if self.sample_once() is None:
                return
            next_s += self.interval_s
            now = time.monotonic()
            if next_s < now:  # fell behind: skip missed slots rather than burst
                next_s = now
            self._stop.wait(next_s - now)

    # -- sampling ----------------------------------------------------------
    def sample_once(self) -> GpuSample | None:
        """Take one sample now (the thread's step; tests call it directly).

        Returns None when nothing can be sampled; a read error is recorded and
        ends sampling, since NVML errors mid-run (GPU lost, reset) do not heal.
        """
        if self._error is not None or not self._open():
            return None
        try:
            sample = self._source.read()
        except Exception as err:
            with self._lock:
                self._error = f"sampling stopped: {type(err).__name__}: {err}"
                self._error_at = self._taken
            return None
        with self._lock:
            self._samples.append(sample)
            self._taken += 1
            self._source_note = getattr(self._source, "note", None)
        return sample

    def mark(self) -> int:
        """Start of a window: the number of samples taken so far."""
        with self._lock:
            return self._taken

    def summary(self, since: int, until: int | None = None) -> GpuSummary:
        """Summary of samples taken in [since, until) (until=None: up to now)."""
        if self.unavailable_reason is not None:
            return unavailable_summary(self.unavailable_reason)
        with self._lock:
            end = self._taken if until is None else min(until, self._taken)
            first_kept = self._taken - len(self._samples)
            start = max(since, first_kept)
            window = [self._samples[i - first_kept] for i in range(start, end)]
            dropped = max(0, min(end, first_kept) - since)
            # A failure before the window's end leaves it short of samples: say so.
            hit = self._error is not None and (until is None or until >= self._error_at)
            error = self._error if hit else None
            source_note = self._source_note
        return _summarise_window(window, dropped, error, source_note, self.is_running)


def _summarise_window(window: list[GpuSample], dropped: int, error: str | None,
                      source_note: str | None, running: bool) -> GpuSummary:
    lost = f"{dropped} samples of the window dropped (buffer full)" if dropped else None
    if not window:
        why = error or (NOTE_SHORT_WINDOW if running else "GPU monitor not running")
        return unavailable_summary(_join_notes(why, lost))
    mean, peak_util, metric, mem_peak = summarise(window)
    missing = None if metric else "no utilisation values in window"
    degraded = source_note if metric == METRIC_NVML_UTIL else None
    return GpuSummary(mean, peak_util, mem_peak, len(window), metric,
                      _join_notes(missing, error, lost, degraded))
