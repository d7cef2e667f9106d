"""Backends that break the contract on purpose, to prove the conformance kit catches them.

Each is the PyTorch backend with one fault, so everything else about it is right and the kit's
message must point at that fault alone. Module-level classes: the kit's worker run imports them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cnnbench.spec import Conv2D, ModelSpec
from cnnbench_torch.backend import TorchBackend, TorchSession


def torch_settings_applied(backend: TorchBackend, spec: ModelSpec, config) -> None:
    """The PyTorch backend's thread and device settings, which live in its create_session."""
    TorchBackend.create_session(backend, spec, config).close()


class WrongParameterCountBackend(TorchBackend):
    """Builds conv1 with 33 filters instead of the spec's 32: 3,256,000-odd parameters, not 3,255,914."""

    name = "bad-parameter-count"

    def create_session(self, spec: ModelSpec, config, variant=None):
        torch_settings_applied(self, spec, config)
        layers = tuple(replace(layer, filters=layer.filters + 1) if isinstance(layer, Conv2D) and layer.name == "conv1" else layer for layer in spec.layers)
        return TorchSession(replace(spec, layers=layers), config)


class ShufflingSession(TorchSession):
    """Reorders the rows of every train_batches call with its own seeded RNG, as a DataLoader(shuffle=True) would."""

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        order = np.random.default_rng(self.config.seed + len(batch_indices)).permutation(len(batch_indices))
        return super().train_batches(np.asarray(batch_indices)[order])


class BatchOrderIgnoringBackend(TorchBackend):
    name = "bad-batch-order"

    def create_session(self, spec: ModelSpec, config, variant=None):
        torch_settings_applied(self, spec, config)
        return ShufflingSession(spec, config)


class ContiguousBatchesSession(TorchSession):
    """Ignores the indices and trains on consecutive slices of the training set."""

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        n_batches, batch_size = np.shape(batch_indices)
        self._cursor = getattr(self, "_cursor", 0)
        rows = []
        for _ in range(n_batches):
            start = self._cursor % (len(self.y_train) - batch_size + 1)
            rows.append(np.arange(start, start + batch_size))
            self._cursor += batch_size
        return super().train_batches(np.stack(rows).astype(np.int64))


class IndexIgnoringBackend(TorchBackend):
    name = "bad-indices"

    def create_session(self, spec: ModelSpec, config, variant=None):
        torch_settings_applied(self, spec, config)
        return ContiguousBatchesSession(spec, config)


class ChannelsFirstFlattenSession(TorchSession):
    """Flattens in PyTorch's natural (C, H, W) order instead of the spec's (H, W, C)."""

    def __init__(self, spec: ModelSpec, config):
        super().__init__(spec, config)
        from torch import nn

        for index, module in enumerate(self.model):
            if type(module).__name__ == "NHWCFlatten":
                self.model[index] = nn.Flatten()


class WrongFlattenBackend(TorchBackend):
    name = "bad-flatten"

    def create_session(self, spec: ModelSpec, config, variant=None):
        torch_settings_applied(self, spec, config)
        return ChannelsFirstFlattenSession(spec, config)


class MissingFrameworkBackend(TorchBackend):
    """Says its framework is missing: the kit must skip it with this reason, not fail."""

    name = "bad-missing"

    def unavailable_reason(self):
        return "moonlib is not installed (pip install moonlib)"
