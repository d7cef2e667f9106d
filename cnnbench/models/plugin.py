"""The built-in models, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from collections.abc import Callable

from cnnbench.hookspecs import hookimpl
from cnnbench.models import Model, zoo


@hookimpl
def register_models(register: Callable[[Model], None]) -> None:
    register(Model("lenet", "the chapter's LeNet (dropout 0.2 on colour inputs)", zoo.lenet))
    register(Model("resnet20", "ResNet-20: batch norm, residual blocks, stride-2 convs, global pooling", zoo.resnet20))
    register(Model("vgg8", "a plain VGG-style net: six 3x3 convs, three pools, two dense layers", zoo.vgg8))
