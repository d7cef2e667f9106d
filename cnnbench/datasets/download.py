"""Downloading a dataset file: official URL first, then mirrors; nothing kept unless it checks out.

Each attempt writes to a hidden temporary file next to the destination; the file is renamed to
its final name only after ``check`` (the dataset's sha256 verification) accepted it, so an
interrupted transfer or a corrupted body never looks like a complete, valid file.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

from cnnbench.datasets.checksums import ChecksumError
from cnnbench.errors import DatasetError

if TYPE_CHECKING:
    from rich.progress import Progress

ALLOWED_SCHEMES = ("https", "http", "file")
CHUNK_BYTES = 1 << 20
#: A temporary download file older than this was left by a killed process.
STALE_PART_S = 24 * 3600


class TransferError(Exception):
    """The server or the network failed this attempt; the next mirror may work."""


def ensure_folder(folder: Path, purpose: str = "dataset cache") -> Path:
    """Create ``folder`` (and parents) or raise a ``DatasetError`` saying how to fix it."""
    from cnnbench.datasets.locate import CACHE_DIR_ENV

    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise DatasetError(
            f"cannot write the {purpose} at {folder} ({exc.strerror or exc}); set ${CACHE_DIR_ENV} to a writable folder"
        ) from None
    return folder


def remove_stale_parts(folder: Path) -> None:
    """Delete temporary files that killed downloads left in ``folder`` (never a live one)."""
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:
            pass


def _progress(enabled: bool) -> Progress:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _fetch(url: str, out: BinaryIO, label: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into the open file ``out``; ``TransferError`` for any network-side failure."""
    import http.client  # here, not at the top: workers import this module and never download
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "cnnbench (dataset download)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, _progress(progress) as bar:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            task = bar.add_task(label, total=total)
            received = 0
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
                    raise TransferError(f"transfer failed after {received} bytes ({exc})") from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(task, advance=len(chunk))
            if total is not None and received != total:
                raise TransferError(f"transfer cut off after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"{exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise TransferError(f"{type(exc).__name__}: {exc}") from None


def download(
    urls: Sequence[str], dest: Path, check: Callable[[Path, str], None], *, progress: bool = True, timeout: float = 60.0
) -> str:
    """Fetch the first URL that yields a file ``check`` accepts, into ``dest``; return that URL.

    ``check(path, url)`` raises ``DatasetError`` (e.g. ``ChecksumError``) to reject a file. On failure the
    error lists every URL tried and why; a checksum failure is raised as ``ChecksumError``.
    """
    ensure_folder(dest.parent)
    remove_stale_parts(dest.parent)
    failures: list[str] = []
    checksum_failed = False
    for url in urls:
        scheme = urlparse(url).scheme
        if scheme not in ALLOWED_SCHEMES:
            failures.append(f"{url}: unsupported URL scheme {scheme!r}")
            continue
        try:
            fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise DatasetError(f"cannot write the dataset cache at {dest.parent} ({exc.strerror or exc})") from None
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, dest.name, progress, timeout)
            check(temp, url)
            os.replace(temp, dest)
            return url
        except TransferError as exc:
            failures.append(f"{url}: {exc}")
        except ChecksumError as exc:
            checksum_failed = True
            failures.append(str(exc) if url in str(exc) else f"{url}: {exc}")
        except DatasetError as exc:
            failures.append(str(exc) if url in str(exc) else f"{url}: {exc}")
        except OSError as exc:  # writing the temporary file: disk full, folder removed...
            raise DatasetError(f"cannot write {dest} ({exc.strerror or exc})") from None
        finally:
            temp.unlink(missing_ok=True)
    error = ChecksumError if checksum_failed else DatasetError
    raise error(
        f"could not download {dest.name}; tried " + "; ".join(failures)
        if failures
        else f"no URL to download {dest.name} from"
    )
