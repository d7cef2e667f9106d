"""MNIST and Fashion-MNIST: four IDX files each (raw or .gz), same names, different content."""

from __future__ import annotations

import numpy as np

from cnnbench.datasets.checksums import CanonicalFile
from cnnbench.datasets.files import Download, FileDataset
from cnnbench.datasets.idx import parse_idx_pair

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
IDX_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
#: Decompressed sizes, the same for MNIST and Fashion-MNIST.
IDX_SIZES = {TRAIN_IMAGES: 47_040_016, TRAIN_LABELS: 60_008, TEST_IMAGES: 7_840_016, TEST_LABELS: 10_008}


def idx_downloads(*base_urls: str) -> tuple[Download, ...]:
    """One .gz download per IDX file, from each base URL in turn."""
    return tuple(Download(f"{name}.gz", tuple(f"{base}{name}.gz" for base in base_urls)) for name in IDX_NAMES)


class IdxDataset(FileDataset):
    """A dataset stored as the four MNIST-layout IDX files."""

    input_shape = (28, 28, 1)
    n_train, n_test = 60_000, 10_000

    def parse(self, content: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x_train, y_train = parse_idx_pair(
            content[TRAIN_IMAGES], content[TRAIN_LABELS], (TRAIN_IMAGES, TRAIN_LABELS), self.input_shape
        )
        x_test, y_test = parse_idx_pair(
            content[TEST_IMAGES], content[TEST_LABELS], (TEST_IMAGES, TEST_LABELS), self.input_shape
        )
        return x_train, y_train, x_test, y_test


class MNIST(IdxDataset):
    name = "mnist"
    description = "MNIST handwritten digits, 60,000 train + 10,000 test, 28x28 grayscale (CC BY-SA 3.0)"
    class_names = tuple(str(i) for i in range(10))
    folder_names = ("mnist", "MNIST")
    homepage = "http://yann.lecun.com/exdb/mnist/"
    files = (
        CanonicalFile(
            TRAIN_IMAGES, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", IDX_SIZES[TRAIN_IMAGES]
        ),
        CanonicalFile(
            TRAIN_LABELS, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", IDX_SIZES[TRAIN_LABELS]
        ),
        CanonicalFile(
            TEST_IMAGES, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", IDX_SIZES[TEST_IMAGES]
        ),
        CanonicalFile(
            TEST_LABELS, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", IDX_SIZES[TEST_LABELS]
        ),
    )
    downloads = idx_downloads(
        "http://yann.lecun.com/exdb/mnist/",  # official (often refuses scripted downloads)
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
    )


class FashionMNIST(IdxDataset):
    name = "fashion-mnist"
    description = "Fashion-MNIST (Zalando Research), 60,000 train + 10,000 test, 28x28 grayscale (MIT)"
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    folder_names = ("fashion-mnist", "fashion_mnist", "FashionMNIST")
    homepage = "https://github.com/zalandoresearch/fashion-mnist"
    # sha256 of the decompressed official files (computed from Debian's dataset-fashion-mnist,
    # whose .gz files are re-compressed but decompress to the official bytes).
    files = (
        CanonicalFile(
            TRAIN_IMAGES, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", IDX_SIZES[TRAIN_IMAGES]
        ),
        CanonicalFile(
            TRAIN_LABELS, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", IDX_SIZES[TRAIN_LABELS]
        ),
        CanonicalFile(
            TEST_IMAGES, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", IDX_SIZES[TEST_IMAGES]
        ),
        CanonicalFile(
            TEST_LABELS, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", IDX_SIZES[TEST_LABELS]
        ),
    )
    downloads = idx_downloads(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # official
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras' mirror
    )
