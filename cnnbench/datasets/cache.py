"""The parsed-array cache: one folder of .npy files per dataset source, memory-mapped on load.

The parent process parses and verifies once and stores the arrays here; each framework's worker
then maps them. The folder name is a key over the source files' paths, sizes and modification
times (plus the dataset's declared checksums and parser version), so changing, replacing or moving
the source invalidates the cache without hashing the source. Entries are written into a temporary
folder and renamed into place, so a reader never sees half an entry.

A key says which source an entry was parsed from, not that its files are still what was written:
so every load checks each file against the sha256 recorded when the entry was built (a
``SHA256SUMS`` file that ``sha256sum -c`` also reads). An entry that fails any check, whatever the
reason, raises ``CacheEntryError`` and the caller rebuilds it from the verified source. The cost of
the check is measured in docs/decisions.md ("Dataset cache verification").
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cnnbench.datasets.download import ensure_folder
from cnnbench.datasets.locate import arrays_folder
from cnnbench.errors import DatasetError

#: Bump when the cache layout changes: older entries are then ignored and replaced.
CACHE_FORMAT = 2
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
META_FILE = "meta.json"
#: sha256 of every other file of the entry, in ``sha256sum`` format, written last.
DIGEST_FILE = "SHA256SUMS"
ENTRY_FILES = (*(f"{name}.npy" for name in ARRAY_NAMES), META_FILE)
#: Larger metadata or digest files are garbage, not something to read into memory.
MAX_SMALL_FILE = 64 * 1024
#: Temporary folders older than this are leftovers of a crashed writer.
STALE_TEMP_S = 3600

_DIGEST_LINE = re.compile(r"([0-9a-f]{64}) [ *]([A-Za-z0-9_.-]+)")


class CacheEntryError(DatasetError):
    """A cache entry exists but is unreadable or not what was written; the caller rebuilds it."""


@dataclass(frozen=True)
class CacheHit:
    """A verified entry: its memory-mapped arrays, metadata and folder."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    folder: Path
    #: Seconds this load spent checking the entry (reported by benchmarks/dataset_load.py).
    verify_s: float


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


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so a notice stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def notice(message: str) -> None:
    """One line on stderr: what the user should know but need not act on (the run goes on)."""
    print(one_line(f"cnnbench: {message}"), file=sys.stderr, flush=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed from a read-only memory map (the fastest way measured; see docs/decisions.md)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest.update(mapped)
    return digest.hexdigest()


def _entry(dataset_name: str, key: str) -> Path:
    return arrays_folder(dataset_name) / key[:24]


def _read_small(path: Path) -> bytes:
    """The content of a metadata-sized file; ``CacheEntryError`` if missing, unreadable, too large or not a file."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a fifo would block the open forever
            raise CacheEntryError(f"{path.name} is not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_SMALL_FILE + 1)
    except OSError as exc:
        raise CacheEntryError(f"{path.name} unreadable ({exc.strerror or exc})") from None
    if len(data) > MAX_SMALL_FILE:
        raise CacheEntryError(f"{path.name} is larger than {MAX_SMALL_FILE} bytes (garbage)")
    return data


def read_digest_file(folder: Path) -> dict[str, str]:
    """The recorded sha256 of each entry file; ``CacheEntryError`` unless it lists exactly ``ENTRY_FILES``."""
    data = _read_small(folder / DIGEST_FILE)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CacheEntryError(f"{DIGEST_FILE} is not text") from None
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _DIGEST_LINE.fullmatch(line)
        if match is None or match[2] in digests:
            raise CacheEntryError(f"{DIGEST_FILE} line {number} is not '<sha256>  <file>' for a new file")
        digests[match[2]] = match[1]
    if sorted(digests) != sorted(ENTRY_FILES):
        listed = ", ".join(sorted(digests)) or "nothing"
        raise CacheEntryError(f"{DIGEST_FILE} lists {listed}, not {', '.join(ENTRY_FILES)}")
    if text != digest_file_text(digests):  # any other byte (a vertical tab for a newline...) is damage too
        raise CacheEntryError(f"{DIGEST_FILE} is not byte for byte the file cnnbench writes")
    return digests


def digest_file_text(digests: dict[str, str]) -> str:
    """The SHA256SUMS file cnnbench writes: one '<sha256>  <file>' line per entry file, in ENTRY_FILES order."""
    return "".join(f"{digests[name]}  {name}\n" for name in ENTRY_FILES)


def _check_meta(meta: Any, key: str) -> dict[str, Any]:
    """``meta`` if it is this key's complete metadata, else ``CacheEntryError`` saying what is wrong."""
    if not isinstance(meta, dict):
        raise CacheEntryError(f"{META_FILE} is not a JSON object")
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        raise CacheEntryError(f"{META_FILE} is for another cache format or source")
    for field, kind in (("shapes", list), ("dtypes", str), ("sizes", int)):
        table = meta.get(field)
        names = ARRAY_NAMES if field != "sizes" else ENTRY_FILES[: len(ARRAY_NAMES)]
        if not isinstance(table, dict) or not all(isinstance(table.get(name), kind) for name in names):
            raise CacheEntryError(f"{META_FILE} lacks valid {field}")
    if not all(isinstance(n, int) and n >= 0 for name in ARRAY_NAMES for n in meta["shapes"][name]):
        raise CacheEntryError(f"{META_FILE} has an invalid shape")
    if not isinstance(meta.get("verified"), bool):
        raise CacheEntryError(f"{META_FILE} lacks whether the source was verified")
    return meta


def read_meta(dataset_name: str, key: str) -> dict[str, Any] | None:
    """The metadata of the entry for ``key``, or None (cheap: one small file, not checked against its digest)."""
    try:
        return _check_meta(json.loads(_read_small(_entry(dataset_name, key) / META_FILE)), key)
    except (CacheEntryError, ValueError, RecursionError):
        return None


def _map_array(path: Path, meta: dict[str, Any], name: str) -> np.ndarray:
    """The array in ``path``, memory-mapped, if its header agrees with the metadata."""
    try:
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001  (numpy's header parser raises ValueError, TypeError, TokenError...)
        raise CacheEntryError(one_line(f"{path.name} cannot be read as .npy ({type(exc).__name__}: {exc})")) from None
    shape, dtype = meta["shapes"][name], meta["dtypes"][name]
    if list(array.shape) != shape or str(array.dtype) != dtype or not array.flags.c_contiguous:
        raise CacheEntryError(
            f"{path.name} holds a {'x'.join(map(str, array.shape))} {array.dtype} array, "
            f"the metadata says shape {'x'.join(map(str, shape))} {dtype}"
        )
    return array


def _verify_entry(folder: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The entry's arrays and metadata after every check; ``CacheEntryError`` on the first that fails."""
    if not folder.is_dir():
        raise CacheEntryError("not a folder")
    digests = read_digest_file(folder)
    meta_bytes = _read_small(folder / META_FILE)
    if hashlib.sha256(meta_bytes).hexdigest() != digests[META_FILE]:
        raise CacheEntryError(f"{META_FILE} does not match its recorded sha256")
    try:
        meta = _check_meta(json.loads(meta_bytes), key)
    except (ValueError, RecursionError):
        raise CacheEntryError(f"{META_FILE} is not valid JSON") from None
    paths = {name: folder / f"{name}.npy" for name in ARRAY_NAMES}
    for path in paths.values():  # sizes first: a truncated file is found without hashing anything
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CacheEntryError(f"{path.name} unreadable ({exc.strerror or exc})") from None
        if size != meta["sizes"][path.name]:
            raise CacheEntryError(f"{path.name} has {size} bytes, {meta['sizes'][path.name]} were written")
    arrays: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        try:
            actual = file_sha256(path)
        except (OSError, ValueError) as exc:
            raise CacheEntryError(f"{path.name} unreadable ({exc})") from None
        if actual != digests[path.name]:
            raise CacheEntryError(f"{path.name} does not match its recorded sha256")
        arrays[name] = _map_array(path, meta, name)
    return arrays, meta


def load(dataset_name: str, key: str) -> CacheHit | None:
    """The verified entry for ``key``; None when there is none; ``CacheEntryError`` when it is damaged."""
    folder = _entry(dataset_name, key)
    if not os.path.lexists(folder):
        return None
    start = time.perf_counter()
    try:
        arrays, meta = _verify_entry(folder, key)
    except CacheEntryError as exc:
        raise CacheEntryError(f"cached arrays at {folder}: {exc}") from None
    return CacheHit(arrays, meta, folder, time.perf_counter() - start)


class _HashingWriter:
    """A file wrapper that hashes what is written, so the recorded digest is of the bytes meant, not re-read."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def _write_array(path: Path, array: np.ndarray) -> tuple[str, int]:
    """Save ``array`` as .npy; its sha256 and size."""
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
    return writer.digest.hexdigest(), writer.size


def _remove(path: Path) -> None:
    """Remove a damaged entry, whatever it is (folder, file or link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_sound(dataset_name: str, key: str) -> bool:
    try:
        return load(dataset_name, key) is not None
    except CacheEntryError:
        return False


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
        digests, sizes = {}, {}
        for name in ARRAY_NAMES:
            digests[f"{name}.npy"], sizes[f"{name}.npy"] = _write_array(temp / f"{name}.npy", arrays[name])
        meta_bytes = json.dumps({**meta, "sizes": sizes}, indent=1, sort_keys=True).encode()
        (temp / META_FILE).write_bytes(meta_bytes)
        digests[META_FILE] = hashlib.sha256(meta_bytes).hexdigest()
        (temp / DIGEST_FILE).write_text(digest_file_text(digests))
        try:
            os.rename(temp, final)
        except OSError:
            if not _is_sound(dataset_name, key):  # a damaged leftover, not a concurrent writer's complete entry
                _remove(final)
                os.rename(temp, final)
        temp = None if not temp.exists() else temp
    except OSError as exc:
        from cnnbench.datasets.locate import CACHE_DIR_ENV

        why = exc.strerror or exc
        fix = f"set ${CACHE_DIR_ENV} to a writable folder"
        raise DatasetError(f"cannot write the dataset array cache at {base} ({why}); {fix}") from None
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
        _remove(entry)
