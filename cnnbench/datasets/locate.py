"""Where dataset files are looked for, and where downloads and parsed arrays are cached.

Search order (the first folder holding a complete copy wins): ``--data-dir``,
``$CNNBENCH_DATA_DIR``, the user cache (``$CNNBENCH_CACHE_DIR`` or the platform's cache folder),
then system dataset folders such as ``/usr/share/datasets/<name>`` (Debian's
``dataset-fashion-mnist`` installs there). Everything here only stats paths: it must stay cheap
because ``cnnbench datasets`` and every worker process call it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnbench.config import DataConfig
from cnnbench.errors import DatasetError

DATA_DIR_ENV = "CNNBENCH_DATA_DIR"
#: Overrides the user cache folder (tests and CI point it at a temporary or cached folder).
CACHE_DIR_ENV = "CNNBENCH_CACHE_DIR"
#: 1/true/yes/on forbids downloads, like ``--offline``.
OFFLINE_ENV = "CNNBENCH_OFFLINE"
#: A base URL tried before a dataset's own URLs (an internal mirror for clusters and CI).
MIRROR_ENV = "CNNBENCH_DATASET_MIRROR"

#: Folders where operating-system packages put datasets, one sub-folder per dataset.
SYSTEM_DATA_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


@dataclass(frozen=True)
class SearchRoot:
    """A folder to search and how the user chose it (shown in messages and listings)."""

    path: Path
    origin: str
    #: Whether the dataset's files may sit directly in ``path`` (not only in ``path/<name>``).
    direct: bool


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(config: DataConfig) -> str | None:
    """Why downloads are forbidden (the flag or the variable), or None when they are allowed."""
    if config.offline:
        return "--offline"
    if _truthy(os.environ.get(OFFLINE_ENV)):
        return f"${OFFLINE_ENV}"
    return None


def cache_root() -> Path:
    """The cnnbench cache folder (not created here)."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cnnbench"))


def download_folder(dataset_name: str) -> Path:
    """Where downloaded files of ``dataset_name`` are kept; also searched as a data folder."""
    return cache_root() / "datasets" / dataset_name


def arrays_folder(dataset_name: str) -> Path:
    """Where the parsed arrays of ``dataset_name`` are cached as .npy files."""
    return cache_root() / "arrays" / dataset_name


def search_roots(config: DataConfig, dataset_name: str) -> list[SearchRoot]:
    """The folders searched for ``dataset_name``, in order. Raises for a ``--data-dir`` that is not a folder."""
    roots: list[SearchRoot] = []
    if config.data_dir:
        path = Path(config.data_dir).expanduser()
        if not path.is_dir():
            raise DatasetError(f"--data-dir {path} is not a folder")
        roots.append(SearchRoot(path, "--data-dir", direct=True))
    if os.environ.get(DATA_DIR_ENV):
        roots.append(SearchRoot(Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}", direct=True))
    roots.append(SearchRoot(download_folder(dataset_name), "cache", direct=True))
    roots.extend(SearchRoot(root, "system", direct=False) for root in SYSTEM_DATA_ROOTS)
    return roots


def candidate_folders(config: DataConfig, dataset_name: str, folder_names: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(folder, origin) pairs to look in: ``<root>/<folder name>`` for each name, then ``<root>`` itself."""
    folders: list[tuple[Path, str]] = []
    for root in search_roots(config, dataset_name):
        if root.origin == "cache":
            folders.append((root.path, root.origin))
            continue
        folders.extend((root.path / name, root.origin) for name in folder_names)
        if root.direct:
            folders.append((root.path, root.origin))
    return folders
