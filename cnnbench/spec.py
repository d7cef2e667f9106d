"""Models as data: one description that every backend builds from.

Backends never restate layer sizes; they walk ``ModelSpec.layers`` (recursing into ``Residual``).
Shapes, parameter counts and FLOPs are derived here once, so a backend that disagrees with the spec
is wrong by definition (and the conformance kit says so). Conventions where frameworks differ
(SAME padding, flatten order, batch-norm momentum, epsilon and variance) are the spec's; each
backend maps them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Conv2D:
    """A 2-D convolution followed by an activation. Kernels are HWIO in canonical weights.

    SAME padding is TensorFlow's: output ceil(size / stride), the odd extra row/column after.
    """

    name: str
    filters: int
    kernel_size: int
    stride: int = 1
    padding: str = "SAME"
    activation: str | None = "relu"
    #: False for a convolution followed by batch normalisation (its beta is the bias).
    use_bias: bool = True


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


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation of each channel (the last axis), then an activation.

    Training: y = gamma * (x - mean) / sqrt(var + epsilon) + beta with the batch's mean and biased
    variance (divided by the count) over every axis but the last; after each training step
    moving = momentum * moving + (1 - momentum) * batch statistic, the biased variance included
    (Keras's and Flax's convention: PyTorch's momentum is 1 - this one and it updates the variance
    unbiased). Inference normalises with the moving statistics. Canonical weights ``NAME/gamma``,
    ``NAME/beta`` (trainable) and ``NAME/moving_mean``, ``NAME/moving_variance`` (state).
    """

    name: str
    momentum: float = 0.9
    epsilon: float = 1e-5
    activation: str | None = None


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over height and width of NHWC activations: (H, W, C) -> (C,)."""

    name: str = "global_pool"


@dataclass(frozen=True)
class Residual:
    """activation(body(x) + shortcut(x)); an empty shortcut is the identity. Layer names stay unique
    across the whole model (canonical weights are named by layer, with no prefix for the block)."""

    name: str
    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    activation: str | None = "relu"


Layer = Conv2D | MaxPool2D | Flatten | Dense | Dropout | BatchNorm | GlobalAvgPool | Residual
#: Every layer type a spec may hold, by the name ``Backend.layers`` uses.
LAYER_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Conv2D, MaxPool2D, Flatten, Dense, Dropout, BatchNorm, GlobalAvgPool, Residual)
}
#: The chapter's LeNet needs only these: what a backend implements unless it declares more.
LENET_LAYERS = frozenset({"Conv2D", "MaxPool2D", "Flatten", "Dense", "Dropout"})
#: Activations the spec knows.
ACTIVATIONS = (None, "relu")
#: Suffixes of the canonical weights that are state (updated in training, not by gradients).
STATE_SUFFIXES = ("/moving_mean", "/moving_variance")


def _same_or_valid(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "SAME":
        return math.ceil(size / stride)
    if padding == "VALID":
        return (size - window) // stride + 1
    raise ValueError(f"unknown padding {padding!r}")


@dataclass(frozen=True)
class LayerInfo:
    """What the spec derives for one layer: its input and output shapes, parameters and forward MACs.

    ``params`` counts trainable parameters (batch-norm state apart); a ``Residual`` counts its blocks'.
    """

    layer: Layer
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _conv_out(layer: Conv2D | MaxPool2D, shape: tuple[int, ...], window: int) -> tuple[int, int]:
    h, w, _ = shape
    return (
        _same_or_valid(h, window, layer.stride, layer.padding),
        _same_or_valid(w, window, layer.stride, layer.padding),
    )


def layer_infos(layers: tuple[Layer, ...], input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """Shapes, parameters and MACs of ``layers`` applied in turn to ``input_shape`` (one per layer, not nested)."""
    infos: list[LayerInfo] = []
    shape = tuple(input_shape)
    for layer in layers:
        params = macs = 0
        before = shape
        if isinstance(layer, Conv2D):
            if len(shape) != 3:
                raise ValueError(f"{layer.name}: a convolution needs (H, W, C) inputs, got {shape}")
            oh, ow = _conv_out(layer, shape, layer.kernel_size)
            channels = shape[2]
            shape = (oh, ow, layer.filters)
            params = layer.kernel_size**2 * channels * layer.filters + (layer.filters if layer.use_bias else 0)
            macs = oh * ow * layer.filters * layer.kernel_size**2 * channels
        elif isinstance(layer, MaxPool2D):
            if len(shape) != 3:
                raise ValueError(f"{layer.name}: pooling needs (H, W, C) inputs, got {shape}")
            shape = (*_conv_out(layer, shape, layer.pool_size), shape[2])
        elif isinstance(layer, Flatten):
            shape = (math.prod(shape),)
        elif isinstance(layer, Dense):
            if len(shape) != 1:
                raise ValueError(f"{layer.name}: a dense layer needs flat inputs (add Flatten or GlobalAvgPool)")
            (n_in,) = shape
            shape = (layer.units,)
            params = n_in * layer.units + layer.units
            macs = n_in * layer.units
        elif isinstance(layer, BatchNorm):
            params = 2 * shape[-1]
        elif isinstance(layer, GlobalAvgPool):
            if len(shape) != 3:
                raise ValueError(f"{layer.name}: global pooling needs (H, W, C) inputs, got {shape}")
            shape = (shape[2],)
        elif isinstance(layer, Residual):
            body = layer_infos(layer.body, shape)
            short = layer_infos(layer.shortcut, shape)
            body_out = body[-1].output_shape if body else shape
            short_out = short[-1].output_shape if short else shape
            if body_out != short_out:
                raise ValueError(f"{layer.name}: the body gives {body_out} but the shortcut {short_out}")
            shape = body_out
            params = sum(info.params for info in (*body, *short))
            macs = sum(info.macs for info in (*body, *short))
        elif isinstance(layer, Dropout):
            pass
        else:  # pragma: no cover - guarded by the Layer union
            raise TypeError(f"unknown layer {layer!r}")
        infos.append(LayerInfo(layer, before, shape, params, macs))
    return infos


def walk(layers: tuple[Layer, ...], input_shape: tuple[int, ...]) -> Iterator[LayerInfo]:
    """Every layer, a residual block's body then shortcut inside it, in order (the block itself first)."""
    for info in layer_infos(layers, input_shape):
        yield info
        if isinstance(info.layer, Residual):
            yield from walk(info.layer.body, info.input_shape)
            yield from walk(info.layer.shortcut, info.input_shape)


def has_strided_1x1_conv(spec: ModelSpec) -> bool:
    """Whether ``spec`` has a 1x1 convolution with a stride above 1 (residual blocks included): some backends
    run it differently, and say so in their settings."""
    return any(isinstance(i.layer, Conv2D) and i.layer.kernel_size == 1 and i.layer.stride > 1 for i in spec.walk())


def layer_to_dict(layer: Layer) -> dict[str, Any]:
    """A layer as JSON-able data: its type and fields (a block's layers nested)."""
    out: dict[str, Any] = {"type": type(layer).__name__}
    for field in fields(layer):
        value = getattr(layer, field.name)
        out[field.name] = [layer_to_dict(inner) for inner in value] if isinstance(value, tuple) else value
    return out


def layer_from_dict(data: dict[str, Any]) -> Layer:
    """The inverse of ``layer_to_dict``; a ValueError names what is wrong."""
    kind = data.get("type")
    cls = LAYER_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r} (known: {', '.join(LAYER_TYPES)})")
    known = {field.name for field in fields(cls)}
    unknown = set(data) - known - {"type"}
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    values = {key: value for key, value in data.items() if key != "type"}
    for key in ("body", "shortcut"):
        if key in values:
            values[key] = tuple(layer_from_dict(inner) for inner in values[key])
    layer: Layer = cls(**values)
    return layer


@dataclass(frozen=True)
class ModelSpec:
    """A CNN: input shape (H, W, C), classes and layers (a ``Residual`` holds a block of its own)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]

    def layer_infos(self) -> list[LayerInfo]:
        """One entry per top-level layer (a residual block is one entry)."""
        return layer_infos(self.layers, self.input_shape)

    def walk(self) -> list[LayerInfo]:
        """Every layer, residual blocks' contents included, in the order of ``walk``."""
        return list(walk(self.layers, self.input_shape))

    def validate(self) -> None:
        """Raise ValueError when shapes do not chain, names repeat or the output is not (num_classes,)."""
        names: set[str] = set()
        for info in self.walk():
            layer = info.layer
            if layer.name in names:
                raise ValueError(f"{self.name}: layer name {layer.name!r} is used twice")
            names.add(layer.name)
            activation = getattr(layer, "activation", None)
            if activation not in ACTIVATIONS:
                raise ValueError(f"{layer.name}: unsupported activation {activation!r}")
        if self.output_shape != (self.num_classes,):
            raise ValueError(f"{self.name}: the output is {self.output_shape}, not ({self.num_classes},)")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layer_infos()[-1].output_shape

    @property
    def num_params(self) -> int:
        """Trainable parameters (batch-norm moving statistics are counted by ``num_state``)."""
        return sum(info.params for info in self.layer_infos())

    @property
    def num_state(self) -> int:
        """Non-trainable values of the canonical weights: batch-norm moving means and variances."""
        return sum(math.prod(shape) for shape in self.state_shapes().values())

    @property
    def flops_forward(self) -> int:
        """Forward FLOPs per sample: 2 per multiply-accumulate in convolutions and dense layers.

        Batch normalisation, pooling, additions and activations are not counted (a few percent of a CNN's).
        """
        return 2 * sum(info.macs for info in self.layer_infos())

    @property
    def flops_train(self) -> int:
        """Forward + backward FLOPs per training sample (backward ~ 2x forward, the usual rule)."""
        return 3 * self.flops_forward

    @property
    def has_dropout(self) -> bool:
        return any(isinstance(info.layer, Dropout) for info in self.walk())

    @property
    def has_batch_norm(self) -> bool:
        return any(isinstance(info.layer, BatchNorm) for info in self.walk())

    def layer_types(self) -> frozenset[str]:
        """The names of the layer types this spec uses (what ``Backend.layers`` must cover)."""
        return frozenset(type(info.layer).__name__ for info in self.walk())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every canonical weight: ``conv1/kernel`` HWIO, ``dense1/kernel`` (in, out), biases, batch-norm
        gamma, beta and moving statistics. ``get_weights``/``set_weights`` carry exactly these."""
        shapes: dict[str, tuple[int, ...]] = {}
        for info in self.walk():
            layer, shape = info.layer, info.input_shape
            if isinstance(layer, Conv2D):
                shapes[f"{layer.name}/kernel"] = (layer.kernel_size, layer.kernel_size, shape[-1], layer.filters)
                if layer.use_bias:
                    shapes[f"{layer.name}/bias"] = (layer.filters,)
            elif isinstance(layer, Dense):
                shapes[f"{layer.name}/kernel"] = (shape[0], layer.units)
                shapes[f"{layer.name}/bias"] = (layer.units,)
            elif isinstance(layer, BatchNorm):
                for suffix in ("gamma", "beta", "moving_mean", "moving_variance"):
                    shapes[f"{layer.name}/{suffix}"] = (shape[-1],)
        return shapes

    def trainable_shapes(self) -> dict[str, tuple[int, ...]]:
        """The canonical weights that gradients and optimizers update."""
        return {name: shape for name, shape in self.param_shapes().items() if not is_state(name)}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The canonical weights that training updates without gradients (batch-norm moving statistics)."""
        return {name: shape for name, shape in self.param_shapes().items() if is_state(name)}

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data (what results record and ``digest`` hashes)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [layer_to_dict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """The inverse of ``to_dict``; a ValueError names what is wrong."""
        try:
            height, width, channels = (int(v) for v in data["input_shape"])
            spec = cls(
                str(data["name"]),
                (height, width, channels),
                int(data["num_classes"]),
                tuple(layer_from_dict(layer) for layer in data["layers"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a model spec: {exc}") from exc
        spec.validate()
        return spec

    def digest(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON: two runs with equal digests ran the same network."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary_rows(self) -> list[tuple[str, str, str, int]]:
        """(name, kind, output shape, params) per layer, residual blocks' contents indented, for tables and docs."""
        rows = []
        for info in self.walk():
            depth = 0 if any(info.layer is top for top in self.layers) else 1
            rows.append(
                (
                    "  " * depth + info.layer.name,
                    type(info.layer).__name__,
                    "x".join(map(str, info.output_shape)),
                    info.params,
                )
            )
        return rows


def is_state(name: str) -> bool:
    """Whether a canonical weight name is training state rather than a trainable parameter."""
    return name.endswith(STATE_SUFFIXES)


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
