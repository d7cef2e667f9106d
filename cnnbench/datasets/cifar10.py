"""CIFAR-10 from its official *binary* version (``cifar-10-binary.tar.gz`` or ``cifar-10-batches-bin/``).

Never the "python version": those batches are pickles, and unpickling a downloaded file can run
arbitrary code. A binary batch is a run of 3,073-byte records: one label byte, then the 32x32
red, green and blue planes (1,024 bytes each, row-major).
"""

from __future__ import annotations

import numpy as np

from cnnbench.datasets.checksums import CanonicalFile
from cnnbench.datasets.files import Download, FileDataset
from cnnbench.errors import DatasetError

HEIGHT = WIDTH = 32
CHANNELS = 3
RECORD_BYTES = 1 + HEIGHT * WIDTH * CHANNELS
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
META_FILE = "batches.meta.txt"
BATCH_BYTES = 10_000 * RECORD_BYTES


def parse_batch(data: bytes, name: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from one binary batch file's bytes."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DatasetError(
            f"{name}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR records"
            " (truncated or not a CIFAR-10 binary batch)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if int(labels.max()) >= num_classes:
        raise DatasetError(
            f"{name}: label byte {int(labels.max())} out of range 0..{num_classes - 1} (not a CIFAR-10 binary batch)"
        )
    images = records[:, 1:].reshape(-1, CHANNELS, HEIGHT, WIDTH).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def parse_class_names(data: bytes, name: str = META_FILE) -> tuple[str, ...]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: not a text file of class names") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class CIFAR10(FileDataset):
    name = "cifar10"
    description = "CIFAR-10 (Krizhevsky 2009), 50,000 train + 10,000 test, 32x32 colour, binary version"
    input_shape = (HEIGHT, WIDTH, CHANNELS)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    n_train, n_test = 50_000, 10_000
    folder_names = ("cifar10", "cifar-10", "CIFAR10", "CIFAR-10")
    content_folders = ("cifar-10-batches-bin",)
    homepage = "https://www.cs.toronto.edu/~kriz/cifar.html"
    files = (
        CanonicalFile(
            "data_batch_1.bin", "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5", BATCH_BYTES
        ),
        CanonicalFile(
            "data_batch_2.bin", "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed", BATCH_BYTES
        ),
        CanonicalFile(
            "data_batch_3.bin", "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67", BATCH_BYTES
        ),
        CanonicalFile(
            "data_batch_4.bin", "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48", BATCH_BYTES
        ),
        CanonicalFile(
            "data_batch_5.bin", "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add", BATCH_BYTES
        ),
        CanonicalFile(TEST_BATCH, "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b", BATCH_BYTES),
        CanonicalFile(META_FILE, "558e74b5e208382e186da55784b4bac2cd52e558448e1b5800990fdb28ed8033", 61),
    )
    # No mirror of the binary version is known; other mirrors serve the pickled python version.
    downloads = (Download("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)),)

    def parse(self, content: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        names = parse_class_names(content[META_FILE])
        if names != self.class_names:
            raise DatasetError(f"{META_FILE}: class names {', '.join(names)} differ from CIFAR-10's")
        train = [parse_batch(content[name], name, self.num_classes) for name in TRAIN_BATCHES]
        x_test, y_test = parse_batch(content[TEST_BATCH], TEST_BATCH, self.num_classes)
        x_train = np.concatenate([x for x, _ in train])
        y_train = np.concatenate([y for _, y in train])
        return x_train, y_train, x_test, y_test
