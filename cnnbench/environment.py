"""The machine a result was measured on: without it a number means nothing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cnnbench import __version__
from cnnbench.backend import distribution_version
from cnnbench.frameworks import TF_DISTRIBUTIONS

FRAMEWORK_DISTRIBUTIONS = ("torch", *TF_DISTRIBUTIONS, "keras", "jax", "jaxlib", "optax", "numpy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (avx2, avx512f, ...); empty where /proc/cpuinfo has none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:  # x86's "flags", Arm's "Features"
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


#: The widest x86 vector extension first: a figure from one of these hosts is not comparable with another's.
VECTOR_EXTENSIONS = ("avx512f", "avx2", "avx", "sse4_2")


def cpu_vector_extension(flags: frozenset[str] | None = None) -> str | None:
    """The widest x86 vector extension the CPU has (``VECTOR_EXTENSIONS``), None when unknown or not x86."""
    flags = cpu_flags() if flags is None else flags
    return next((name for name in VECTOR_EXTENSIONS if name in flags), None)


def memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    # No psutil, a platform it does not support (NotImplementedError), or no readable /proc: unknown, not fatal.
    except (ImportError, RuntimeError, OSError):
        return None


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the checkout cnnbench runs from (with ``-dirty``), or None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent.parent
    if not (where / ".git").exists() or not shutil.which("git"):
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (name, driver, memory); empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def collect() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_vector_extension": cpu_vector_extension(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cnnbench": __version__,
        "git_commit": git_commit(),
        "frameworks": {name: v for name in FRAMEWORK_DISTRIBUTIONS if (v := distribution_version(name))},
        "gpus": gpus(),
    }
