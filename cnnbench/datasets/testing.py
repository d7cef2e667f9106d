"""Builders of small files in the official formats, for tests (ours and dataset plugin authors').

Real datasets are large and cannot ship with the tests; these write tiny, valid IDX files,
CIFAR-10 binary batches and tar archives (or deliberately broken ones), declare a dataset with
their real sha256, and serve them from a local HTTP server to exercise downloads.
"""

from __future__ import annotations

import bz2
import gzip
import http.server
import io
import lzma
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnnbench.datasets.checksums import CanonicalFile, sha256_hex
from cnnbench.datasets.cifar10 import CIFAR10, META_FILE, TEST_BATCH, TRAIN_BATCHES
from cnnbench.datasets.files import Download
from cnnbench.datasets.mnist import IDX_NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, IdxDataset


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file holding ``array`` (uint8 by default)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_idx_content(
    n_train: int = 60, n_test: int = 20, seed: int = 0, shape: tuple[int, int] = (28, 28)
) -> dict[str, bytes]:
    """The four canonical MNIST-layout files for a small random dataset, every class present."""
    rng = np.random.default_rng(seed)
    content = {}
    for images, labels, n in ((TRAIN_IMAGES, TRAIN_LABELS, n_train), (TEST_IMAGES, TEST_LABELS, n_test)):
        content[images] = idx_bytes(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
        content[labels] = idx_bytes((np.arange(n) % 10).astype(np.uint8))
    return content


def write_files(folder: Path, content: dict[str, bytes], compress: bool = True) -> list[Path]:
    """Write each file into ``folder`` (as ``name.gz`` when ``compress``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in content.items():
        path = folder / (f"{name}.gz" if compress else name)
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        paths.append(path)
    return paths


def tiny_idx_dataset(
    content: dict[str, bytes], name: str = "tiny-mnist", base_urls: tuple[str, ...] = (), checksums: bool = True
) -> IdxDataset:
    """An MNIST-layout dataset declaring ``content``'s sha256 (or none) and downloads from ``base_urls``."""
    attributes = {
        "name": name,
        "description": f"test dataset {name}",
        "class_names": tuple(str(i) for i in range(10)),
        "folder_names": (name,),
        "files": tuple(
            CanonicalFile(n, sha256_hex(content[n]) if checksums else None, len(content[n])) for n in IDX_NAMES
        ),
        "downloads": tuple(Download(f"{n}.gz", tuple(f"{base}{n}.gz" for base in base_urls)) for n in IDX_NAMES)
        if base_urls
        else (),
        "n_train": None,
        "n_test": None,
    }
    dataset: IdxDataset = type("TinyIdxDataset", (IdxDataset,), attributes)()
    return dataset


def cifar_batch_bytes(n: int, seed: int = 0, num_classes: int = 10) -> bytes:
    """A CIFAR-10 binary batch of ``n`` random records, labels cycling through the classes."""
    rng = np.random.default_rng(seed)
    records = np.empty((n, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(n) % num_classes
    records[:, 1:] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return records.tobytes()


def tiny_cifar_content(n_per_batch: int = 20) -> dict[str, bytes]:
    content = {name: cifar_batch_bytes(n_per_batch, seed=i) for i, name in enumerate(TRAIN_BATCHES)}
    content[TEST_BATCH] = cifar_batch_bytes(n_per_batch, seed=99)
    content[META_FILE] = ("\n".join(CIFAR10.class_names) + "\n\n").encode()
    return content


def tiny_cifar_dataset(
    content: dict[str, bytes], name: str = "tiny-cifar10", base_urls: tuple[str, ...] = ()
) -> CIFAR10:
    """A CIFAR-10-layout dataset declaring ``content``'s sha256, downloading the archive from ``base_urls``."""
    archive = CIFAR10.downloads[0].filename
    attributes = {
        "name": name,
        "folder_names": (name,),
        "files": tuple(CanonicalFile(n, sha256_hex(data), len(data)) for n, data in content.items()),
        "downloads": (Download(archive, tuple(f"{base}{archive}" for base in base_urls)),),
        "n_train": None,
        "n_test": None,
    }
    dataset: CIFAR10 = type("TinyCifarDataset", (CIFAR10,), attributes)()
    return dataset


#: How ``tar_bytes`` compresses a tar, by the suffix tar itself would use ("" for none).
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": lambda data: gzip.compress(data, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "": bytes,
}


def tar_bytes(members: Sequence[tarfile.TarInfo | tuple[str, bytes]], compression: str = "gz") -> bytes:
    """A tar archive of ``(name, data)`` regular files and prepared ``TarInfo`` entries (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return COMPRESSORS[compression](buffer.getvalue())


def link_member(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` under modes chosen by the first path component.

    ``/ok/<name>``: the file; ``/corrupt/<name>``: same length, one byte flipped;
    ``/cut/<name>``: announces the full length, sends half, closes; anything else: 404.
    """

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        name = name.rsplit("/", 1)[-1]
        data = self.files.get(name)
        if data is None or mode not in ("ok", "corrupt", "cut"):
            self.send_error(404)
            return
        body = bytearray(data)
        if mode == "corrupt":
            body[len(body) // 2] ^= 0xFF
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(bytes(body[: len(body) // 2]) if mode == "cut" else bytes(body))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@contextmanager
def serve_files(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server on 127.0.0.1 serving ``files``; yields its base URL and the request log."""
    handler: type[_FileHandler] = type("Handler", (_FileHandler,), {"files": dict(files), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
