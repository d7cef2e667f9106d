"""Property-based tests: whatever bytes a dataset file or cache file holds, the result is data or a DatasetError.

Random bytes and random damage to valid files (flipped bytes, truncation, spliced garbage) must never
escape as another exception type (a traceback for the user), and every message must be one line.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnnbench.config import DataConfig
from cnnbench.datasets import cache, locate
from cnnbench.datasets.archive import read_bytes, read_members
from cnnbench.datasets.base import check_arrays
from cnnbench.datasets.cifar10 import (
    CIFAR10,
    META_FILE,
    RECORD_BYTES,
    TEST_BATCH,
    parse_batch,
    parse_class_names,
)
from cnnbench.datasets.files import FileDataset
from cnnbench.datasets.idx import parse_idx, parse_idx_pair
from cnnbench.datasets.mnist import MNIST, TRAIN_IMAGES, TRAIN_LABELS
from cnnbench.datasets.testing import (
    cifar_batch_bytes,
    idx_bytes,
    tar_bytes,
    tiny_cifar_content,
    tiny_idx_content,
    tiny_idx_dataset,
    write_files,
)
from cnnbench.errors import DatasetError

T = TypeVar("T")

#: No example database: nothing written into the working tree; no deadline: the CI machine may be loaded.
PARSERS = settings(max_examples=150, deadline=None, database=None)
FILES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CIFAR_PREFIXES = ("cifar-10-batches-bin/", "")


def data_or_dataset_error(parse: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``parse``'s result, or None after a ``DatasetError`` whose message is one non-empty line; anything else fails."""
    try:
        return parse(*args, **kwargs)
    except DatasetError as exc:
        error = exc
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert error.exit_code == 2
    return None


def damaged(original: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or ``original`` with bytes flipped, cut short, or a stretch replaced by garbage."""
    n = len(original)

    @st.composite
    def flipped(draw: st.DrawFn) -> bytes:
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)

    @st.composite
    def spliced(draw: st.DrawFn) -> bytes:
        start = draw(st.integers(0, n))
        end = draw(st.integers(start, min(n, start + 64)))
        return original[:start] + draw(st.binary(max_size=64)) + original[end:]

    truncated = st.integers(0, max(n - 1, 0)).map(lambda cut: original[:cut])
    return st.one_of(st.binary(max_size=2 * n + 16), flipped(), truncated, spliced())


# -- IDX ----------------------------------------------------------------------------------------

VALID_IMAGES = idx_bytes(np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8))
VALID_LABELS = idx_bytes(np.array([1, 2, 3], np.uint8))


@st.composite
def idx_headers(draw: st.DrawFn) -> bytes:
    """A plausible IDX header (any type code, 0-5 dimensions of any size) and a body of any length."""
    type_code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, draw(st.integers(0, 255))]))
    dims = draw(st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=5))
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + draw(st.binary(max_size=512))


@PARSERS
@given(st.one_of(st.binary(max_size=1024), idx_headers(), damaged(VALID_LABELS)), st.sampled_from([None, 1, 3]))
@example(b"\x00\x00\x08\x03" + bytes(4) + b"\xff" * 8, None)  # found by Hypothesis: 0 x 2**32-1 x 2**32-1 elements
def test_parse_idx_any_bytes(data: bytes, expected_ndim: int | None) -> None:
    array = data_or_dataset_error(parse_idx, data, "t10k-labels-idx1-ubyte", expected_ndim=expected_ndim)
    if array is not None:
        assert isinstance(array, np.ndarray) and array.ndim == data[3]


@PARSERS
@given(st.one_of(damaged(VALID_IMAGES), idx_headers()), st.one_of(damaged(VALID_LABELS), idx_headers()))
def test_parse_idx_pair_any_bytes(images: bytes, labels: bytes) -> None:
    parsed = data_or_dataset_error(parse_idx_pair, images, labels, (TRAIN_IMAGES, TRAIN_LABELS), (28, 28, 1))
    if parsed is not None:
        x, y = parsed
        assert x.shape[1:] == (28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64 and len(x) == len(y)


@PARSERS
@given(st.sampled_from(sorted(tiny_idx_content(12, 4))), st.data())
def test_mnist_parse_and_check_with_one_damaged_file(name: str, data: st.DataObject) -> None:
    content = tiny_idx_content(12, 4)
    content[name] = data.draw(damaged(content[name]))
    arrays = data_or_dataset_error(MNIST().parse, content)
    if arrays is not None:
        data_or_dataset_error(check_arrays, MNIST(), *arrays)


# -- CIFAR-10 binary ----------------------------------------------------------------------------

VALID_BATCH = cifar_batch_bytes(3)


@PARSERS
@given(st.one_of(damaged(VALID_BATCH), st.binary(min_size=RECORD_BYTES, max_size=RECORD_BYTES)))
def test_parse_batch_any_bytes(data: bytes) -> None:
    parsed = data_or_dataset_error(parse_batch, data, TEST_BATCH)
    if parsed is not None:
        x, y = parsed
        assert x.shape == (len(data) // RECORD_BYTES, 32, 32, 3) and int(y.max()) < 10


@PARSERS
@given(st.binary(max_size=256))
def test_parse_class_names_any_bytes(data: bytes) -> None:
    names = data_or_dataset_error(parse_class_names, data, META_FILE)
    if names is not None:
        assert all(isinstance(name, str) and name for name in names)


# -- compressed files and tar archives -----------------------------------------------------------

VALID_GZIP = gzip.compress(VALID_LABELS * 20, mtime=0)
CIFAR_MEMBERS: list[tarfile.TarInfo | tuple[str, bytes]] = [
    ("cifar-10-batches-bin/test_batch.bin", cifar_batch_bytes(2)),
    ("cifar-10-batches-bin/batches.meta.txt", b"a\nb\n"),
]
ARCHIVES = {compression: tar_bytes(CIFAR_MEMBERS, compression) for compression in ("gz", "bz2", "xz", "")}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """One file, rewritten by every example."""
    return tmp_path / "file"


@FILES
@given(st.one_of(damaged(VALID_GZIP), st.just(b"\x1f\x8b"), st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b)))
def test_read_bytes_any_file(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    content = data_or_dataset_error(read_bytes, scratch, max_bytes=len(VALID_LABELS) * 20)
    if content is not None and not data.startswith(b"\x1f\x8b"):
        assert content == data


@FILES
@given(st.sampled_from(sorted(ARCHIVES)), st.data())
def test_read_members_any_archive(scratch: Path, compression: str, data: st.DataObject) -> None:
    scratch.write_bytes(data.draw(damaged(ARCHIVES[compression]), label="archive"))
    wanted = {"test_batch.bin", "batches.meta.txt", "data_batch_1.bin"}
    limits = {"test_batch.bin": 2 * RECORD_BYTES}
    members = data_or_dataset_error(read_members, scratch, wanted, CIFAR_PREFIXES, max_sizes=limits)
    if members is not None:
        assert set(members) <= wanted and all(isinstance(value, bytes) for value in members.values())


@FILES
@given(st.binary(max_size=2048).map(bz2.compress) | st.binary(max_size=2048).map(lzma.compress))
def test_read_members_compressed_non_tar(scratch: Path, data: bytes) -> None:
    """Well-compressed data that is no tar: the decompressor succeeds, the tar reader must still fail cleanly."""
    scratch.write_bytes(data)
    data_or_dataset_error(read_members, scratch, {"test_batch.bin"}, CIFAR_PREFIXES)


@FILES
@given(st.sampled_from(CIFAR10.files), st.data())
def test_cifar_parse_with_one_damaged_member(member: Any, data: st.DataObject) -> None:
    content = tiny_cifar_content(3)
    content[member.name] = data.draw(damaged(content[member.name]))
    arrays = data_or_dataset_error(CIFAR10().parse, content)
    if arrays is not None:
        data_or_dataset_error(check_arrays, CIFAR10(), *arrays)


# -- the array cache -----------------------------------------------------------------------------


Cached = tuple[FileDataset, DataConfig, dict[str, np.ndarray], Path]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    """A tiny dataset loaded once into its own cache, and copies of its right arrays."""
    root = tmp_path_factory.mktemp("cache-properties")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(locate.CACHE_DIR_ENV, str(root / "cache"))
        patch.delenv(locate.DATA_DIR_ENV, raising=False)
        content = tiny_idx_content(12, 4)
        write_files(root / "data", content)
        dataset = tiny_idx_dataset(content)
        config = DataConfig(dataset=dataset.name, data_dir=str(root / "data"))
        first = dataset.load(config)
        expected = {name: np.array(getattr(first, name)) for name in cache.ARRAY_NAMES}
        yield dataset, config, expected, Path(first.cache)


#: (kind, position fraction, end fraction, replacement bytes, xor mask): how to damage a file of any length.
DAMAGE_RECIPES = st.tuples(
    st.sampled_from(["replace", "flip", "truncate", "splice"]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.binary(max_size=64),
    st.integers(1, 255),
)


def apply_damage(original: bytes, recipe: tuple[str, float, float, bytes, int]) -> bytes:
    """The bytes of ``original`` after the damage ``recipe`` describes (its positions scaled to the length)."""
    kind, at, until, junk, mask = recipe
    n = len(original)
    start = min(int(at * n), max(n - 1, 0))
    if kind == "replace":
        return junk
    if kind == "flip" and n:
        data = bytearray(original)
        data[start] ^= mask
        return bytes(data)
    if kind == "truncate":
        return original[:start]
    end = min(n, start + int(until * 64))
    return original[:start] + junk + original[end:]


ENTRY_FILES = sorted([*cache.ENTRY_FILES, cache.DIGEST_FILE])


@FILES
@given(st.sampled_from(ENTRY_FILES), st.data())
def test_any_damage_to_a_cache_file_is_rebuilt_quietly_but_visibly(
    cached: Cached, capsys: pytest.CaptureFixture[str], name: str, data: st.DataObject
) -> None:
    dataset, config, expected, folder = cached
    path = folder / name
    original = path.read_bytes()
    # A rebuilt entry's metadata may differ in length from one example to the next, so the damage is drawn
    # as a recipe of its own (fractions, bytes) and only then applied: Hypothesis needs the same draws each time.
    garbage = apply_damage(original, data.draw(DAMAGE_RECIPES, label=name))
    path.write_bytes(garbage)
    capsys.readouterr()
    source = dataset.locate(config)
    assert source is not None
    key = dataset._cache_key(source)
    hit = data_or_dataset_error(cache.load, dataset.name, key)
    assert (hit is not None) == (garbage == original)
    arrays = dataset.load(config)
    for array_name, right in expected.items():
        np.testing.assert_array_equal(getattr(arrays, array_name), right)
    assert arrays.verified
    err = capsys.readouterr().err.splitlines()
    assert len(err) == (0 if garbage == original else 1), err


def test_a_digest_file_whose_newline_became_another_line_break_is_damage(
    cached: Cached, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hypothesis found it: '\\x0b' for the last '\\n' still split into the same lines, and the entry loaded."""
    dataset, config, expected, folder = cached
    path = folder / cache.DIGEST_FILE
    original = path.read_bytes()
    path.write_bytes(original[:-1] + b"\x0b")
    source = dataset.locate(config)
    assert source is not None
    assert data_or_dataset_error(cache.load, dataset.name, dataset._cache_key(source)) is None
    capsys.readouterr()
    arrays = dataset.load(config)  # rebuilt, with one line saying so
    for array_name, right in expected.items():
        np.testing.assert_array_equal(getattr(arrays, array_name), right)
    assert path.read_bytes() == original and len(capsys.readouterr().err.splitlines()) == 1
