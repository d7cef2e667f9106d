"""Downloads against a local HTTP server on 127.0.0.1 serving generated files."""

from __future__ import annotations

import gzip
import hashlib
import os
import time

import numpy as np
import pytest

from cnnbench.config import DataConfig
from cnnbench.datasets import locate
from cnnbench.datasets.checksums import ChecksumError
from cnnbench.datasets.mnist import IDX_NAMES, TRAIN_IMAGES
from cnnbench.datasets.testing import (
    serve_files,
    tar_bytes,
    tiny_cifar_content,
    tiny_cifar_dataset,
    tiny_idx_content,
    tiny_idx_dataset,
)
from cnnbench.errors import DatasetError


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(tmp_path / "cache"))
    for var in (locate.DATA_DIR_ENV, locate.OFFLINE_ENV, locate.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))
    return tmp_path


@pytest.fixture
def served():
    content = tiny_idx_content(n_train=200, n_test=50)
    files = {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in content.items()}
    with serve_files(files) as (base, requests):
        yield content, base, requests


def download_folder_files(name: str) -> list[str]:
    folder = locate.download_folder(name)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success(env, served):
    content, base, requests = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
    config = DataConfig(dataset=dataset.name)
    assert "will be downloaded from" in dataset.status(config)["reason"]
    arrays = dataset.load(config, progress=False)
    assert arrays.verified and arrays.x_train.shape == (200, 28, 28, 1)
    assert download_folder_files(dataset.name) == sorted(f"{n}.gz" for n in IDX_NAMES)  # no temporary files left
    assert dataset.status(config)["origin"] == "cache"
    count = len(requests)
    dataset.load(config, progress=False)
    assert len(requests) == count == 4  # the second load neither downloads nor re-verifies over the network


def test_falls_back_to_the_next_mirror(env, served):
    content, base, requests = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/gone/", f"{base}/ok/"))
    arrays = dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert arrays.verified and len(requests) == 8


def test_mirror_from_environment_is_tried_first(env, served, monkeypatch):
    content, base, requests = served
    monkeypatch.setenv(locate.MIRROR_ENV, f"{base}/ok")
    dataset = tiny_idx_dataset(content, base_urls=("http://127.0.0.1:9/unreachable/",))
    dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert requests[0] == f"/ok/{dataset.name}/{TRAIN_IMAGES}.gz" and len(requests) == 4


def test_corrupted_body_is_a_checksum_error_and_nothing_is_cached(env, served):
    """One flipped byte in the .gz: the gzip CRC fails, reported as a corrupt download."""
    content, base, _ = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/corrupt/",))
    with pytest.raises(ChecksumError) as exc:
        dataset.load(DataConfig(dataset=dataset.name), progress=False)
    message = str(exc.value)
    assert message.startswith(
        f"{dataset.name}: could not download {TRAIN_IMAGES}.gz; tried {base}/corrupt/{TRAIN_IMAGES}.gz"
    )
    assert (
        "corrupt or truncated gzip data" in message
        and ".part" not in message
        and "\n" not in message
        and exc.value.exit_code == 2
    )
    assert download_folder_files(dataset.name) == []
    assert not (env / "cache" / "arrays").exists()


def test_well_formed_but_wrong_content_names_both_hashes(env):
    """A valid .gz of different bytes passes gzip's CRC; the sha256 of the content catches it."""
    content = tiny_idx_content(n_train=30, n_test=10)
    tampered = dict(content, **{TRAIN_IMAGES: content[TRAIN_IMAGES][:-1] + b"\x00"})
    files = {f"{name}.gz": gzip.compress(data) for name, data in tampered.items()}
    dataset = tiny_idx_dataset(content)
    with serve_files(files) as (base, _):
        dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
        with pytest.raises(ChecksumError) as exc:
            dataset.load(DataConfig(dataset=dataset.name), progress=False)
    message = str(exc.value)
    expected = dataset.files[0].sha256
    actual = hashlib.sha256(tampered[TRAIN_IMAGES]).hexdigest()
    assert (
        f"sha256 mismatch for {TRAIN_IMAGES} (from {base}/ok/{TRAIN_IMAGES}.gz): expected {expected}, got {actual}"
        in message
    )
    assert download_folder_files(dataset.name) == [] and not (env / "cache" / "arrays").exists()


def test_transfer_cut_off_half_way_leaves_no_complete_file(env, served):
    content, base, _ = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/cut/",))
    with pytest.raises(DatasetError, match=r"transfer cut off after \d+ of \d+ bytes"):
        dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert download_folder_files(dataset.name) == []


def test_http_error_lists_every_url(env, served):
    content, base, _ = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/gone/", f"{base}/missing/"))
    with pytest.raises(DatasetError, match=r"HTTP 404 .*; .*/missing/.*HTTP 404") as exc:
        dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert not isinstance(exc.value, ChecksumError)


def test_offline_never_touches_the_network(env, served):
    content, base, requests = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
    with pytest.raises(DatasetError, match="downloads are off"):
        dataset.load(DataConfig(dataset=dataset.name, offline=True), progress=False)
    assert requests == []


def test_resumes_a_partial_download_folder(env, served):
    """Files already downloaded (verified before their rename) are kept; only the rest is fetched."""
    content, base, requests = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
    folder = locate.download_folder(dataset.name)
    folder.mkdir(parents=True)
    (folder / f"{TRAIN_IMAGES}.gz").write_bytes(gzip.compress(content[TRAIN_IMAGES]))
    dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert len(requests) == 3 and all(TRAIN_IMAGES not in r for r in requests)


def test_unwritable_download_folder(env, served, monkeypatch):
    content, base, requests = served
    blocker = env / "file"
    blocker.write_text("x")
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(blocker))
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
    with pytest.raises(DatasetError, match=r"cannot write the dataset cache at .*; set \$CNNBENCH_CACHE_DIR"):
        dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert requests == []


def test_archive_download_verified_by_members(env):
    content = tiny_cifar_content(6)
    archive = tar_bytes([(f"cifar-10-batches-bin/{n}", d) for n, d in content.items()])
    bad_content = dict(content, **{"test_batch.bin": content["test_batch.bin"][::-1]})
    bad_archive = tar_bytes([(f"cifar-10-batches-bin/{n}", d) for n, d in bad_content.items()])
    with (
        serve_files({"cifar-10-binary.tar.gz": archive}) as (good_base, _),
        serve_files({"cifar-10-binary.tar.gz": bad_archive}) as (bad_base, _),
    ):
        dataset = tiny_cifar_dataset(content, base_urls=(f"{bad_base}/ok/",))
        with pytest.raises(ChecksumError, match=r"sha256 mismatch for test_batch\.bin"):
            dataset.load(DataConfig(dataset=dataset.name), progress=False)
        assert download_folder_files(dataset.name) == []
        dataset = tiny_cifar_dataset(content, base_urls=(f"{bad_base}/ok/", f"{good_base}/ok/"))
        arrays = dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert arrays.verified and download_folder_files(dataset.name) == ["cifar-10-binary.tar.gz"]
    assert np.bincount(arrays.y_train).sum() == 30


def test_decompression_bomb_is_refused_before_it_fills_memory(env):
    """A .gz that inflates past the declared size is not the published file."""
    content = tiny_idx_content(n_train=30, n_test=10)
    bomb = dict(content, **{TRAIN_IMAGES: content[TRAIN_IMAGES] + bytes(50_000_000)})
    files = {f"{name}.gz": gzip.compress(data, compresslevel=1) for name, data in bomb.items()}
    with serve_files(files) as (base, _):
        dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
        with pytest.raises(ChecksumError, match=rf"more than the expected {len(content[TRAIN_IMAGES])} bytes"):
            dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert download_folder_files(dataset.name) == []


def test_stale_temporary_files_are_cleaned_but_fresh_ones_kept(env, served):
    content, base, _ = served
    dataset = tiny_idx_dataset(content, base_urls=(f"{base}/ok/",))
    folder = locate.download_folder(dataset.name)
    folder.mkdir(parents=True)
    stale, fresh = folder / f".{TRAIN_IMAGES}.gz.old.part", folder / f".{TRAIN_IMAGES}.gz.live.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    dataset.load(DataConfig(dataset=dataset.name), progress=False)
    assert not stale.exists() and fresh.exists()
