"""sha256 verification of a dataset's canonical (decompressed) files.

The checksums are taken over the canonical content, not the compressed bytes: re-compressed
copies (Debian's packages, re-made archives) are accepted, while any changed pixel is not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cnnbench.errors import DatasetError


class ChecksumError(DatasetError):
    """A file's content does not match the dataset's declared sha256."""


@dataclass(frozen=True)
class CanonicalFile:
    """One official file of a dataset as its authors distribute it, decompressed."""

    name: str
    #: sha256 of the decompressed content; None for a plugin dataset that declares none.
    sha256: str | None = None
    #: Decompressed size in bytes, for listings (and a quick sanity check before hashing).
    size: int | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_content(expected: CanonicalFile, data: bytes, where: str) -> bool:
    """True when ``data`` matches the declared sha256; False when none is declared.

    Raises ``ChecksumError`` naming the file, ``where`` it came from, and both hashes.
    """
    if expected.sha256 is None:
        return False
    actual = sha256_hex(data)
    if actual != expected.sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {expected.name} (from {where}): expected {expected.sha256}, got {actual}"
            f"{'' if expected.size in (None, len(data)) else f' ({len(data)} bytes, expected {expected.size})'}"
        )
    return True
