"""The seeded inputs of the checks: images, labels and batch rows that a backend cannot guess."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.conformance.outcome import Array
from cnnbench.datasets.base import DatasetArrays
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.preprocess import PreparedData, prepare
from cnnbench.spec import Dropout, Layer, ModelSpec, Residual, spec_for

DEFAULT_BATCH = 16
DEFAULT_STEPS = 3
#: Batch rows the kit's step, reset and Adam probe checks take.
CHECK_ROWS = 3

#: The two model variants every backend must build in the kit: (input shape, classes). "cifar" has dropout 0.2.
MODELS: dict[str, tuple[tuple[int, int, int], int]] = {"mnist": ((28, 28, 1), 10), "cifar": ((32, 32, 3), 10)}
N_TRAIN, N_TEST = 512, 256
#: Synthetic images for the kit: class template plus this much noise, standardised (learnable in a few dozen steps).
NOISE = 0.3


@dataclass(frozen=True)
class CheckData:
    """Seeded images: one batch for the forward checks (also the test set), a training set for steps."""

    x_batch: Array
    y_batch: Array
    x_train: Array
    y_train: Array
    #: int64 [steps, batch]: rows of a seeded permutation, so a backend that ignores indices fails.
    step_indices: Array


def make_check_data(
    spec: ModelSpec, seed: int = 0, batch: int = DEFAULT_BATCH, steps: int = DEFAULT_STEPS
) -> CheckData:
    """Images in [0, 1] as the harness scales them; some training images are never used, so indices matter."""

    def images(n: int, data_seed: int) -> tuple[Array, Array]:
        x, y = make_synthetic(n, spec.input_shape, spec.num_classes, data_seed)
        return x.astype(np.float32) * np.float32(1 / 255), y

    x_batch, y_batch = images(batch, seed + 7919)
    n_train = batch * steps + batch // 2
    x_train, y_train = images(n_train, seed + 104729)
    order = np.random.default_rng(seed).permutation(n_train)[: batch * steps]
    return CheckData(x_batch, y_batch, x_train, y_train, order.reshape(steps, batch).astype(np.int64))


def without_dropout(spec: ModelSpec) -> ModelSpec:
    """The spec with its Dropout layers removed (residual blocks' too): same weights, deterministic training steps."""
    return replace(spec, layers=_without_dropout(spec.layers))


def _without_dropout(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    kept: list[Layer] = []
    for layer in layers:
        if isinstance(layer, Residual):
            layer = replace(layer, body=_without_dropout(layer.body), shortcut=_without_dropout(layer.shortcut))
        if not isinstance(layer, Dropout):
            kept.append(layer)
    return tuple(kept)


def _split(model: str) -> tuple[str, str]:
    """A kit model id: "mnist" or "cifar" (the chapter's LeNet), or "NAME:mnist" / "NAME:cifar" (a registered model)."""
    name, _, shape = model.rpartition(":")
    if shape not in MODELS:
        raise KeyError(f"unknown kit model {model!r}: use mnist, cifar or NAME:mnist / NAME:cifar")
    return name, shape


def model_spec(model: str) -> ModelSpec:
    """The kit's spec for "mnist" or "cifar" (the harness's own LeNet variant, dropout included), or for a
    registered model on one of those shapes ("resnet20:cifar")."""
    name, key = _split(model)
    shape, classes = MODELS[key]
    if not name:
        return spec_for(shape, classes)
    from cnnbench.plugins import load_registry

    return load_registry().spec(name, shape, classes)


@cache
def synthetic_data(model: str) -> PreparedData:
    """Tiny learnable data through the harness's own preprocessing (float32 NHWC, standardised; int64 labels)."""
    shape, classes = MODELS[_split(model)[1]]
    x_train, y_train = make_synthetic(N_TRAIN, shape, classes, seed=11, noise=NOISE)
    x_test, y_test = make_synthetic(N_TEST, shape, classes, seed=12, noise=NOISE)
    return prepare(DatasetArrays(x_train, y_train, x_test, y_test), DataConfig(standardize=True))
