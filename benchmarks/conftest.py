"""Fixtures of the pytest-benchmark suite: one warmed-up session per available backend.

Not part of the default test command (pyproject's ``testpaths`` is ``tests``): run it with
``pytest benchmarks --benchmark-autosave`` and compare with
``pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:10%``.

Unlike ``cnnbench run`` (a fresh process per framework), every framework lives in this one
process: their thread pools and allocators may disturb each other. That is acceptable for
tracking one step of one framework over commits, not for ranking frameworks; select one
framework per process (``-k torch``) when that matters.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

#: Set before any framework is imported: the same threads for every backend, as the harness does.
THREADS = int(os.environ.get("CNNBENCH_BENCH_THREADS") or os.cpu_count() or 1)
N_TRAIN, N_TEST, BATCH, EVAL_BATCH = 2000, 1000, 100, 1000


def pytest_addoption(parser):
    group = parser.getgroup("cnnbench")
    group.addoption("--bench-rounds", type=int, default=30, help="Timed train steps per backend (one round each) [30].")
    group.addoption(
        "--bench-warmup", type=int, default=10, help="Untimed warm-up steps before timing (compile, JIT, caches) [10]."
    )


def _train_config():
    from cnnbench.config import TrainConfig

    return TrainConfig(threads=THREADS, batch_size=BATCH, eval_batch_size=EVAL_BATCH, device="cpu").validate()


def _registry():
    from cnnbench.plugins import load_registry

    return load_registry()


def pytest_configure(config):
    """Thread and framework environment variables, set once before any framework import."""
    from cnnbench.runner import harness_environment

    train = _train_config()
    wanted = dict(harness_environment(train, "system")[0])
    wanted.pop("LD_PRELOAD", None)  # the allocator cannot change in a running process
    registry = _registry()
    for name, registered in sorted(registry.backends.items()):
        backend = registered.item
        if backend.unavailable_reason():
            continue
        variant = backend.variants[0] if backend.variants else None
        for key, value in backend.process_environment(variant, train).items():
            if key in wanted and wanted[key] != value:
                warnings.warn(
                    f"{name} wants {key}={value}, another backend {wanted[key]}; keeping the first", stacklevel=2
                )
                continue
            wanted[key] = value
    for key, value in wanted.items():
        os.environ.setdefault(key, value)


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        names = sorted(_registry().backends)
        metafunc.parametrize("backend_name", names, ids=names, scope="session")


class BenchSession:
    """A backend's session with the synthetic data loaded and a stream of training batches."""

    batch, eval_batch = BATCH, EVAL_BATCH

    def __init__(self, name: str):
        from cnnbench import preprocess
        from cnnbench.config import DataConfig
        from cnnbench.initializers import initial_weights
        from cnnbench.spec import spec_for

        registry = _registry()
        self.backend = registry.backend(name).item
        reason = self.backend.unavailable_reason()
        if reason:
            pytest.skip(f"{name} unavailable: {reason}")
        self.variant = self.backend.variants[0] if self.backend.variants else None
        train = _train_config()
        dataset = registry.dataset("synthetic").item
        data = preprocess.prepare(
            dataset.load(DataConfig(dataset="synthetic", options={"n_train": N_TRAIN, "n_test": N_TEST})),
            DataConfig(dataset="synthetic"),
        )
        spec = spec_for(dataset.input_shape, dataset.num_classes, train.dropout)
        self.backend.import_framework(self.variant)
        self.session = self.backend.create_session(spec, train, self.variant)
        self.session.set_weights(initial_weights(spec, train.init, train.seed))
        self.session.load_data(data.x_train, data.y_train, data.x_test, data.y_test)
        self.session.sync()
        self._order = np.random.default_rng(0).permutation(N_TRAIN)
        self._next = 0

    def next_batch(self) -> np.ndarray:
        """The next batch of a shuffled epoch, shaped [1, BATCH] as ``train_batches`` takes it."""
        if self._next + BATCH > N_TRAIN:
            self._next = 0
        rows = self._order[self._next : self._next + BATCH]
        self._next += BATCH
        return rows.reshape(1, BATCH).astype(np.int64)

    def info(self) -> dict:
        return {
            "framework": self.backend.framework,
            "framework_version": self.backend.framework_version(self.variant),
            "device": self.session.device,
            "threads": THREADS,
            "in_one_process_with_other_frameworks": True,
        }


@pytest.fixture(scope="session")
def bench_session(backend_name):
    bench = BenchSession(backend_name)
    yield bench
    bench.session.close()


@pytest.fixture
def rounds(request) -> tuple[int, int]:
    return request.config.getoption("--bench-rounds"), request.config.getoption("--bench-warmup")
