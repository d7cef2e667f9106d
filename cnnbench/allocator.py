"""The memory allocator every worker runs with: found, chosen (``--allocator``) and recorded in the manifest.

The allocator is set the same for every backend, through the worker's environment before it starts:
``LD_PRELOAD`` of a malloc library, or ``GLIBC_TUNABLES`` for glibc's own. ``auto`` takes the first
available in ``AUTO_ORDER``; the figures behind that order are in docs/performance.md#allocator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cnnbench.errors import UsageError

SYSTEM = "system"
GLIBC_TUNED = "glibc-tuned"
MIMALLOC = "mimalloc"
TCMALLOC = "tcmalloc"
JEMALLOC = "jemalloc"
AUTO = "auto"
#: What ``--allocator`` takes.
CHOICES = (AUTO, SYSTEM, GLIBC_TUNED, MIMALLOC, TCMALLOC, JEMALLOC)
#: ``auto`` takes the first of these that is available (measured order: docs/performance.md#allocator).
AUTO_ORDER = (TCMALLOC, MIMALLOC, GLIBC_TUNED)

#: Where Debian's packages put the libraries, by architecture.
_MULTIARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
#: Debian's libtcmalloc-minimal4 and libjemalloc2.
SYSTEM_LIBRARIES: dict[str, tuple[str, ...]] = {
    TCMALLOC: tuple(f"{folder}/libtcmalloc_minimal.so.4" for folder in _MULTIARCH),
    JEMALLOC: tuple(f"{folder}/libjemalloc.so.2" for folder in _MULTIARCH),
}
#: The PyPI wheel that ships mimalloc's shared library (no Python module: found through its file list).
MIMALLOC_DISTRIBUTION = "cmeel-mimalloc"
MIMALLOC_LIBRARY_NAMES = ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so")
#: glibc malloc that keeps freed memory instead of handing it back to the kernel: no mmap'd chunks (buffers over
#: 32 MiB, glibc's highest mmap threshold, are otherwise mapped and zeroed afresh on every call, e.g. PyTorch's
#: batch-1000 evaluation), no trimming, 64 MiB of padding per heap growth (docs/performance.md#allocator).
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=67108864"
#: mimalloc keeps freed pages too (its default purges them after 10 ms, to be faulted in again by the next step).
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}
#: How to install each library, for the error when it was asked for and is missing.
INSTALL_HINTS = {
    MIMALLOC: "pip install cmeel-mimalloc (in cnnbench's 'all' and 'fast-malloc' extras)",
    TCMALLOC: "apt-get install libtcmalloc-minimal4",
    JEMALLOC: "apt-get install libjemalloc2",
}


@dataclass(frozen=True)
class Allocator:
    """One allocator as a worker gets it: its name, the environment that selects it, and how the manifest says it."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    #: The preloaded library, None for glibc.
    library: str | None = None
    version: str | None = None

    def describe(self) -> str:
        """The manifest's ``allocator`` entry, e.g. ``mimalloc 3.4.3 (/path/libmimalloc.so.3)``."""
        if self.name == SYSTEM:
            return "system (glibc malloc)"
        if self.name == GLIBC_TUNED:
            return f"glibc malloc, GLIBC_TUNABLES={self.env.get('GLIBC_TUNABLES', '')}"
        version = f" {self.version}" if self.version else ""
        return f"{self.name}{version} ({self.library})"

    def manifest(self) -> dict[str, Any]:
        """Entries for the fairness manifest: the choice, and the exact variables the worker got."""
        return {"allocator": self.describe(), "allocator_name": self.name, "allocator_env": dict(self.env)}


def _first_file(paths: Sequence[str]) -> str | None:
    return next((path for path in paths if os.path.isfile(path)), None)


def find_mimalloc() -> tuple[str, str] | None:
    """(library path, version) of the mimalloc that the ``cmeel-mimalloc`` wheel installed, or None."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(MIMALLOC_DISTRIBUTION)
    except PackageNotFoundError:
        return None
    by_name: dict[str, str] = {}
    for file in dist.files or ():
        name = file.name
        if name in MIMALLOC_LIBRARY_NAMES and name not in by_name:
            by_name[name] = str(dist.locate_file(file))
    for name in MIMALLOC_LIBRARY_NAMES:
        path = by_name.get(name)
        if path and os.path.isfile(path):
            return os.path.realpath(path), dist.version
    return None


def find_libraries() -> dict[str, tuple[str, str | None]]:
    """Every preloadable allocator on this machine: name -> (library path, version if known)."""
    found: dict[str, tuple[str, str | None]] = {}
    mimalloc = find_mimalloc()
    if mimalloc:
        found[MIMALLOC] = mimalloc
    for name, candidates in SYSTEM_LIBRARIES.items():
        path = _first_file(candidates)
        if path:
            found[name] = (path, None)
    return found


def glibc_available() -> bool:
    """Whether this process runs on glibc (GLIBC_TUNABLES means nothing to musl or macOS)."""
    import platform

    return platform.libc_ver()[0] == "glibc"


def available(
    libraries: Mapping[str, tuple[str, str | None]] | None = None,
    glibc: bool | None = None,
) -> dict[str, Allocator]:
    """The allocators a worker can get here, by name (``libraries``/``glibc``: what to assume instead of looking)."""
    libraries = find_libraries() if libraries is None else libraries
    glibc = glibc_available() if glibc is None else glibc
    choices = {SYSTEM: Allocator(SYSTEM)}
    if glibc:
        choices[GLIBC_TUNED] = Allocator(GLIBC_TUNED, {"GLIBC_TUNABLES": GLIBC_TUNABLES})
    for name, (path, version) in libraries.items():
        extra = MIMALLOC_ENV if name == MIMALLOC else {}
        choices[name] = Allocator(name, {"LD_PRELOAD": path, **extra}, path, version)
    return choices


def resolve(choice: str, find: Callable[[], dict[str, Allocator]] | None = None) -> Allocator:
    """The allocator ``--allocator choice`` means here (``find``: what is available, else looked up); UsageError."""
    if choice not in CHOICES:
        raise UsageError(f"unknown allocator {choice!r}; choose from: {', '.join(CHOICES)}")
    found = (find or available)()
    if choice == AUTO:
        return next((found[name] for name in AUTO_ORDER if name in found), found[SYSTEM])
    if choice not in found:
        hint = INSTALL_HINTS.get(choice, "it needs glibc")
        raise UsageError(f"allocator {choice} is not available here ({hint}); available: {', '.join(found)}")
    return found[choice]


def environment(
    allocator: Allocator,
    inherited: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The worker's allocator variables and manifest entries; an inherited LD_PRELOAD is kept after ours, and said."""
    inherited = os.environ if inherited is None else inherited
    env = dict(allocator.env)
    manifest = allocator.manifest()
    preload = inherited.get("LD_PRELOAD", "").strip()
    if preload:
        manifest["inherited_ld_preload"] = preload
        if "LD_PRELOAD" in env and preload != env["LD_PRELOAD"]:
            env["LD_PRELOAD"] = f"{env['LD_PRELOAD']} {preload}"  # the first malloc symbol wins: ours
    tunables = inherited.get("GLIBC_TUNABLES", "").strip()
    if tunables and "GLIBC_TUNABLES" not in env:
        manifest["inherited_glibc_tunables"] = tunables
    return env, manifest
