"""The parsed-array cache: one folder of .npy files per dataset source, memory-mapped on load.

The parent process parses and verifies once and stores the arrays here; each framework's worker
then maps them in milliseconds. The folder name is a key over the source files' paths, sizes and
modification times (plus the dataset's declared checksums and parser version), so changing,
replacing or moving the source invalidates the cache without hashing anything. Entries are
written into a temporary folder and renamed into place, so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cnnbench.datasets.download import ensure_folder
from cnnbench.datasets.locate import arrays_folder
from cnnbench.errors import DatasetError

#: Bump when the cache layout changes: older entries are then ignored and replaced.
CACHE_FORMAT = 1
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
META_FILE = "meta.json"
#: Temporary folders older than this are leftovers of a crashed writer.
STALE_TEMP_S = 3600


def fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    """Resolved path, inode, size, mtime and ctime of each source file: cheap, and any rewrite,
    replacement or move changes it (ctime cannot be set back, unlike a copied mtime)."""
    result = []
    for path in paths:
        stat = path.stat()
        result.append([str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])
    return result


def cache_key(dataset_name: str, identity: Any, paths: Iterable[Path]) -> str:
    """A key naming one parse of one set of source files by one version of a dataset's parser."""
    payload = {"format": CACHE_FORMAT, "dataset": dataset_name, "identity": identity, "files": fingerprint(paths)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _entry(dataset_name: str, key: str) -> Path:
    return arrays_folder(dataset_name) / key[:24]


def read_meta(dataset_name: str, key: str) -> dict[str, Any] | None:
    """The metadata of a complete cache entry for ``key``, or None (cheap: one small JSON file)."""
    try:
        meta = json.loads((_entry(dataset_name, key) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
        return None
    return meta


def load(dataset_name: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any], Path] | None:
    """Memory-mapped arrays, metadata and folder of the entry for ``key``; None when absent or damaged."""
    meta = read_meta(dataset_name, key)
    if meta is None:
        return None
    folder = _entry(dataset_name, key)
    try:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAY_NAMES}
    except (OSError, ValueError):
        return None
    for name, array in arrays.items():
        if list(array.shape) != meta["shapes"].get(name) or str(array.dtype) != meta["dtypes"].get(name):
            return None
    return arrays, meta, folder


def store(dataset_name: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write an entry atomically and drop this dataset's older entries; ``DatasetError`` if the cache is unwritable."""
    base = ensure_folder(arrays_folder(dataset_name), "dataset array cache")
    final = _entry(dataset_name, key)
    meta = {
        **meta,
        "format": CACHE_FORMAT,
        "key": key,
        "shapes": {name: list(arrays[name].shape) for name in ARRAY_NAMES},
        "dtypes": {name: str(arrays[name].dtype) for name in ARRAY_NAMES},
    }
    temp: Path | None = None
    try:
        temp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        for name in ARRAY_NAMES:
            np.save(temp / f"{name}.npy", np.ascontiguousarray(arrays[name]), allow_pickle=False)
        (temp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(temp, final)
        except OSError:
            if load(dataset_name, key) is None:  # a damaged leftover, not a concurrent writer's complete entry
                shutil.rmtree(final, ignore_errors=True)
                os.rename(temp, final)
        temp = None if not temp.exists() else temp
    except OSError as exc:
        from cnnbench.datasets.locate import CACHE_DIR_ENV

        raise DatasetError(
            f"cannot write the dataset array cache at {base} ({exc.strerror or exc}); set ${CACHE_DIR_ENV} to a writable folder"
        ) from None
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    _drop_stale(base, keep=final)
    return final


def _drop_stale(base: Path, keep: Path) -> None:
    """Remove entries of older sources, and temporary folders that crashed writers left behind."""
    now = time.time()
    for entry in base.iterdir():
        if entry == keep:
            continue
        if entry.name.startswith(".tmp-"):
            try:
                if now - entry.stat().st_mtime < STALE_TEMP_S:
                    continue  # perhaps another process is writing it right now
            except OSError:
                continue
        shutil.rmtree(entry, ignore_errors=True)
