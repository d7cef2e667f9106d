"""The array cache is checked on every load: a damaged or altered entry is rebuilt with a one-line notice."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cnnbench.config import DataConfig
from cnnbench.datasets import cache, locate
from cnnbench.datasets.base import DatasetArrays
from cnnbench.datasets.files import FileDataset
from cnnbench.datasets.testing import (
    tiny_cifar_content,
    tiny_cifar_dataset,
    tiny_idx_content,
    tiny_idx_dataset,
    write_files,
)
from cnnbench.preprocess import prepare

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated cache, no $CNNBENCH_DATA_DIR, no system folders."""
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(tmp_path / "cache"))
    for var in (locate.DATA_DIR_ENV, locate.OFFLINE_ENV, locate.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))
    return tmp_path


class Built:
    """A tiny dataset loaded once (so its cache entry exists), with copies of the right arrays."""

    def __init__(self, dataset: FileDataset, config: DataConfig) -> None:
        self.dataset, self.config = dataset, config
        first = dataset.load(config)
        self.folder = Path(first.cache)
        self.expected = {name: np.array(getattr(first, name)) for name in cache.ARRAY_NAMES}

    def load_again(self, capsys: Capture) -> tuple[DatasetArrays, list[str]]:
        """Load once more; return the arrays and the lines written to stderr."""
        capsys.readouterr()
        arrays = self.dataset.load(self.config)
        return arrays, capsys.readouterr().err.splitlines()

    def assert_right(self, arrays: DatasetArrays) -> None:
        for name, expected in self.expected.items():
            np.testing.assert_array_equal(getattr(arrays, name), expected, err_msg=name)


@pytest.fixture
def built(env: Path) -> Built:
    content = tiny_idx_content()
    write_files(env / "data", content)
    dataset = tiny_idx_dataset(content)
    return Built(dataset, DataConfig(dataset=dataset.name, data_dir=str(env / "data")))


def assert_rebuilt(built: Built, capsys: Capture, *words: str) -> DatasetArrays:
    """The next load prints exactly one notice line naming the dataset and ``words``, and gives the right arrays."""
    arrays, err = built.load_again(capsys)
    assert len(err) == 1, err
    assert err[0].startswith("cnnbench: tiny-mnist:") and "rebuilding" in err[0], err[0]
    for word in words:
        assert word in err[0], err[0]
    built.assert_right(arrays)
    assert arrays.verified and arrays.cache == str(built.folder)
    again, quiet = built.load_again(capsys)  # the rebuilt entry is sound: no notice the next time
    assert quiet == [] and again.verified
    built.assert_right(again)
    return arrays


def garble_header(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in the .npy header, leaving the file's size unchanged."""
    assert len(old) == len(new)
    data = bytearray(path.read_bytes())
    head = bytes(data[:128])
    assert old in head, head
    data[:128] = head.replace(old, new, 1)
    path.write_bytes(bytes(data))


def test_a_sound_entry_loads_quietly_and_says_what_was_verified(built: Built, capsys: Capture) -> None:
    arrays, err = built.load_again(capsys)
    assert err == [] and arrays.verified and isinstance(arrays.x_train, np.memmap)
    assert "sha256 recorded" in arrays.verification
    built.assert_right(arrays)
    assert sorted(p.name for p in built.folder.iterdir()) == sorted([*cache.ENTRY_FILES, cache.DIGEST_FILE])


def test_shifted_labels_of_the_same_size_are_caught(built: Built, capsys: Capture) -> None:
    """The issue's case: test labels shifted by one trained and evaluated on wrong data, reported verified."""
    labels = np.load(built.folder / "y_test.npy", mmap_mode="r+")
    labels[:] = np.roll(np.array(labels), 1)
    labels.flush()
    del labels
    arrays = assert_rebuilt(built, capsys, "y_test.npy", "sha256")
    record = prepare(arrays, built.config).record
    assert record["verified"] is True and "parsed in this load" in record["verification"]


def test_one_flipped_pixel_is_caught(built: Built, capsys: Capture) -> None:
    images = np.load(built.folder / "x_train.npy", mmap_mode="r+")
    images[7, 3, 3, 0] ^= 1
    images.flush()
    del images
    assert_rebuilt(built, capsys, "x_train.npy")


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("x_train.npy", b"\x93NUMPY", b"\x93NUMPZ"),  # not a .npy file any more
        ("y_test.npy", b"'descr': '<i8'", b"'descr': '<x8'"),  # a dtype numpy cannot parse
        ("y_test.npy", b"'descr': '<i8'", b"'descr': '<f8'"),  # same size, different meaning
        ("y_test.npy", b"'descr': '<i8'", b"'descr': '>i8'"),  # byte-swapped labels
        ("x_test.npy", b"'fortran_order': False", b"'fortran_order': True "),  # a transposed view, same shape
        ("x_test.npy", b"'shape': (20,", b"'shape': (21,"),  # more data than the file holds
        ("x_test.npy", b"'shape': (20,", b"'shape': (10,"),  # less: a silently shorter test set
        ("y_train.npy", b"{'descr'", b"('descr'"),  # not a dictionary literal
        ("y_train.npy", b"'shape': (60,)", b"'shape': ((60,"),  # unbalanced: a TokenError, not a ValueError
    ],
    ids=["magic", "bad-dtype", "float-dtype", "swapped-dtype", "fortran", "longer", "shorter", "syntax", "unbalanced"],
)
def test_garbled_npy_header(built: Built, capsys: Capture, file: str, old: bytes, new: bytes) -> None:
    garble_header(built.folder / file, old, new)
    assert_rebuilt(built, capsys, file)


def test_truncated_array_file(built: Built, capsys: Capture) -> None:
    path = built.folder / "x_train.npy"
    path.write_bytes(path.read_bytes()[:200])
    assert_rebuilt(built, capsys, "x_train.npy")


def test_empty_and_missing_array_files(built: Built, capsys: Capture) -> None:
    (built.folder / "x_test.npy").write_bytes(b"")
    assert_rebuilt(built, capsys, "x_test.npy")
    (built.folder / "y_train.npy").unlink()
    assert_rebuilt(built, capsys, "y_train.npy")


@pytest.mark.parametrize(
    ("replace", "words"),
    [
        (lambda y: y[:-1].astype(np.int32), ("y_test.npy", "bytes")),  # another size: found without hashing
        (lambda y: y.astype(np.float64), ("y_test.npy", "float64", "int64")),  # same size, another dtype
        (lambda y: y.reshape(10, 2), ("y_test.npy", "10x2")),  # same size, another shape
    ],
    ids=["size", "dtype", "shape"],
)
def test_array_replaced_and_digest_file_rewritten_to_match(
    built: Built, capsys: Capture, replace: Callable[[np.ndarray], np.ndarray], words: tuple[str, ...]
) -> None:
    """Even with a digest file rewritten by hand to match, sizes, shapes and dtypes are checked against the metadata."""
    np.save(built.folder / "y_test.npy", replace(built.expected["y_test"]))
    digests = cache.read_digest_file(built.folder)
    digests["y_test.npy"] = cache.file_sha256(built.folder / "y_test.npy")
    (built.folder / cache.DIGEST_FILE).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    assert_rebuilt(built, capsys, *words)


def test_missing_digest_file(built: Built, capsys: Capture) -> None:
    (built.folder / cache.DIGEST_FILE).unlink(missing_ok=True)
    assert_rebuilt(built, capsys, cache.DIGEST_FILE)
    assert (built.folder / cache.DIGEST_FILE).is_file()


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xff\xfe\x00garbage\n", b"0" * 64 + b"  x_train.npy\n", b"not a digest  x_train.npy\n" * 5, b"x" * 100_000],
    ids=["empty", "binary", "incomplete", "malformed", "huge"],
)
def test_garbage_digest_file(built: Built, capsys: Capture, garbage: bytes) -> None:
    (built.folder / cache.DIGEST_FILE).write_bytes(garbage)
    assert_rebuilt(built, capsys, cache.DIGEST_FILE)


@pytest.mark.parametrize("name", [cache.DIGEST_FILE, cache.META_FILE, "y_test.npy"])
def test_entry_file_replaced_by_a_fifo(built: Built, capsys: Capture, name: str) -> None:
    """Opening a fifo blocks until a writer comes: the check must refuse it before opening it."""
    (built.folder / name).unlink()
    os.mkfifo(built.folder / name)
    assert_rebuilt(built, capsys, name)


def test_wrong_digest_of_the_right_form(built: Built, capsys: Capture) -> None:
    digests = cache.read_digest_file(built.folder)
    digests["x_test.npy"] = "0" * 64
    (built.folder / cache.DIGEST_FILE).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    assert_rebuilt(built, capsys, "x_test.npy")


@pytest.mark.parametrize(
    "garbage",
    [None, b"", b"{not json", b"[1, 2]", b'{"format": 2}', b"[" * 50_000],
    ids=["missing", "empty", "bad-json", "list", "partial", "deep"],
)
def test_missing_or_garbage_metadata(built: Built, capsys: Capture, garbage: bytes | None) -> None:
    meta = built.folder / cache.META_FILE
    if garbage is None:
        meta.unlink()
    else:
        meta.write_bytes(garbage)
    assert built.dataset.status(built.config)["cached"] is False  # the cheap listing does not crash either
    assert_rebuilt(built, capsys, cache.META_FILE)


def test_metadata_edited_with_its_digest(built: Built, capsys: Capture) -> None:
    """A metadata file claiming another shape, with a digest file to match, is still caught by the arrays' headers."""
    meta_path = built.folder / cache.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["shapes"]["y_test"] = [21]
    meta_path.write_text(json.dumps(meta))
    digests = cache.read_digest_file(built.folder)
    digests[cache.META_FILE] = cache.file_sha256(meta_path)
    (built.folder / cache.DIGEST_FILE).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    assert_rebuilt(built, capsys, "y_test.npy")


def test_entry_replaced_by_a_file(built: Built, capsys: Capture) -> None:
    for path in built.folder.iterdir():
        path.unlink()
    built.folder.rmdir()
    built.folder.write_bytes(b"not a folder")
    assert_rebuilt(built, capsys, str(built.folder))


def test_a_cache_hit_is_verified_only_if_the_source_was(env: Path, capsys: Capture) -> None:
    """Digests prove the arrays are those parsed; they do not make an unverified source verified."""
    content = tiny_idx_content()
    write_files(env / "data", content)
    dataset = tiny_idx_dataset(content, name="tiny-unchecked", checksums=False)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    first = dataset.load(config)
    again = dataset.load(config)
    assert first.verified is False and again.verified is False
    assert "unverified" in again.verification and capsys.readouterr().err == ""


def test_rebuild_reverifies_the_source(env: Path, capsys: Capture) -> None:
    """A rebuild reads and checks the source again: the notice never makes the result trust what it did not check."""
    content = tiny_cifar_content(4)
    folder = env / "data" / "cifar-10-batches-bin"
    write_files(folder, content, compress=False)
    dataset = tiny_cifar_dataset(content)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    first = dataset.load(config)
    assert "source" in first.verification and first.verified
    (Path(first.cache) / "y_train.npy").write_bytes(b"\x93NUMPY garbage")
    calls = []
    original = type(dataset).verify

    def counting_verify(self: FileDataset, content: dict[str, bytes], origins: dict[str, str]) -> bool:
        calls.append(1)
        return original(self, content, origins)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(dataset), "verify", counting_verify)
        arrays = dataset.load(config)
    assert calls == [1] and arrays.verified and "source" in arrays.verification
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_notice_is_one_line_whatever_the_reason() -> None:
    text = cache.one_line("a\nb\r\x1b[31mc\td")
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and text.startswith("a")


def test_verification_time_is_reported(built: Built) -> None:
    source = built.dataset.locate(built.config)
    assert source is not None
    hit = cache.load(built.dataset.name, built.dataset._cache_key(source))
    assert hit is not None and hit.verify_s > 0 and hit.folder == built.folder
