"""Reading dataset files as published (raw, gzip-compressed, or in a tar archive) without trusting them.

Reads are bounded by the dataset's declared sizes, so a hostile mirror cannot exhaust memory
with a decompression bomb. Archives are never extracted to disk: the wanted members are read into
memory, which is all the parser needs. Every member is still checked first, and an archive holding any absolute path,
``..`` component, link pointing outside the archive's root, or device/fifo is rejected as a whole:
such an archive is not an official file, and extracting it elsewhere would be unsafe.
"""

from __future__ import annotations

import gzip
import posixpath
import tarfile
import zlib
from pathlib import Path

from cnnbench.errors import DatasetError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def read_bytes(path: Path, label: str | None = None, max_bytes: int | None = None) -> bytes:
    """The decompressed content of ``path`` (gzip detected by its magic bytes, not its name).

    ``label`` names the file in messages (e.g. a download's URL instead of its temporary file);
    content longer than ``max_bytes`` is refused before it is all in memory.
    """
    name = label or str(path)
    limit = -1 if max_bytes is None else max_bytes + 1
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if compressed:
                try:
                    with gzip.GzipFile(fileobj=handle) as unzipped:
                        data = unzipped.read(limit)
                except (OSError, EOFError, zlib.error) as exc:
                    raise DatasetError(f"{name}: corrupt or truncated gzip data ({exc})") from None
            else:
                data = handle.read(limit)
    except OSError as exc:
        raise DatasetError(f"cannot read {name}: {exc.strerror or exc}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DatasetError(f"{name}: more than the expected {max_bytes} bytes (not the published file)")
    return data


def _escapes_root(path: str) -> bool:
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../") or posixpath.isabs(normal)


def check_member(member: tarfile.TarInfo, archive: str) -> str:
    """The member's normalised path; ``DatasetError`` when it could write or point outside the archive's root."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{archive}: unsafe member {member.name!r} (absolute path); archive rejected")
    if ".." in name.split("/"):
        raise DatasetError(f"{archive}: unsafe member {member.name!r} ('..' in its path); archive rejected")
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        # A symlink resolves from its own folder, a hard link from the archive's root.
        resolved = posixpath.join(posixpath.dirname(name), target) if member.issym() else target
        if target.startswith("/") or _escapes_root(resolved):
            raise DatasetError(
                f"{archive}: unsafe member {member.name!r} (link to {member.linkname!r} outside the archive);"
                " archive rejected"
            )
    elif not (member.isfile() or member.isdir()):
        raise DatasetError(
            f"{archive}: unsupported member {member.name!r} (device, fifo or other special file); archive rejected"
        )
    return posixpath.normpath(name)


def read_members(
    path: Path,
    wanted: set[str],
    prefixes: tuple[str, ...] = ("",),
    label: str | None = None,
    max_sizes: dict[str, int] | None = None,
) -> dict[str, bytes]:
    """The content of each wanted file found as ``<prefix><name>`` in the archive at ``path``.

    ``label`` names the archive in messages (default: its file name); a wanted member larger
    than its ``max_sizes`` entry is refused before it is read.
    All members are checked (see ``check_member``), including those not wanted. Missing wanted
    files are simply absent from the result; the caller names them.
    """
    label = label or path.name
    found: dict[str, bytes] = {}
    paths = {prefix + name: name for name in wanted for prefix in prefixes}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                member_path = check_member(member, label)
                name = paths.get(member_path)
                if name is None or not member.isfile():
                    continue
                if name in found:
                    raise DatasetError(f"{label}: {name} appears twice in the archive; archive rejected")
                if max_sizes and name in max_sizes and member.size > max_sizes[name]:
                    raise DatasetError(
                        f"{label}: member {member_path} has {member.size} bytes,"
                        f" more than the expected {max_sizes[name]}"
                    )
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                if len(data) != member.size:
                    raise DatasetError(
                        f"{label}: member {member_path} is truncated ({len(data)} of {member.size} bytes)"
                    )
                found[name] = data
    except DatasetError:
        raise
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{label}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return found
