"""This machine's fp32 matmul ceiling, measured and cached: the yardstick for efficiency.

A backend's achieved GFLOP/s is the spec's training FLOPs per sample times its steady-state
samples/s; dividing by the ceiling says how much of the machine it uses. The ceiling is the best
of the available BLAS libraries (PyTorch's and NumPy's) on a square fp32 GEMM, with the run's
thread count, in a fresh process (so thread pools start as a backend's would).

A cached value is only trusted while it is fresh and was measured on a quiet machine: each entry
records when it was measured and the load average around the probe, and an entry that is old or
was measured under load is measured again. A run whose backend beats the ceiling re-measures it
(see ``plausible``), since a ceiling measured under load understates the machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cnnbench import environment

#: Matrix size: large enough to reach the BLAS's peak, small enough to take a few seconds.
GEMM_SIZE = 2048
REPEATS = 5
#: Older cached ceilings are measured again: a BLAS, kernel or VM host may have changed since.
MAX_AGE_S = 7 * 24 * 3600
#: A probe run while the 1-minute load average exceeded this many runnable tasks per core did not
#: have the cores to itself; its figure is kept for this run but measured again next time.
LOADED_PER_CORE = 1.0

_PROBE = r"""
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]  # the current directory (before 3.11's PYTHONSAFEPATH): a numpy/ or json.py there would shadow
import json, time
n, repeats = int(sys.argv[1]), int(sys.argv[2])
best = {}
def bench(name, mm, sync=lambda: None):
    mm(); sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); mm(); sync(); times.append(time.perf_counter() - t)
    best[name] = 2 * n**3 / sorted(times)[len(times) // 2] / 1e9
try:
    import numpy as np
    a = np.random.default_rng(0).random((n, n), dtype=np.float32); b = a.copy()
    bench("numpy", lambda: a @ b)
except Exception as exc:
    print(exc, file=sys.stderr)
try:
    import torch
    ta = torch.rand(n, n); tb = torch.rand(n, n)
    bench("torch", lambda: ta @ tb)
except Exception as exc:
    print(exc, file=sys.stderr)
print(json.dumps(best))
"""


def cache_file() -> Path:
    """Where ceilings are cached: per user, beside the dataset cache."""
    from platformdirs import user_cache_dir

    root = os.environ.get("CNNBENCH_CACHE_DIR") or user_cache_dir("cnnbench")
    return Path(root) / "matmul-ceiling.json"


def _key(threads: int) -> str:
    return f"{environment.cpu_model()}|{os.cpu_count()}|threads={threads}"


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def measure(threads: int) -> dict[str, Any]:
    """Run the GEMM probe in a fresh process with ``threads`` threads; GFLOP/s per library."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "PYTHONSAFEPATH": "1",  # nothing in the current directory shadows the libraries measured
    }
    load_before = load_average()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(GEMM_SIZE), str(REPEATS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    per_library = json.loads(lines[-1]) if lines else {}
    best = max(per_library.items(), key=lambda kv: kv[1]) if per_library else (None, None)
    return {
        "gflops": best[1],
        "library": best[0],
        "per_library": per_library,
        "threads": threads,
        "size": GEMM_SIZE,
        "measured_at": time.time(),
        "load_1m": load_before,
        "cores": os.cpu_count(),
    }


def was_loaded(entry: dict[str, Any]) -> bool:
    """Whether the probe shared the machine: more runnable tasks than cores before it started."""
    load, cores = entry.get("load_1m"), entry.get("cores") or os.cpu_count() or 1
    return load is None or not isinstance(load, (int, float)) or load > LOADED_PER_CORE * cores


def is_trusted(entry: dict[str, Any], now: float | None = None) -> bool:
    """A cached entry is reused only when it is a finite positive figure, fresh and measured quietly."""
    gflops, measured_at = entry.get("gflops"), entry.get("measured_at")
    if not isinstance(gflops, (int, float)) or not math.isfinite(gflops) or gflops <= 0:
        return False
    if not isinstance(measured_at, (int, float)):
        return False  # written by an older cnnbench that did not record when or under what load
    age = (time.time() if now is None else now) - measured_at
    return 0 <= age <= MAX_AGE_S and not was_loaded(entry)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(path: Path, cached: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cached, indent=2))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # an unwritable cache only costs a re-measurement next time


def ceiling(threads: int, refresh: bool = False) -> dict[str, Any] | None:
    """The cached ceiling for this machine and thread count, measured again when absent, stale,
    measured under load, or asked."""
    path = cache_file()
    cached = _read_cache(path)
    key = _key(threads)
    entry = cached.get(key)
    if isinstance(entry, dict) and not refresh and is_trusted(entry):
        return entry
    try:
        value = measure(threads)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if value["gflops"] is None:
        return None
    cached[key] = value
    _write_cache(path, cached)
    return value


def plausible(ceiling_entry: dict[str, Any] | None, achieved_gflops: float | None) -> bool:
    """False when a backend's achieved GFLOP/s beats the ceiling: the ceiling is understated."""
    if not ceiling_entry or achieved_gflops is None:
        return True
    gflops = ceiling_entry.get("gflops")
    return not isinstance(gflops, (int, float)) or achieved_gflops <= gflops


def efficiency(
    flops_per_sample: float | None, samples_per_s: float | None, ceiling_gflops: float | None
) -> tuple[float | None, float | None]:
    """(achieved GFLOP/s, fraction of the ceiling); None where unknown."""
    if not flops_per_sample or not samples_per_s:
        return None, None
    achieved = flops_per_sample * samples_per_s / 1e9
    return achieved, (achieved / ceiling_gflops if ceiling_gflops else None)
