"""A well-formed backend and dataset that never run: the raw material of the plugin-loading fixtures.

Not a plugin itself (no hooks). Nothing here imports a framework.
"""

from __future__ import annotations

from typing import Any

from cnnbench.backend import Backend, BackendUnavailable, Session
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.datasets.base import Dataset, DatasetArrays
from cnnbench.errors import DatasetError
from cnnbench.spec import ModelSpec


class StubBackend(Backend):
    """Has everything a backend must have; cannot train."""

    framework = "Stub"

    def __init__(self, name: str = "stub", **attributes: Any) -> None:
        self.name = name
        for key, value in attributes.items():
            setattr(self, key, value)

    def unavailable_reason(self) -> str | None:
        return "a test stub"

    def framework_version(self, variant: str | None = None) -> str:
        return "0"

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        raise BackendUnavailable("a test stub cannot train")


class StubDataset(Dataset):
    """Has everything a dataset must have; holds no data."""

    description = "a test stub"
    input_shape = (28, 28, 1)
    class_names = ("a", "b")

    def __init__(self, name: str = "stub-data", **attributes: Any) -> None:
        self.name = name
        for key, value in attributes.items():
            setattr(self, key, value)

    def load(self, config: DataConfig) -> DatasetArrays:
        raise DatasetError(f"{self.name}: a test stub has no data")
