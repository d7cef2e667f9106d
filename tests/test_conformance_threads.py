"""Threads honoured: measured CPU time over wall time, recorded beside the threads requested, and judged."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cnnbench.config import DataConfig, TrainConfig
from cnnbench.conformance.threads import ThreadUse, measure_threads, threads_disagreement
from cnnbench.plugins import load_registry
from cnnbench.runner import BackendTarget, RunOptions, run_benchmark


def test_measure_threads_counts_cpu_and_wall_time():
    with measure_threads() as busy:
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:
            np.sqrt(np.arange(1000.0))
    assert busy.wall_s >= 0.2 and 0 < busy.cpu_s <= busy.wall_s * 1.2
    with measure_threads() as idle:
        time.sleep(0.2)
    assert idle.used is not None and idle.used < 0.5
    assert ThreadUse().used is None


@pytest.mark.parametrize(
    ("requested", "used", "cores", "complaint"),
    [
        (1, 1.0, 2, ""),
        (1, 1.4, 2, ""),
        (1, 2.0, 4, "asked for 1 thread, the training call kept 2.0 busy"),
        (2, 1.0, 2, "asked for 2 threads, the training call kept 1.0 busy"),
        (2, 1.8, 2, ""),
        (None, 1.0, 4, "asked for 4 threads"),
        (8, 3.5, 4, ""),  # more threads than cores cannot all be busy
        (1, None, 2, ""),
    ],
)
def test_threads_disagreement(requested, used, cores, complaint):
    found = threads_disagreement(requested, used, cores)
    assert (complaint in found) if complaint else found == ""


def test_the_run_records_threads_used_beside_threads_requested(numpy_backend, tmp_path):
    registry = load_registry()
    train = TrainConfig(epochs=1, batch_size=50, threads=1, warmup_steps=2)
    data = DataConfig(dataset="synthetic", options={"n_train": 400, "n_test": 100})
    result, _ = run_benchmark(
        [BackendTarget(numpy_backend)], registry, train, data, RunOptions(timeout_s=300, results_dir=str(tmp_path))
    )
    settings = result.backends[0].settings
    assert settings["threads_requested"] == 1
    assert isinstance(settings["threads_used"], float) and 0 < settings["threads_used"] <= 2.5
