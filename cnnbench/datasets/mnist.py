"""MNIST-style datasets: four IDX files (raw or .gz) found in a data folder."""

from __future__ import annotations

import os
from pathlib import Path

from cnnbench.config import DataConfig
from cnnbench.datasets.base import Dataset, DatasetArrays
from cnnbench.datasets.idx import load_idx_pair
from cnnbench.errors import DatasetError

DATA_DIR_ENV = "CNNBENCH_DATA_DIR"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def data_roots(config: DataConfig) -> list[Path]:
    """Folders searched, in order: ``--data-dir``, then ``$CNNBENCH_DATA_DIR``."""
    roots = []
    if config.data_dir:
        roots.append(Path(config.data_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV):
        roots.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    return roots


def find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


class IdxDataset(Dataset):
    """A dataset stored as the four MNIST IDX files, in ``<root>/<name>/`` or ``<root>/``."""

    folder_names: tuple[str, ...] = ()

    def candidate_folders(self, config: DataConfig) -> list[Path]:
        folders = []
        for root in data_roots(config):
            folders += [root / name for name in self.folder_names] + [root]
        return folders

    def find_folder(self, config: DataConfig) -> Path | None:
        for folder in self.candidate_folders(config):
            if all(find_file(folder, name) for name in IDX_FILES.values()):
                return folder
        return None

    def load(self, config: DataConfig) -> DatasetArrays:
        folder = self.find_folder(config)
        if folder is None:
            searched = ", ".join(str(f) for f in self.candidate_folders(config)) or f"nothing (set --data-dir or ${DATA_DIR_ENV})"
            files = ", ".join(f"{n}[.gz]" for n in IDX_FILES.values())
            raise DatasetError(f"{self.name}: files not found; put {files} in one of: {searched}")
        x_train, y_train = load_idx_pair(find_file(folder, IDX_FILES["train_images"]), find_file(folder, IDX_FILES["train_labels"]), self.input_shape)
        x_test, y_test = load_idx_pair(find_file(folder, IDX_FILES["test_images"]), find_file(folder, IDX_FILES["test_labels"]), self.input_shape)
        return DatasetArrays(x_train, y_train, x_test, y_test, source=str(folder))

    def status(self, config: DataConfig) -> dict:
        folder = self.find_folder(config)
        return {"location": str(folder) if folder else "missing", "available": folder is not None}


class MNIST(IdxDataset):
    name = "mnist"
    description = "MNIST handwritten digits, 60,000 train + 10,000 test, 28x28 grayscale"
    input_shape = (28, 28, 1)
    class_names = tuple(str(i) for i in range(10))
    folder_names = ("mnist",)


class FashionMNIST(IdxDataset):
    name = "fashion-mnist"
    description = "Fashion-MNIST (Zalando), 60,000 train + 10,000 test, 28x28 grayscale"
    input_shape = (28, 28, 1)
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    folder_names = ("fashion-mnist",)
