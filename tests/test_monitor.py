"""Tests for semgap.bench.testbed.monitor: window statistics on fake sources, lifecycle, and the no-driver path."""
import ctypes
import itertools
import json
import threading
import time
from types import SimpleNamespace

import pytest

from semgap.bench.testbed.monitor import (
    METRIC_GPM_SM_UTIL,
    METRIC_NVML_UTIL,
    NOTE_SHORT_WINDOW,
    GpuMonitor,
    GpuSample,
    GpuSummary,
    GpuUnavailable,
    NvmlSource,
)

pynvml = pytest.importorskip("pynvml")


class FakeSource:
    """Replays scripted (util, sm_activity, mem_used) triples on a counter clock."""

    def __init__(self, script, fail_after=None, note=None):
        self._script = list(script)
        self._fail_after = fail_after
        self.note = note
        self.reads = 0
        self.closed = False

    def read(self):
        if self._fail_after is not None and self.reads >= self._fail_after:
            raise RuntimeError("GPU is lost")
        util, sm, mem = self._script[self.reads % len(self._script)]
        self.reads += 1
        return GpuSample(float(self.reads), util, sm, mem, 0)

    def close(self):
        self.closed = True


def monitor_for(source, **kwargs):
    return GpuMonitor(source_factory=lambda: source, **kwargs)


def wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def monitor_threads():
    return [t for t in threading.enumerate() if t.name == "semgap-gpu-monitor"]


def test_window_statistics_exact():
    before = [(10.0, None, 100), (99.0, None, 500)]
    inside = [(20.0, None, 300), (40.0, None, 700), (90.0, None, 200)]
    source = FakeSource(before + inside)
    monitor = monitor_for(source)
    monitor.sample_once()
    monitor.sample_once()
    start = monitor.mark()
    for _ in range(3):
        monitor.sample_once()
    end = monitor.mark()
    monitor.sample_once()  # after the window: must not count
    summary = monitor.summary(start, end)
    monitor.stop()
    assert summary == GpuSummary(50.0, 90.0, 700, 3, METRIC_NVML_UTIL, None)
    assert source.closed


def test_gpm_sm_activity_preferred_over_util():
    source = FakeSource([(100.0, 30.0, 1), (100.0, 60.0, 2)])
    monitor = monitor_for(source)
    start = monitor.mark()
    monitor.sample_once()
    monitor.sample_once()
    summary = monitor.summary(start)
    assert (summary.sm_util_mean_pct, summary.sm_util_max_pct) == (45.0, 60.0)
    assert summary.metric == METRIC_GPM_SM_UTIL
    assert summary.mem_peak_bytes == 2


def test_source_note_reported_when_falling_back_to_util():
    monitor = monitor_for(FakeSource([(5.0, None, 1)], note="GPM unsupported"))
    start = monitor.mark()
    monitor.sample_once()
    assert monitor.summary(start).note == "GPM unsupported"


def test_window_shorter_than_interval_reports_none():
    monitor = monitor_for(FakeSource([(50.0, None, 1)]), interval_s=60.0)
    with monitor:
        wait_until(lambda: monitor.mark() >= 1)  # the first sample is taken at start
        summary = monitor.summary(monitor.mark())
    assert summary.samples == 0
    assert summary.sm_util_mean_pct is None and summary.mem_peak_bytes is None
    assert summary.note == NOTE_SHORT_WINDOW


def test_bounded_buffer_reports_dropped_samples():
    monitor = monitor_for(FakeSource([(10.0, None, 1), (20.0, None, 2)]), max_samples=2)
    for _ in range(5):  # utils 10,20,10,20,10; only the last two are kept
        monitor.sample_once()
    summary = monitor.summary(0)
    assert summary.samples == 2
    assert summary.sm_util_mean_pct == 15.0
    assert summary.note == "3 samples of the window dropped (buffer full)"


def test_real_thread_samples_and_stops_cleanly():
    source = FakeSource([(1.0, None, 1)])
    monitor = monitor_for(source, interval_s=0.001)
    monitor.start()
    monitor.start()  # a second start must not spawn a second thread
    assert len(monitor_threads()) == 1
    wait_until(lambda: monitor.mark() >= 3)
    monitor.stop()
    assert monitor.summary(0).samples > 0
    assert not monitor_threads()
    assert source.closed
    monitor.stop()  # idempotent
    assert not monitor.is_running


def test_context_manager_stops_thread():
    with monitor_for(FakeSource([(1.0, None, 1)]), interval_s=0.001) as monitor:
        assert monitor.is_running
    assert not monitor_threads()


def test_error_mid_run_is_recorded_and_thread_exits():
    source = FakeSource([(40.0, None, 8)], fail_after=3)
    monitor = monitor_for(source, interval_s=0.001)
    start = monitor.mark()
    monitor.start()
    wait_until(lambda: not monitor.is_running)
    summary = monitor.summary(start)
    assert summary.samples == 3
    assert summary.sm_util_mean_pct == 40.0
    assert summary.note == "sampling stopped: RuntimeError: GPU is lost"
    later = monitor.summary(monitor.mark())
    assert later.samples == 0 and later.note == "sampling stopped: RuntimeError: GPU is lost"
    monitor.stop()
    assert not monitor_threads()


def test_error_after_window_does_not_taint_it():
    monitor = monitor_for(FakeSource([(40.0, None, 8)], fail_after=2))
    monitor.sample_once()
    end = monitor.mark()
    monitor.sample_once()
    monitor.sample_once()  # raises
    assert monitor.summary(0, end).note is None


def test_factory_failure_is_a_reason_not_a_crash():
    def factory():
        raise GpuUnavailable("pynvml not installed (pip install nvidia-ml-py)")

    monitor = GpuMonitor(source_factory=factory)
    monitor.start()
    summary = monitor.summary(monitor.mark())
    assert summary == GpuSummary(None, None, None, 0, None, "pynvml not installed (pip install nvidia-ml-py)")
    assert not monitor_threads()
    monitor.stop()


def nvml_fails_here():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return True
    pynvml.nvmlShutdown()
    return False


@pytest.mark.skipif(not nvml_fails_here(), reason="NVML initialises here; the no-driver path cannot be exercised")
def test_no_driver_path_real_nvml():
    monitor = GpuMonitor()  # real NvmlSource
    monitor.start()
    summary = monitor.summary(monitor.mark())
    monitor.stop()
    assert summary.samples == 0
    assert summary.sm_util_mean_pct is None and summary.mem_peak_bytes is None
    assert summary.note.startswith("NVML unavailable: NVMLError_")
    assert not monitor_threads()


def test_summary_dict_roundtrip_and_extra_info():
    summary = GpuSummary(12.5, 80.0, 1 << 30, 7, METRIC_GPM_SM_UTIL, None)
    wire = json.loads(json.dumps(summary.to_dict()))
    assert GpuSummary.from_dict(wire) == summary
    assert summary.to_extra_info() == {
        "gpu_sm_util_mean_pct": 12.5,
        "gpu_sm_util_max_pct": 80.0,
        "gpu_mem_peak_bytes": 1 << 30,
        "gpu_samples": 7,
        "gpu_metric": METRIC_GPM_SM_UTIL,
        "gpu_monitor_note": None,
    }


# -- NvmlSource against a fake NVML module built from pynvml's real names and structs --

def fake_nvml(gpm_supported=True, mem_v2=True, gpm_value=37.5, calls=None):
    calls = [] if calls is None else calls
    buffers, taken_at, clock = [], {}, itertools.count()  # taken_at: GPM sample address -> fill order

    def address(sample):
        return ctypes.cast(sample, ctypes.c_void_p).value

    def gpm_alloc():
        buffers.append(ctypes.c_uint64())
        return ctypes.cast(ctypes.pointer(buffers[-1]), pynvml.c_nvmlGpmSample_t)

    def gpm_get(handle, sample):
        taken_at[address(sample)] = next(clock)
        return sample

    def record(name, result=None):
        def fn(*args, **kwargs):
            calls.append(name)
            return result(*args, **kwargs) if callable(result) else result
        return fn

    def memory_info(handle, version=None):
        if version is not None and not mem_v2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if version is not None:
            assert version == pynvml.nvmlMemory_v2
            return SimpleNamespace(used=1000, reserved=300)
        return SimpleNamespace(used=1300)

    def metrics_get(request):
        # NVML measures from sample1 to sample2: each read must cover just the last interval.
        assert taken_at[address(request.sample2)] - taken_at[address(request.sample1)] == 1
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        assert request.numMetrics == 1
        assert request.metrics[0].metricId == pynvml.NVML_GPM_METRIC_SM_UTIL
        request.metrics[0].value = gpm_value
        request.metrics[0].nvmlReturn = pynvml.NVML_SUCCESS
        return request

    names = {
        "nvmlInit": record("init"),
        "nvmlShutdown": record("shutdown"),
        "nvmlDeviceGetHandleByIndex": record("handle", "H"),
        "nvmlGpmQueryDeviceSupport": record("gpm_query", SimpleNamespace(isSupportedDevice=int(gpm_supported))),
        "nvmlGpmSampleAlloc": record("gpm_alloc", gpm_alloc),
        "nvmlGpmSampleGet": record("gpm_get", gpm_get),
        "nvmlGpmSampleFree": record("gpm_free"),
        "nvmlGpmMetricsGet": record("gpm_metrics", metrics_get),
        "nvmlDeviceGetUtilizationRates": record("util", SimpleNamespace(gpu=64)),
        "nvmlDeviceGetMemoryInfo": record("mem", memory_info),
    }
    real = {n: getattr(pynvml, n) for n in (
        "NVMLError", "NVML_SUCCESS", "nvmlMemory_v2", "c_nvmlGpmMetricsGet_t",
        "NVML_GPM_METRICS_GET_VERSION", "NVML_GPM_METRIC_SM_UTIL")}
    return SimpleNamespace(**names, **real), calls


def test_fake_nvml_uses_only_names_real_pynvml_has():
    module, _ = fake_nvml()
    missing = [n for n in vars(module) if not hasattr(pynvml, n)]
    assert not missing


def test_nvml_source_reads_gpm_and_v2_memory():
    module, calls = fake_nvml()
    source = NvmlSource(device_index=0, nvml=module, clock=lambda: 5.0)
    samples = [source.read(), source.read(), source.read()]  # GPM buffers alternate
    source.close()
    assert samples == [GpuSample(5.0, 64.0, 37.5, 1000, 300)] * 3
    assert source.note is None
    assert calls.count("gpm_free") == 2 and calls[-1] == "shutdown"


def test_nvml_source_falls_back_without_gpm_or_v2_memory():
    module, _ = fake_nvml(gpm_supported=False, mem_v2=False)
    source = NvmlSource(nvml=module, clock=lambda: 1.0)
    sample = source.read()
    source.close()
    assert sample == GpuSample(1.0, 64.0, None, 1300, None)
    assert "GPM unsupported" in source.note


def test_nvml_source_init_failure_is_gpu_unavailable():
    module, _ = fake_nvml()

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    module.nvmlInit = fail
    with pytest.raises(GpuUnavailable, match="NVML unavailable: NVMLError_DriverNotLoaded"):
        NvmlSource(nvml=module)


def test_nvml_source_bad_device_index_shuts_nvml_down():
    module, calls = fake_nvml()

    def no_such_device(index):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    module.nvmlDeviceGetHandleByIndex = no_such_device
    with pytest.raises(GpuUnavailable, match="NVML device 3 unavailable"):
        NvmlSource(device_index=3, nvml=module)
    assert calls == ["init", "shutdown"]
