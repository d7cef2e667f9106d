"""Datasets distributed as official files: located, downloaded, verified, parsed and cached.

A subclass declares its canonical files (names, sha256, sizes), where to download them
(official URL first, then mirrors), and a ``parse`` from canonical bytes to arrays; this class
does the rest, the same way for every such dataset:

1. locate a complete copy (``locate.py`` for the search order; loose files, raw or .gz, win
   over archives because they parse faster);
2. otherwise download into the cache, unless offline (then one message says where to put what);
3. on a cache hit (same source files, unchanged) map the arrays, check them against the sha256
   recorded when they were cached, and stop: this is what worker processes do;
4. otherwise, or when that check fails (one line on stderr says so), read the canonical bytes,
   verify each sha256, parse, check, and cache.
"""

from __future__ import annotations

import functools
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.datasets import cache
from cnnbench.datasets.archive import is_archive, read_bytes, read_members
from cnnbench.datasets.base import Dataset, DatasetArrays, check_arrays
from cnnbench.datasets.checksums import CanonicalFile, ChecksumError, verify_content
from cnnbench.datasets.download import download
from cnnbench.datasets.locate import (
    DATA_DIR_ENV,
    MIRROR_ENV,
    arrays_folder,
    candidate_folders,
    download_folder,
    offline_reason,
)
from cnnbench.errors import DatasetError


@dataclass(frozen=True)
class Download:
    """A file as served for download: a compressed canonical file or an archive of several."""

    filename: str
    #: Official URL first, then mirrors; each is tried in turn.
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """A complete copy of a dataset's files found on disk."""

    folder: Path
    #: How the folder was chosen: "--data-dir", "$CNNBENCH_DATA_DIR", "cache" or "system".
    origin: str
    #: The files actually read: loose canonical files (raw or .gz), or one archive.
    paths: tuple[Path, ...]

    @property
    def location(self) -> Path:
        return self.paths[0] if len(self.paths) == 1 else self.folder


def canonical_name(path: Path) -> str:
    """``train-images-idx3-ubyte.gz`` -> ``train-images-idx3-ubyte``."""
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, the raw file first."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


class FileDataset(Dataset):
    """A dataset made of official files. Subclasses declare the class attributes and ``parse``."""

    #: The canonical (decompressed) files, with their sha256.
    files: tuple[CanonicalFile, ...] = ()
    #: What can be downloaded; archives among them are also recognised when found on disk.
    downloads: tuple[Download, ...] = ()
    #: Names of the dataset's folder under a data root, e.g. ("cifar10", "cifar-10").
    folder_names: tuple[str, ...] = ()
    #: Sub-folders that may hold the files inside a dataset folder or archive, e.g. ("cifar-10-batches-bin",).
    content_folders: tuple[str, ...] = ()
    #: Bump when ``parse`` changes what it returns: cached arrays are then rebuilt.
    parser_version: int = 1
    homepage: str = ""

    @abstractmethod
    def parse(self, content: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test) from the canonical files' bytes, keyed by file name."""

    # -- locating -----------------------------------------------------------------------------

    def find_in(self, folder: Path) -> tuple[Path, ...] | None:
        """The files to read if ``folder`` holds a complete copy, else None. Only stats paths."""
        for sub in (*self.content_folders, ""):
            where = folder / sub if sub else folder
            paths = [find_file(where, f.name) for f in self.files]
            if all(paths):
                return tuple(paths)  # type: ignore[arg-type]
        for item in self.downloads:
            if is_archive(Path(item.filename)) and (folder / item.filename).is_file():
                return (folder / item.filename,)
        return None

    def locate(self, config: DataConfig) -> Source | None:
        for folder, origin in candidate_folders(config, self.name, self.folder_names):
            paths = self.find_in(folder)
            if paths:
                return Source(folder, origin, paths)
        return None

    # -- reading and verifying -----------------------------------------------------------------

    def _declared(self) -> dict[str, CanonicalFile]:
        return {f.name: f for f in self.files}

    def _max_sizes(self) -> dict[str, int]:
        return {f.name: f.size for f in self.files if f.size is not None}

    def read_content(self, paths: tuple[Path, ...]) -> tuple[dict[str, bytes], dict[str, str]]:
        """The canonical files' bytes and, for messages, where each came from."""
        wanted = set(self._declared())
        content: dict[str, bytes] = {}
        origins: dict[str, str] = {}
        prefixes = (*(f"{sub}/" for sub in self.content_folders), "")
        for path in paths:
            if is_archive(path):
                members = read_members(path, wanted, prefixes, max_sizes=self._max_sizes())
                missing = sorted(wanted - set(members))
                if missing:
                    raise DatasetError(
                        f"{path} lacks {', '.join(missing)}"
                        f" (expected under {' or '.join(p or 'the top' for p in prefixes)})"
                    )
                content.update(members)
                origins.update(dict.fromkeys(members, f"{path}"))
            else:
                content[canonical_name(path)] = read_bytes(path, max_bytes=self._max_sizes().get(canonical_name(path)))
                origins[canonical_name(path)] = str(path)
        return content, origins

    def verify(self, content: dict[str, bytes], origins: dict[str, str]) -> bool:
        """True when every file has a declared sha256 and all match; ``ChecksumError`` on a mismatch."""
        results = [
            verify_content(declared, content[name], origins.get(name, name))
            for name, declared in self._declared().items()
        ]
        return bool(results) and all(results)

    def _failing_paths(self, paths: tuple[Path, ...]) -> list[Path]:
        """Which of ``paths`` cannot be read or do not match their checksums (checked one by one)."""
        declared, bad = self._declared(), []
        for path in paths:
            try:
                content, origins = self.read_content((path,))
                for name, data in content.items():
                    verify_content(declared[name], data, origins[name])
            except DatasetError:
                bad.append(path)
        return bad

    # -- downloading ----------------------------------------------------------------------------

    def urls(self, item: Download) -> tuple[str, ...]:
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        own = f"{mirror.rstrip('/')}/{self.name}/{item.filename}" if mirror else None
        return (own, *item.urls) if own else item.urls

    def _check_download(self, item: Download, path: Path, url: str) -> None:
        """Accept a downloaded file only if its canonical content matches the declared sha256.

        Content that does not even decompress (a gzip CRC or archive failure) is a checksum
        failure too: the bytes are not those the dataset's authors published.
        """
        declared = self._declared()
        try:
            if is_archive(Path(item.filename)):
                prefixes = (*(f"{sub}/" for sub in self.content_folders), "")
                content = read_members(path, set(declared), prefixes, label=url, max_sizes=self._max_sizes())
                missing = sorted(set(declared) - set(content))
                if missing:
                    raise ChecksumError(f"{url} lacks {', '.join(missing)}")
            else:
                name = canonical_name(Path(item.filename))
                content = {name: read_bytes(path, label=url, max_bytes=self._max_sizes().get(name))}
        except ChecksumError:
            raise
        except DatasetError as exc:
            raise ChecksumError(str(exc)) from None
        for name, data in content.items():
            if name in declared:
                verify_content(declared[name], data, url)

    def fetch(self, config: DataConfig, progress: bool = True) -> Source:
        """Download the missing files into the cache and return them as a source."""
        reason = offline_reason(config)
        if reason or not self.downloads:
            raise DatasetError(self.missing_message(config, reason))
        folder = download_folder(self.name)
        for item in self.downloads:
            if self.find_in(folder):
                break  # complete (an archive made the remaining loose files unnecessary, or vice versa)
            dest = folder / item.filename
            if dest.is_file() or (not is_archive(dest) and find_file(folder, canonical_name(dest))):
                continue
            download(self.urls(item), dest, functools.partial(self._check_download, item), progress=progress)
        paths = self.find_in(folder)
        if not paths:
            raise DatasetError(f"downloaded into {folder} but the files are still incomplete")
        return Source(folder, "cache", paths)

    def expected_files_hint(self) -> str:
        archives = [item.filename for item in self.downloads if is_archive(Path(item.filename))]
        if archives:
            extracted = f" (or its extracted {self.content_folders[0]}/ folder)" if self.content_folders else ""
            return f"{' or '.join(archives)}{extracted}"
        return ", ".join(f"{f.name}.gz" for f in self.files) + " (or the same files uncompressed)"

    def missing_message(self, config: DataConfig, offline: str | None) -> str:
        searched = ", ".join(str(folder) for folder, _ in candidate_folders(config, self.name, self.folder_names))
        why = f"downloads are off ({offline})" if offline else "it cannot be downloaded"
        folder_name = self.folder_names[0] if self.folder_names else self.name
        return (
            f"{self.name}: files not found and {why};"
            f" put {self.expected_files_hint()} into {download_folder(self.name)}"
            f" (or a {folder_name}/ folder under --data-dir or ${DATA_DIR_ENV}); searched: {searched}"
        )

    # -- the cache ------------------------------------------------------------------------------

    def _cache_identity(self) -> dict[str, Any]:
        return {
            "parser": f"{type(self).__module__}.{type(self).__qualname__}/{self.parser_version}",
            "files": [[f.name, f.sha256] for f in self.files],
            "shape": list(self.input_shape),
            "classes": len(self.class_names),
        }

    def _cache_key(self, source: Source) -> str:
        try:
            return cache.cache_key(self.name, self._cache_identity(), source.paths)
        except OSError as exc:
            raise DatasetError(f"cannot read {source.location}: {exc.strerror or exc}") from None

    # -- the interface ----------------------------------------------------------------------------

    def check_options(self, config: DataConfig) -> None:
        if config.options:
            raise DatasetError(f"{self.name} takes no --dataset-option (got {', '.join(sorted(config.options))})")

    def load(self, config: DataConfig, progress: bool = True) -> DatasetArrays:
        try:
            return self._load(config, progress)
        except DatasetError as exc:
            message = str(exc)
            if not message.startswith(f"{self.name}: "):
                raise type(exc)(f"{self.name}: {message}") from None
            raise

    def _load(self, config: DataConfig, progress: bool) -> DatasetArrays:
        self.check_options(config)
        source = self.locate(config) or self.fetch(config, progress)
        key = self._cache_key(source)
        try:
            hit = cache.load(self.name, key)
        except cache.CacheEntryError as exc:
            cache.notice(f"{self.name}: {exc}; rebuilding it from {source.location}")
            hit = None
        if hit is not None:
            checked = "cached arrays matched the sha256 recorded when they were parsed"
            how = "from source files matching their declared sha256" if hit.meta["verified"] else "(unverified source)"
            return self._arrays(source, hit, hit.meta["verified"], f"{checked} {how}")
        verified = self._build(source, key)
        try:
            hit = cache.load(self.name, key)
        except cache.CacheEntryError as exc:
            raise DatasetError(f"the array cache could not be read back after writing it ({exc})") from None
        if hit is None:
            raise DatasetError(f"the array cache under {arrays_folder(self.name)} vanished after writing it")
        how = "source files matched their declared sha256" if verified else "source not verified (no declared sha256)"
        return self._arrays(source, hit, verified, f"parsed in this load; {how}")

    def _build(self, source: Source, key: str) -> bool:
        """Read, verify, parse, check and cache the source; whether its files matched declared checksums."""
        try:
            content, origins = self.read_content(source.paths)
            verified = self.verify(content, origins)
        except DatasetError as exc:
            if source.origin != "cache":
                raise  # a user's file: reported, never deleted
            # A file in our download folder went bad: never keep it as if valid.
            bad = self._failing_paths(source.paths)
            for path in bad:
                path.unlink(missing_ok=True)
            names = ", ".join(p.name for p in bad)
            deleted = f"; deleted {names} from the cache, run again to download afresh" if bad else ""
            raise type(exc)(f"{exc}{deleted}") from None
        x_train, y_train, x_test, y_test = self.parse(content)
        del content
        check_arrays(self, x_train, y_train, x_test, y_test)
        labels = {"y_train": y_train.astype(np.int64), "y_test": y_test.astype(np.int64)}
        arrays = {"x_train": x_train, "x_test": x_test, **labels}
        meta = {"dataset": self.name, "source": str(source.location), "origin": source.origin, "verified": verified}
        cache.store(self.name, key, arrays, meta)
        return verified

    @staticmethod
    def _arrays(source: Source, hit: cache.CacheHit, verified: bool, verification: str) -> DatasetArrays:
        arrays = hit.arrays
        return DatasetArrays(
            arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
            source=str(source.location), verified=verified, cache=str(hit.folder), verification=verification,
        )  # fmt: skip

    def status(self, config: DataConfig) -> dict[str, Any]:
        base = {"n_train": self.n_train, "n_test": self.n_test, "files": [f.name for f in self.files]}
        try:
            source = self.locate(config)
            if source is None:
                offline = offline_reason(config)
                if offline or not self.downloads:
                    reason = (
                        f"offline ({offline}): put {self.expected_files_hint()} into {download_folder(self.name)}"
                        if offline
                        else "no download URL"
                    )
                else:
                    reason = (
                        f"will be downloaded from {self.urls(self.downloads[0])[0]} into {download_folder(self.name)}"
                    )
                return {
                    **base,
                    "available": False,
                    "location": "missing",
                    "reason": reason,
                    "verified": None,
                    "cached": False,
                    "size_bytes": 0,
                }
            meta = cache.read_meta(self.name, self._cache_key(source))
            size = sum(path.stat().st_size for path in source.paths)
        except (DatasetError, OSError) as exc:
            return {
                **base,
                "available": False,
                "location": "error",
                "reason": str(exc),
                "verified": None,
                "cached": False,
                "size_bytes": 0,
            }
        return {
            **base,
            "available": True,
            "location": str(source.location),
            "origin": source.origin,
            "size_bytes": size,
            "verified": bool(meta["verified"]) if meta else None,
            "cached": meta is not None,
            "reason": "" if meta else "not verified yet (verified and cached on first load)",
        }
