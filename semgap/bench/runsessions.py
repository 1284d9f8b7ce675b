"""The run's sessions: one ExperimentSession per model of --semgap-model, opened together, closed together."""
from __future__ import annotations

from typing import Callable

from semgap.bench.config import SemgapConfig
from semgap.bench.session import ExperimentSession
from semgap.bench.testbed import interrupts

# What a run of several models records per model, under `models` in its JSON's `semgap` section; the rest is
# the run's (the first session's, alike for all: the settings, the machine, the client's CPUs).
PER_MODEL = ("model", "device", "dtype", "compressor", "server_cpus", "server_threads", "reference_tokens",
             "setup_bytes", "model_shape", "shape_checks", "gpu_name", "decode_path_local", "decode_path_server",
             "engine_stats_local", "engine_stats_server_at_start")


class RunSessions:
    """Every model's session: its client model, its own server (and link) and connection, its one upload.

    Benchmarks run one at a time, so a model's connection is idle while another model's rounds run: the
    loopback byte counters, which count every socket to 127.0.0.1, see only the running model's bytes
    (the framing check would flag any other). `close` undoes every session, the last opened first.
    """

    def __init__(self, settings: SemgapConfig, progress: Callable[[str], None] = lambda line: None):
        self.settings, self.progress = settings, progress
        self.by_model: dict[str, ExperimentSession] = {}

    def open(self) -> "RunSessions":
        try:
            for model in self.settings.models:
                session = ExperimentSession(self.settings.for_model(model), self.progress)
                try:
                    session.open()
                except Exception as error:  # it has undone itself
                    if len(self.settings.models) > 1:  # say which model's set-up failed
                        raise RuntimeError(f"{model}: {error}") from error
                    raise
                self.by_model[model] = session
        except BaseException:
            self.close()
            raise
        return self

    @property
    def first(self) -> ExperimentSession:
        """The first model's session: where the model-free calibration runs."""
        return next(iter(self.by_model.values()))

    def of(self, model: str) -> ExperimentSession:
        """The session of `model` ("" for the run's first)."""
        return self.by_model[model] if model else self.first

    def close(self) -> None:
        with interrupts.held():
            for session in reversed(list(self.by_model.values())):
                session.close()
            self.by_model.clear()

    def conditions(self) -> dict:
        """The JSON's conditions: one session's as they are; several models' with their own under `models`."""
        each = [session.conditions() for session in self.by_model.values()]
        if len(each) == 1:
            return each[0]
        # Kept at the top too: the settings give every model the same device, dtype and server CPUs and threads.
        shared = ("device", "dtype", "server_cpus", "server_threads")
        merged = {key: value for key, value in each[0].items() if key not in PER_MODEL or key in shared}
        merged["model"] = ",".join(self.by_model)
        merged["models"] = [{key: conditions[key] for key in PER_MODEL} for conditions in each]
        merged["warnings"] = [f"{conditions['model']}: {warning}" for conditions in each
                              for warning in conditions["warnings"]]
        return merged
