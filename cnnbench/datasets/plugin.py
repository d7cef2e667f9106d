"""The built-in datasets, registered through the same hook a third-party plugin uses."""

from cnnbench.datasets.cifar10 import CIFAR10
from cnnbench.datasets.mnist import MNIST, FashionMNIST
from cnnbench.datasets.synthetic import Synthetic, SyntheticCifar
from cnnbench.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    for dataset in (MNIST(), FashionMNIST(), CIFAR10(), Synthetic(), SyntheticCifar()):
        register(dataset)
