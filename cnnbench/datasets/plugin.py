"""The built-in datasets, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from collections.abc import Callable

from cnnbench.datasets.base import Dataset
from cnnbench.datasets.cifar10 import CIFAR10
from cnnbench.datasets.mnist import MNIST, FashionMNIST
from cnnbench.datasets.synthetic import Synthetic, SyntheticCifar
from cnnbench.hookspecs import hookimpl


@hookimpl
def register_datasets(register: Callable[[Dataset], None]) -> None:
    for dataset in (MNIST(), FashionMNIST(), CIFAR10(), Synthetic(), SyntheticCifar()):
        register(dataset)
