"""Parsers and archive safety on small generated files: every bad input is a one-line DatasetError."""

from __future__ import annotations

import gzip
import tarfile

import numpy as np
import pytest

from cnnbench.datasets.archive import check_member, read_bytes, read_members
from cnnbench.datasets.base import check_arrays
from cnnbench.datasets.cifar10 import CIFAR10, parse_batch
from cnnbench.datasets.idx import load_idx_pair, parse_idx, parse_idx_pair
from cnnbench.datasets.mnist import MNIST, TRAIN_IMAGES, TRAIN_LABELS
from cnnbench.datasets.testing import (
    cifar_batch_bytes,
    idx_bytes,
    link_member,
    tar_bytes,
    tiny_cifar_content,
    tiny_idx_content,
)
from cnnbench.errors import DatasetError

SHAPE = (28, 28, 1)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    assert exc.value.exit_code == 2
    return message


# -- IDX ----------------------------------------------------------------------------------------


def test_idx_roundtrip_raw_and_gz(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "lab.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    x, y = load_idx_pair(tmp_path / "img", tmp_path / "lab.gz", SHAPE)
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], images)
    assert y.dtype == np.int64 and y.tolist() == [7, 0, 9]


def test_idx_truncated_body():
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]
    with pytest.raises(DatasetError, match="truncated") as exc:
        parse_idx(data, "train-images-idx3-ubyte", expected_ndim=3)
    assert "train-images-idx3-ubyte" in one_line(exc)


def test_idx_truncated_header():
    with pytest.raises(DatasetError, match=r"too short|truncated header"):
        parse_idx(b"\x00\x00\x08", "x")
    with pytest.raises(DatasetError, match="truncated header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00", "x")


def test_truncated_gzip_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-40])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip") as exc:
        read_bytes(path)
    assert str(path) in one_line(exc)


def test_idx_wrong_magic():
    data = b"\x50\x4b\x03\x04" + bytes(100)  # a zip file, not IDX
    with pytest.raises(DatasetError, match="bad IDX magic number 0x504b0304") as exc:
        parse_idx(data, "t10k-labels-idx1-ubyte")
    one_line(exc)


def test_idx_empty_dimension_beside_huge_ones():
    """0 x 2**32-1 x 2**32-1 elements: no bytes to read, but numpy refuses the shape ("array is too big")."""
    data = b"\x00\x00\x08\x03" + bytes(4) + b"\xff" * 8
    with pytest.raises(DatasetError, match=r"shape \(0, 4294967295, 4294967295\) cannot be represented") as exc:
        parse_idx(data, "t10k-images-idx3-ubyte", expected_ndim=3)
    one_line(exc)


def test_idx_trailing_bytes():
    with pytest.raises(DatasetError, match="trailing bytes"):
        parse_idx(idx_bytes(np.zeros(4, np.uint8)) + b"xx", "labels")


def test_idx_image_label_count_mismatch():
    images = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    labels = idx_bytes(np.zeros(9, np.uint8))
    with pytest.raises(DatasetError, match="has 10 images but train-labels-idx1-ubyte has 9 labels") as exc:
        parse_idx_pair(images, labels, (TRAIN_IMAGES, TRAIN_LABELS), SHAPE)
    one_line(exc)


def test_idx_wrong_number_of_dimensions():
    flat_images = idx_bytes(np.zeros((10, 784), np.uint8))
    labels = idx_bytes(np.zeros(10, np.uint8))
    with pytest.raises(DatasetError, match="expected 3 dimensions, the header says 2"):
        parse_idx_pair(flat_images, labels, (TRAIN_IMAGES, TRAIN_LABELS), SHAPE)


def test_idx_wrong_image_size():
    images = idx_bytes(np.zeros((10, 32, 32), np.uint8))
    labels = idx_bytes(np.zeros(10, np.uint8))
    with pytest.raises(DatasetError, match="images are 32x32, expected 28x28"):
        parse_idx_pair(images, labels, (TRAIN_IMAGES, TRAIN_LABELS), SHAPE)


def test_idx_wrong_element_type():
    images = idx_bytes(np.zeros((2, 28, 28), np.float32), type_code=0x0D)
    labels = idx_bytes(np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="unsigned-byte"):
        parse_idx_pair(images, labels, (TRAIN_IMAGES, TRAIN_LABELS), SHAPE)


def test_mnist_parse_rejects_labels_out_of_range():
    content = tiny_idx_content()
    content[TRAIN_LABELS] = idx_bytes(np.full(60, 12, np.uint8))
    x_train, y_train, x_test, y_test = MNIST().parse(content)
    with pytest.raises(DatasetError, match=r"training labels range over 12\.\.12, expected 0\.\.9"):
        check_arrays(MNIST(), x_train, y_train, x_test, y_test)


# -- CIFAR-10 binary ----------------------------------------------------------------------------


def test_cifar_batch_layout():
    record = np.zeros(3073, np.uint8)
    record[0] = 3
    planes = record[1:].reshape(3, 32, 32)
    planes[0, 1, 2], planes[1, 1, 2], planes[2, 1, 2] = 10, 20, 30  # red, green, blue of pixel (row 1, col 2)
    x, y = parse_batch(record.tobytes(), "b.bin")
    assert x.shape == (1, 32, 32, 3) and y.tolist() == [3]
    assert x[0, 1, 2].tolist() == [10, 20, 30]
    assert x.flags.c_contiguous


def test_cifar_truncated_batch():
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte CIFAR records") as exc:
        parse_batch(cifar_batch_bytes(5)[:-7], "data_batch_1.bin")
    assert "data_batch_1.bin" in one_line(exc)


def test_cifar_label_out_of_range():
    data = bytearray(cifar_batch_bytes(3))
    data[3073] = 200
    with pytest.raises(DatasetError, match="label byte 200"):
        parse_batch(bytes(data), "test_batch.bin")


def test_cifar_parse_whole_dataset_and_class_names():
    content = tiny_cifar_content(n_per_batch=20)
    x_train, y_train, x_test, _ = CIFAR10().parse(content)
    assert x_train.shape == (100, 32, 32, 3) and x_test.shape == (20, 32, 32, 3)
    assert np.bincount(y_train).tolist() == [10] * 10
    content["batches.meta.txt"] = b"cat\ndog\n"
    with pytest.raises(DatasetError, match="class names cat, dog differ"):
        CIFAR10().parse(content)


# -- tar archives -------------------------------------------------------------------------------


def write_archive(tmp_path, members, name="cifar-10-binary.tar.gz"):
    path = tmp_path / name
    path.write_bytes(tar_bytes(members))
    return path


def test_archive_reads_wanted_members(tmp_path):
    path = write_archive(
        tmp_path, [("cifar-10-batches-bin/a.bin", b"AAA"), ("cifar-10-batches-bin/readme.html", b"x"), ("b.bin", b"BB")]
    )
    found = read_members(path, {"a.bin", "b.bin", "c.bin"}, ("cifar-10-batches-bin/", ""))
    assert found == {"a.bin": b"AAA", "b.bin": b"BB"}


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (("../evil.bin", b"x"), "'..' in its path"),
        (("cifar-10-batches-bin/../../evil.bin", b"x"), "'..' in its path"),
        (("/etc/evil.bin", b"x"), "absolute path"),
        (link_member("cifar-10-batches-bin/data_batch_1.bin", "../../etc/passwd"), "outside the archive"),
        (link_member("cifar-10-batches-bin/data_batch_1.bin", "/etc/passwd"), "outside the archive"),
        (link_member("data_batch_1.bin", "../outside", hard=True), "outside the archive"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_archive_rejects_unsafe_members(tmp_path, member, reason):
    path = write_archive(tmp_path, [("cifar-10-batches-bin/batches.meta.txt", b"ok"), member])
    with pytest.raises(DatasetError, match="unsafe member") as exc:
        read_members(path, {"batches.meta.txt", "data_batch_1.bin"}, ("cifar-10-batches-bin/", ""))
    message = one_line(exc)
    assert reason in message and "archive rejected" in message


def test_archive_rejects_device_members(tmp_path):
    device = tarfile.TarInfo("cifar-10-batches-bin/null")
    device.type = tarfile.CHRTYPE
    path = write_archive(tmp_path, [device])
    with pytest.raises(DatasetError, match="device, fifo"):
        read_members(path, {"x"})


def test_archive_allows_links_inside():
    assert check_member(link_member("dir/a", "b"), "x.tar") == "dir/a"
    assert check_member(link_member("dir/sub/a", "../b"), "x.tar") == "dir/sub/a"


def test_archive_truncated(tmp_path):
    data = tar_bytes([("cifar-10-batches-bin/data_batch_1.bin", cifar_batch_bytes(200))])
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"corrupt or truncated archive|truncated") as exc:
        read_members(path, {"data_batch_1.bin"}, ("cifar-10-batches-bin/",))
    one_line(exc)


def test_archive_duplicate_member(tmp_path):
    path = write_archive(tmp_path, [("a.bin", b"1"), ("a.bin", b"2")])
    with pytest.raises(DatasetError, match="appears twice"):
        read_members(path, {"a.bin"})


def test_cifar_dataset_rejects_unsafe_archive_end_to_end(tmp_path, monkeypatch):
    """Through ``load``: a poisoned archive in --data-dir is refused, named, and nothing is cached."""
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNBENCH_DATA_DIR", raising=False)
    from cnnbench.config import DataConfig
    from cnnbench.datasets.testing import tiny_cifar_dataset

    content = tiny_cifar_content(5)
    dataset = tiny_cifar_dataset(content)
    members = [(f"cifar-10-batches-bin/{name}", data) for name, data in content.items()] + [
        ("../../.bashrc", b"echo owned")
    ]
    folder = tmp_path / "data" / dataset.name
    folder.mkdir(parents=True)
    write_archive(folder, members)
    with pytest.raises(
        DatasetError, match=r"^tiny-cifar10: cifar-10-binary.tar.gz: unsafe member '\.\./\.\./\.bashrc'"
    ) as exc:
        dataset.load(DataConfig(dataset=dataset.name, data_dir=str(tmp_path / "data"), offline=True))
    one_line(exc)
    assert not (tmp_path / ".bashrc").exists()
    assert not (tmp_path / "cache" / "arrays").exists() or not any((tmp_path / "cache" / "arrays").rglob("*.npy"))


def test_read_bytes_refuses_content_larger_than_declared(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(10_000)))
    assert len(read_bytes(path, max_bytes=10_000)) == 10_000
    with pytest.raises(DatasetError, match="more than the expected 9999 bytes") as exc:
        read_bytes(path, max_bytes=9_999)
    one_line(exc)


def test_archive_member_larger_than_declared(tmp_path):
    path = write_archive(tmp_path, [("cifar-10-batches-bin/test_batch.bin", bytes(5000))])
    with pytest.raises(DatasetError, match="has 5000 bytes, more than the expected 3073"):
        read_members(path, {"test_batch.bin"}, ("cifar-10-batches-bin/",), max_sizes={"test_batch.bin": 3073})
