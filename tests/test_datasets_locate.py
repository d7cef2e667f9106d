"""Locating, verifying and caching datasets, on tiny generated files (no network, no real data)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from cnnbench.config import DataConfig
from cnnbench.datasets import locate
from cnnbench.datasets.checksums import ChecksumError, sha256_hex
from cnnbench.datasets.mnist import TRAIN_IMAGES, TRAIN_LABELS
from cnnbench.datasets.testing import (
    tar_bytes,
    tiny_cifar_content,
    tiny_cifar_dataset,
    tiny_idx_content,
    tiny_idx_dataset,
    write_files,
)
from cnnbench.errors import DatasetError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated cache, no $CNNBENCH_DATA_DIR, no system folders, downloads allowed."""
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(tmp_path / "cache"))
    for var in (locate.DATA_DIR_ENV, locate.OFFLINE_ENV, locate.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))
    return tmp_path


@pytest.fixture
def tiny():
    content = tiny_idx_content()
    return content, tiny_idx_dataset(content)


def cached_entries(root: Path, name: str) -> list[Path]:
    folder = root / "cache" / "arrays" / name
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_load_verifies_parses_and_caches(env, tiny):
    content, dataset = tiny
    write_files(env / "data" / "tiny-mnist", content)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    assert dataset.status(config)["verified"] is None
    arrays = dataset.load(config)
    assert arrays.verified and arrays.source == str(env / "data" / "tiny-mnist")
    assert arrays.x_train.shape == (60, 28, 28, 1) and arrays.y_test.shape == (20,)
    assert arrays.y_train.dtype == np.int64 and arrays.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert (
        isinstance(arrays.x_train, np.memmap) and Path(arrays.cache).parent == env / "cache" / "arrays" / "tiny-mnist"
    )
    status = dataset.status(config)
    assert status["available"] and status["verified"] is True and status["cached"] and status["origin"] == "--data-dir"
    assert status["size_bytes"] == sum(p.stat().st_size for p in (env / "data" / "tiny-mnist").iterdir())


def test_second_load_hits_the_cache_without_parsing(env, tiny, monkeypatch):
    content, dataset = tiny
    write_files(env / "data", content, compress=False)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    first = dataset.load(config)

    def fail(*args):
        raise AssertionError("a cache hit must not read or parse the source")

    monkeypatch.setattr(type(dataset), "parse", fail)
    monkeypatch.setattr(type(dataset), "read_content", fail)
    second = dataset.load(config)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert second.verified and second.cache == first.cache


def test_cache_invalidated_when_the_source_changes(env, tiny):
    content, dataset = tiny
    folder = env / "data" / "tiny-mnist"
    write_files(folder, content, compress=False)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    first = dataset.load(config)
    # Same size, new content (one pixel), as a user replacing a file would do: checksum must now fail.
    images = bytearray((folder / TRAIN_IMAGES).read_bytes())
    images[-1] ^= 1
    (folder / TRAIN_IMAGES).write_bytes(bytes(images))
    os.utime(folder / TRAIN_IMAGES, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert dataset.status(config)["cached"] is False
    with pytest.raises(ChecksumError, match=f"sha256 mismatch for {TRAIN_IMAGES}"):
        dataset.load(config)
    # Restoring the right content makes a new entry; the stale one is dropped.
    (folder / TRAIN_IMAGES).write_bytes(content[TRAIN_IMAGES])
    again = dataset.load(config)
    assert again.cache != first.cache and cached_entries(env, dataset.name) == [Path(again.cache)]


def test_damaged_cache_entry_is_rebuilt(env, tiny):
    content, dataset = tiny
    write_files(env / "data", content)
    config = DataConfig(dataset=dataset.name, data_dir=str(env / "data"))
    first = dataset.load(config)
    npy = Path(first.cache) / "x_train.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    second = dataset.load(config)
    assert second.x_train.shape == (60, 28, 28, 1)


def test_checksum_mismatch_names_file_and_hashes_and_caches_nothing(env, tiny):
    content, dataset = tiny
    bad = dict(content)
    bad[TRAIN_LABELS] = content[TRAIN_LABELS][:-1] + b"\x03"
    write_files(env / "data", bad)
    with pytest.raises(ChecksumError) as exc:
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))
    message = str(exc.value)
    assert message.startswith("tiny-mnist: sha256 mismatch for train-labels-idx1-ubyte")
    assert str(env / "data" / f"{TRAIN_LABELS}.gz") in message
    assert sha256_hex(content[TRAIN_LABELS]) in message and sha256_hex(bad[TRAIN_LABELS]) in message
    assert "\n" not in message and exc.value.exit_code == 2
    assert cached_entries(env, dataset.name) == []
    assert (env / "data" / f"{TRAIN_LABELS}.gz").exists()  # a user's file is reported, never deleted


def test_corrupt_file_in_the_download_cache_is_deleted(env, tiny):
    content, dataset = tiny
    bad = dict(content)
    bad[TRAIN_IMAGES] = bytes(len(content[TRAIN_IMAGES]))
    cache_folder = locate.download_folder(dataset.name)
    write_files(cache_folder, bad)
    with pytest.raises(ChecksumError, match=f"deleted {TRAIN_IMAGES}.gz from the cache, run again to download afresh"):
        dataset.load(DataConfig(dataset=dataset.name, offline=True))
    assert not (cache_folder / f"{TRAIN_IMAGES}.gz").exists()
    assert (cache_folder / f"{TRAIN_LABELS}.gz").exists()  # the good files stay


def test_unreadable_gzip_in_the_download_cache_is_deleted(env, tiny):
    content, dataset = tiny
    cache_folder = locate.download_folder(dataset.name)
    write_files(cache_folder, content)
    damaged = cache_folder / f"{TRAIN_LABELS}.gz"
    damaged.write_bytes(damaged.read_bytes()[:-12])
    with pytest.raises(DatasetError, match=f"corrupt or truncated gzip data.*deleted {TRAIN_LABELS}.gz from the cache"):
        dataset.load(DataConfig(dataset=dataset.name, offline=True))
    assert not damaged.exists() and (cache_folder / f"{TRAIN_IMAGES}.gz").exists()


def test_unwritable_cache_folder(env, tiny, monkeypatch):
    content, dataset = tiny
    write_files(env / "data", content)
    blocker = env / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(blocker / "cache"))
    with pytest.raises(
        DatasetError, match=r"cannot write the dataset array cache at .*; set \$CNNBENCH_CACHE_DIR to a writable folder"
    ) as exc:
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_cache_folder(env, tiny, monkeypatch):
    content, dataset = tiny
    write_files(env / "data", content)
    read_only = env / "ro"
    read_only.mkdir(mode=0o555)
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(read_only))
    with pytest.raises(DatasetError, match="cannot write the dataset array cache"):
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))


def test_search_order(env, tiny, monkeypatch):
    content, dataset = tiny
    for where in ("flag", "envvar", "system"):
        write_files(env / where / "tiny-mnist", content)
    write_files(locate.download_folder(dataset.name), content)
    monkeypatch.setenv(locate.DATA_DIR_ENV, str(env / "envvar"))
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (env / "system",))
    flag = DataConfig(dataset=dataset.name, data_dir=str(env / "flag"))
    assert dataset.status(flag)["origin"] == "--data-dir"
    assert dataset.status(DataConfig(dataset=dataset.name))["origin"] == "$CNNBENCH_DATA_DIR"
    monkeypatch.delenv(locate.DATA_DIR_ENV)
    status = dataset.status(DataConfig(dataset=dataset.name))
    assert status["origin"] == "cache" and status["location"] == str(locate.download_folder(dataset.name))
    for path in locate.download_folder(dataset.name).iterdir():
        path.unlink()
    status = dataset.status(DataConfig(dataset=dataset.name))
    assert status["origin"] == "system" and status["location"] == str(env / "system" / "tiny-mnist")
    assert dataset.load(DataConfig(dataset=dataset.name)).source == str(env / "system" / "tiny-mnist")


def test_files_directly_in_data_dir_and_raw_preferred(env, tiny):
    content, dataset = tiny
    write_files(env / "flat", content, compress=True)
    write_files(env / "flat", content, compress=False)
    source = dataset.locate(DataConfig(dataset=dataset.name, data_dir=str(env / "flat")))
    assert source and all(not p.name.endswith(".gz") for p in source.paths)


def test_incomplete_folder_is_skipped(env, tiny):
    content, dataset = tiny
    write_files(env / "data" / "tiny-mnist", {k: v for k, v in content.items() if k != TRAIN_LABELS})
    assert dataset.locate(DataConfig(dataset=dataset.name, data_dir=str(env / "data"))) is None


def test_data_dir_that_is_not_a_folder(env, tiny):
    _, dataset = tiny
    with pytest.raises(DatasetError, match=r"--data-dir .*missing is not a folder"):
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "missing")))
    assert dataset.status(DataConfig(dataset=dataset.name, data_dir=str(env / "missing")))["available"] is False


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_and_missing_says_where_to_put_which_files(env, monkeypatch, how):
    content = tiny_idx_content()
    dataset = tiny_idx_dataset(content, base_urls=("http://127.0.0.1:9/never/",))
    if how == "env":
        monkeypatch.setenv(locate.OFFLINE_ENV, "1")
    config = DataConfig(dataset=dataset.name, offline=how == "flag")
    with pytest.raises(DatasetError) as exc:
        dataset.load(config)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("tiny-mnist: files not found and downloads are off")
    assert ("--offline" if how == "flag" else "$CNNBENCH_OFFLINE") in message
    assert (
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
        in message
    )
    assert str(locate.download_folder(dataset.name)) in message and str(env / "system" / "tiny-mnist") in message
    status = dataset.status(config)
    assert status["available"] is False and status["location"] == "missing" and "offline" in status["reason"]


def test_unknown_dataset_option(env, tiny):
    content, dataset = tiny
    write_files(env / "data", content)
    with pytest.raises(DatasetError, match="takes no --dataset-option"):
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data"), options={"n_train": "5"}))


def test_unverified_dataset_without_checksums(env):
    content = tiny_idx_content()
    dataset = tiny_idx_dataset(content, name="tiny-unchecked", checksums=False)
    write_files(env / "data", content)
    arrays = dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))
    assert arrays.verified is False and len(arrays.y_train) == 60
    assert dataset.status(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))["verified"] is False


def test_bad_file_that_passes_no_checksum_is_still_a_clear_error(env):
    """Without declared checksums the parser is the last line of defence: image/label counts differ."""
    content = tiny_idx_content()
    content[TRAIN_LABELS] = tiny_idx_content(n_train=59)[TRAIN_LABELS]
    dataset = tiny_idx_dataset(content, name="tiny-unchecked", checksums=False)
    write_files(env / "data", content)
    expected = r"^tiny-unchecked: train-images-idx3-ubyte has 60 images but train-labels-idx1-ubyte has 59 labels$"
    with pytest.raises(DatasetError, match=expected):
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "data")))


def test_cifar_from_archive_and_from_extracted_folder(env):
    content = tiny_cifar_content(10)
    dataset = tiny_cifar_dataset(content)
    archive_dir = env / "a" / dataset.name
    archive_dir.mkdir(parents=True)
    (archive_dir / "cifar-10-binary.tar.gz").write_bytes(
        tar_bytes([(f"cifar-10-batches-bin/{n}", d) for n, d in content.items()])
    )
    from_archive = dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "a")))
    assert from_archive.verified and from_archive.source.endswith("cifar-10-binary.tar.gz")
    write_files(env / "b" / "cifar-10-batches-bin", content, compress=False)
    from_folder = dataset.load(DataConfig(dataset=dataset.name, data_dir=str(env / "b")))
    assert from_folder.source == str(env / "b")
    np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
    assert from_folder.x_train.shape == (50, 32, 32, 3) and np.bincount(from_folder.y_test).tolist() == [1] * 10


def test_cifar_archive_lacking_a_batch(env):
    content = tiny_cifar_content(4)
    dataset = tiny_cifar_dataset(content)
    archive_dir = env / "a"
    archive_dir.mkdir()
    members = [(f"cifar-10-batches-bin/{n}", d) for n, d in content.items() if n != "test_batch.bin"]
    (archive_dir / "cifar-10-binary.tar.gz").write_bytes(tar_bytes(members))
    with pytest.raises(DatasetError, match=r"cifar-10-binary\.tar\.gz lacks test_batch\.bin"):
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(archive_dir)))
