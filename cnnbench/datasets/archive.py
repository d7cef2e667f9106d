"""Reading files out of tar archives (e.g. ``cifar-10-binary.tar.gz``) without trusting them.

Archives are never extracted to disk: the wanted members are read into memory, which is all the
parser needs. Every member is still checked first, and an archive holding any absolute path,
``..`` component, link pointing outside the archive's root, or device/fifo is rejected as a whole:
such an archive is not an official file, and extracting it elsewhere would be unsafe.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from pathlib import Path

from cnnbench.errors import DatasetError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


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
            raise DatasetError(f"{archive}: unsafe member {member.name!r} (link to {member.linkname!r} outside the archive); archive rejected")
    elif not (member.isfile() or member.isdir()):
        raise DatasetError(f"{archive}: unsupported member {member.name!r} (device, fifo or other special file); archive rejected")
    return posixpath.normpath(name)


def read_members(path: Path, wanted: set[str], prefixes: tuple[str, ...] = ("",), label: str | None = None) -> dict[str, bytes]:
    """The content of each wanted file found as ``<prefix><name>`` in the archive at ``path``.

    ``label`` names the archive in messages (default: its file name).
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
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                if len(data) != member.size:
                    raise DatasetError(f"{label}: member {member_path} is truncated ({len(data)} of {member.size} bytes)")
                found[name] = data
    except DatasetError:
        raise
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{label}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return found
