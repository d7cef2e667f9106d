"""Backends slowed by a known fraction: the injected regression that tests and measures ``cnnbench ab``.

``delayed-numpy`` wraps the example NumPy backend (examples/cnnbench-numpy on the path),
``delayed-torch`` the built-in PyTorch one. After each ``train_batches`` call the session spins
on the clock for ``$CNNBENCH_INJECTED_DELAY`` (a fraction, e.g. 0.1) times that call's own
duration, so training takes that fraction longer whatever the machine's speed or load: a 0.1 delay
is a 10% longer step, i.e. throughput divided by 1.1. It spins rather than sleeps: a sleeping
process waits for a CPU when it wakes, so on a loaded machine a sleep costs more than its length.
Unset or 0, the backend is the wrapped one plus a clock read, so an A/A pair runs identical code on
both sides. Load with ``CNNBENCH_PLUGIN_MODULES=delayed_backends``
and this folder on PYTHONPATH (the ``fixture_plugins`` fixture does both).
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import numpy as np

from cnnbench import hookimpl
from cnnbench.errors import UsageError

DELAY_ENV = "CNNBENCH_INJECTED_DELAY"


def injected_delay() -> float:
    """The fraction from the environment; a bad value is the user's error, not a silent 0."""
    text = os.environ.get(DELAY_ENV, "").strip() or "0"
    try:
        fraction = float(text)
    except ValueError:
        raise UsageError(f"${DELAY_ENV}={text!r}: give a fraction such as 0.1") from None
    if not 0 <= fraction < 10:
        raise UsageError(f"${DELAY_ENV} must be in [0, 10), got {fraction}")
    return fraction


def delayed(backend_class: type, label: str) -> type:
    """A subclass of ``backend_class`` whose sessions sleep the injected fraction of each training call."""

    class Delayed(backend_class):  # type: ignore[misc, valid-type]
        name = f"delayed-{label}"

        def __init__(self) -> None:
            super().__init__()
            self.name = f"delayed-{label}"
            self.framework = f"{self.framework} with an injected delay (${DELAY_ENV})"

        def create_session(self, spec: Any, config: Any, variant: str | None = None) -> Any:
            session = super().create_session(spec, config, variant)
            fraction = injected_delay()
            inner = session.train_batches

            def train_batches(batch_indices: np.ndarray) -> np.ndarray:
                start = time.perf_counter()
                losses = inner(batch_indices)
                session.sync()  # the delay is a share of the finished work, also on asynchronous devices
                if fraction:
                    until = time.perf_counter() + fraction * (time.perf_counter() - start)
                    while time.perf_counter() < until:  # busy, like the extra work of a real regression
                        pass
                return losses

            session.train_batches = train_batches
            original_settings = session.settings
            session.settings = lambda: {**original_settings(), "injected_delay": fraction}
            return session

    Delayed.__name__ = f"Delayed{backend_class.__name__}"
    return Delayed


@hookimpl
def register_backends(register: Any) -> None:
    if importlib.util.find_spec("cnnbench_numpy") is not None:
        from cnnbench_numpy.backend import NumpyBackend

        register(delayed(NumpyBackend, "numpy")())
    from cnnbench_torch.backend import TorchBackend

    register(delayed(TorchBackend, "torch")())
