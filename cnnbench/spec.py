"""The LeNet as data: one description that every backend builds from.

Backends never restate layer sizes; they walk ``ModelSpec.layers``. Shapes, parameter
counts and FLOPs are derived here once, so a backend that disagrees with the spec is wrong
by definition (and the conformance kit says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv2D:
    """A 2-D convolution followed by an activation. Kernels are HWIO in canonical weights."""

    name: str
    filters: int
    kernel_size: int
    stride: int = 1
    padding: str = "SAME"
    activation: str = "relu"


@dataclass(frozen=True)
class MaxPool2D:
    name: str
    pool_size: int = 2
    stride: int = 2
    padding: str = "VALID"


@dataclass(frozen=True)
class Flatten:
    """Flattens NHWC activations in (H, W, C) order: the canonical order every backend matches."""

    name: str = "flatten"


@dataclass(frozen=True)
class Dense:
    """A fully connected layer; kernel shape (in, out) in canonical weights."""

    name: str
    units: int
    activation: str | None = "relu"


@dataclass(frozen=True)
class Dropout:
    """Drops units with probability ``rate`` in training only (rate = 1 - keep probability)."""

    name: str
    rate: float


Layer = Conv2D | MaxPool2D | Flatten | Dense | Dropout


def _same_or_valid(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "SAME":
        return math.ceil(size / stride)
    if padding == "VALID":
        return (size - window) // stride + 1
    raise ValueError(f"unknown padding {padding!r}")


@dataclass(frozen=True)
class LayerInfo:
    """What the spec derives for one layer: its output shape, parameters and forward MACs."""

    layer: Layer
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelSpec:
    """A sequential CNN: input shape (H, W, C), classes and layers."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]

    def layer_infos(self) -> list[LayerInfo]:
        infos: list[LayerInfo] = []
        shape: tuple[int, ...] = self.input_shape
        for layer in self.layers:
            params = macs = 0
            if isinstance(layer, Conv2D):
                h, w, c = shape
                oh = _same_or_valid(h, layer.kernel_size, layer.stride, layer.padding)
                ow = _same_or_valid(w, layer.kernel_size, layer.stride, layer.padding)
                shape = (oh, ow, layer.filters)
                params = layer.kernel_size**2 * c * layer.filters + layer.filters
                macs = oh * ow * layer.filters * layer.kernel_size**2 * c
            elif isinstance(layer, MaxPool2D):
                h, w, c = shape
                shape = (
                    _same_or_valid(h, layer.pool_size, layer.stride, layer.padding),
                    _same_or_valid(w, layer.pool_size, layer.stride, layer.padding),
                    c,
                )
            elif isinstance(layer, Flatten):
                shape = (math.prod(shape),)
            elif isinstance(layer, Dense):
                (n_in,) = shape
                shape = (layer.units,)
                params = n_in * layer.units + layer.units
                macs = n_in * layer.units
            elif isinstance(layer, Dropout):
                pass
            else:  # pragma: no cover - guarded by the Layer union
                raise TypeError(f"unknown layer {layer!r}")
            infos.append(LayerInfo(layer, shape, params, macs))
        return infos

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layer_infos()[-1].output_shape

    @property
    def num_params(self) -> int:
        return sum(info.params for info in self.layer_infos())

    @property
    def flops_forward(self) -> int:
        """Forward FLOPs per sample: 2 per multiply-accumulate in convs and dense layers."""
        return 2 * sum(info.macs for info in self.layer_infos())

    @property
    def flops_train(self) -> int:
        """Forward + backward FLOPs per training sample (backward ~ 2x forward, the usual rule)."""
        return 3 * self.flops_forward

    @property
    def has_dropout(self) -> bool:
        return any(isinstance(layer, Dropout) for layer in self.layers)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight names and shapes: ``conv1/kernel`` HWIO, ``dense1/kernel`` (in, out)."""
        shapes: dict[str, tuple[int, ...]] = {}
        shape: tuple[int, ...] = self.input_shape
        for info in self.layer_infos():
            layer = info.layer
            if isinstance(layer, Conv2D):
                shapes[f"{layer.name}/kernel"] = (layer.kernel_size, layer.kernel_size, shape[-1], layer.filters)
                shapes[f"{layer.name}/bias"] = (layer.filters,)
            elif isinstance(layer, Dense):
                shapes[f"{layer.name}/kernel"] = (shape[0], layer.units)
                shapes[f"{layer.name}/bias"] = (layer.units,)
            shape = info.output_shape
        return shapes

    def summary_rows(self) -> list[tuple[str, str, str, int]]:
        """(name, kind, output shape, params) per layer, for tables and docs."""
        return [
            (info.layer.name, type(info.layer).__name__, "x".join(map(str, info.output_shape)), info.params)
            for info in self.layer_infos()
        ]


def lenet(input_shape: tuple[int, int, int], num_classes: int = 10, dropout: float | None = None) -> ModelSpec:
    """The chapter's LeNet. With ``dropout`` set, dropout follows each pool and dense 1024."""
    layers: list[Layer] = [
        Conv2D("conv1", filters=32, kernel_size=4),
        MaxPool2D("pool1"),
    ]
    if dropout:
        layers.append(Dropout("dropout1", dropout))
    layers += [Conv2D("conv2", filters=64, kernel_size=4), MaxPool2D("pool2")]
    if dropout:
        layers.append(Dropout("dropout2", dropout))
    layers += [Flatten(), Dense("dense1", units=1024)]
    if dropout:
        layers.append(Dropout("dropout3", dropout))
    layers.append(Dense("dense2", units=num_classes, activation=None))
    variant = "lenet" + ("-dropout" if dropout else "")
    height, width, channels = input_shape  # a list (from JSON) becomes the tuple a frozen spec compares by
    return ModelSpec(variant, (height, width, channels), num_classes, tuple(layers))


#: The MNIST variant (3,255,914 parameters).
MNIST_LENET = lenet((28, 28, 1))
#: The CIFAR-10 variant with the chapter's dropout (keep probability 0.8): 4,239,978 parameters.
CIFAR_LENET = lenet((32, 32, 3), dropout=0.2)

#: Default dropout for colour (CIFAR-shaped) inputs, as in the chapter.
DEFAULT_COLOUR_DROPOUT = 0.2


def spec_for(input_shape: tuple[int, int, int], num_classes: int, dropout: float | None = None) -> ModelSpec:
    """The variant for a dataset: grayscale inputs get no dropout, colour inputs the chapter's 0.2.

    An explicit ``dropout`` (0 disables) overrides the default.
    """
    if dropout is None:
        dropout = DEFAULT_COLOUR_DROPOUT if input_shape[-1] == 3 else 0.0
    return lenet(input_shape, num_classes, dropout or None)
