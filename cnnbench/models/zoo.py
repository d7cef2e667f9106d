"""The built-in networks beside the chapter's LeNet: a ResNet-20 and a plain VGG-style net, as specs."""

from __future__ import annotations

from cnnbench.spec import (
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool2D,
    ModelSpec,
    Residual,
    spec_for,
)


def _no_dropout(model: str, dropout: float | None) -> None:
    if dropout:
        raise ValueError(f"model {model!r} has no dropout layers (use --dropout 0 or leave it out)")


def lenet(input_shape: tuple[int, int, int], num_classes: int, dropout: float | None = None) -> ModelSpec:
    """The chapter's LeNet: dropout after each pool and dense 1024 for colour inputs (0.2) unless set."""
    return spec_for(input_shape, num_classes, dropout)


def resnet20(input_shape: tuple[int, int, int], num_classes: int, dropout: float | None = None) -> ModelSpec:
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2): 3 stages of 3 basic blocks, 16/32/64 filters.

    Convolutions are 3x3 without bias, each followed by batch normalisation; the first block of stages 2 and 3
    halves the size with a stride-2 convolution and a 1x1 stride-2 projection shortcut (the paper's option B),
    then global average pooling and a dense layer.
    """
    _no_dropout("resnet20", dropout)
    return resnet(input_shape, num_classes, blocks_per_stage=3, name="resnet20")


def resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    blocks_per_stage: int = 3,
    widths: tuple[int, ...] = (16, 32, 64),
    name: str = "resnet",
) -> ModelSpec:
    """A CIFAR-style ResNet of 6 x ``blocks_per_stage`` + 2 weighted layers (see ``resnet20``)."""
    layers: list[Layer] = [
        Conv2D("conv", widths[0], 3, activation=None, use_bias=False),
        BatchNorm("bn", activation="relu"),
    ]
    channels = widths[0]
    for stage, width in enumerate(widths, start=1):
        for block in range(1, blocks_per_stage + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            prefix = f"s{stage}b{block}"
            body: tuple[Layer, ...] = (
                Conv2D(f"{prefix}_conv1", width, 3, stride=stride, activation=None, use_bias=False),
                BatchNorm(f"{prefix}_bn1", activation="relu"),
                Conv2D(f"{prefix}_conv2", width, 3, activation=None, use_bias=False),
                BatchNorm(f"{prefix}_bn2"),
            )
            shortcut: tuple[Layer, ...] = ()
            if stride != 1 or width != channels:
                shortcut = (
                    Conv2D(f"{prefix}_proj", width, 1, stride=stride, activation=None, use_bias=False),
                    BatchNorm(f"{prefix}_proj_bn"),
                )
            layers.append(Residual(prefix, body, shortcut))
            channels = width
    layers += [GlobalAvgPool("global_pool"), Dense("dense", num_classes, activation=None)]
    return ModelSpec(name, input_shape, num_classes, tuple(layers))


def vgg8(input_shape: tuple[int, int, int], num_classes: int, dropout: float | None = None) -> ModelSpec:
    """A plain VGG-style net (Simonyan & Zisserman 2015, narrowed for 32x32 inputs): three stages of two 3x3
    convolutions with ReLU (32, 64, 128 filters), each stage ending in 2x2 max pooling, then dense 256 and
    the output layer. No batch normalisation, no shortcut: depth alone."""
    _no_dropout("vgg8", dropout)
    layers: list[Layer] = []
    for stage, width in enumerate((32, 64, 128), start=1):
        layers += [
            Conv2D(f"conv{stage}a", width, 3),
            Conv2D(f"conv{stage}b", width, 3),
            MaxPool2D(f"pool{stage}"),
        ]
    layers += [Flatten(), Dense("dense1", 256), Dense("dense2", num_classes, activation=None)]
    return ModelSpec("vgg8", input_shape, num_classes, tuple(layers))
