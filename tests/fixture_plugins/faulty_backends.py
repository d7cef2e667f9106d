"""Backends that fail in every way a worker can: for the runner's fault-isolation tests.

Each wraps the real PyTorch backend and injects one fault, so everything else is genuine.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from cnnbench import hookimpl
from cnnbench_torch.backend import TorchBackend, TorchSession


class _FaultySession(TorchSession):
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


class FaultyBackend(TorchBackend):
    fault = ""

    def __init__(self, fault: str):
        self.fault = fault
        self.name = f"faulty-{fault}"
        self.framework = f"PyTorch with injected fault '{fault}'"

    def import_framework(self, variant=None):
        if self.fault == "import":
            raise ImportError("injected failure while importing the framework")
        super().import_framework(variant)

    session_class = _FaultySession

    def create_session(self, spec, config, variant=None):
        session = super().create_session(spec, config, variant)
        session.fault = self.fault
        return session


FAULTS = ("import", "raise", "hang", "nan", "kill")


@hookimpl
def register_backends(register):
    for fault in FAULTS:
        register(FaultyBackend(fault))
