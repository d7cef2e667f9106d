"""Backends that fail in every way a worker can: for the runner's fault-isolation tests.

Each wraps the example NumPy backend (examples/cnnbench-numpy, on the path through the `numpy_backend`
fixture) and injects one fault, so everything else is genuine and no framework is needed.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from cnnbench import hookimpl
from cnnbench_numpy.backend import NumpyBackend, NumpySession


class _FaultySession(NumpySession):
    fault = ""

    def train_batches(self, batch_indices):
        losses = super().train_batches(batch_indices)
        if self.fault == "raise":
            raise RuntimeError("injected failure in the middle of an epoch")
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "nan":
            losses = losses.copy()
            losses[-1] = np.nan
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return losses


class FaultyBackend(NumpyBackend):
    fault = ""

    def __init__(self, fault: str):
        self.fault = fault
        self.name = f"faulty-{fault}"
        self.framework = f"NumPy with injected fault '{fault}'"

    def import_framework(self, variant=None):
        if self.fault == "import":
            raise ImportError("injected failure while importing the framework")
        super().import_framework(variant)

    def create_session(self, spec, config, variant=None):
        super().create_session(spec, config, variant)  # the backend's own checks (device)
        session = _FaultySession(spec, config)
        session.fault = self.fault
        return session


FAULTS = ("import", "raise", "hang", "nan", "kill")


@hookimpl
def register_backends(register):
    for fault in FAULTS:
        register(FaultyBackend(fault))
