"""This machine's fp32 matmul ceiling, measured once and cached: the yardstick for efficiency.

A backend's achieved GFLOP/s is the spec's training FLOPs per sample times its steady-state
samples/s; dividing by the ceiling says how much of the machine it uses. The ceiling is the best
of the available BLAS libraries (PyTorch's and NumPy's) on a square fp32 GEMM, with the run's
thread count, in a fresh process (so thread pools start as a backend's would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cnnbench import environment

#: Matrix size: large enough to reach the BLAS's peak, small enough to take a few seconds.
GEMM_SIZE = 2048
REPEATS = 5

_PROBE = r"""
import json, sys, time
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
    from platformdirs import user_cache_dir

    root = os.environ.get("CNNBENCH_CACHE_DIR") or user_cache_dir("cnnbench")
    return Path(root) / "matmul-ceiling.json"


def _key(threads: int) -> str:
    return f"{environment.cpu_model()}|{os.cpu_count()}|threads={threads}"


def measure(threads: int) -> dict:
    """Run the GEMM probe in a fresh process with ``threads`` threads; GFLOP/s per library."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(GEMM_SIZE), str(REPEATS)], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.strip().splitlines()
    per_library = json.loads(lines[-1]) if lines else {}
    best = max(per_library.items(), key=lambda kv: kv[1]) if per_library else (None, None)
    return {"gflops": best[1], "library": best[0], "per_library": per_library, "threads": threads, "size": GEMM_SIZE}


def ceiling(threads: int, refresh: bool = False) -> dict | None:
    """The cached ceiling for this machine and thread count, measuring it when absent or asked."""
    path = cache_file()
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}
    key = _key(threads)
    if key in cached and not refresh:
        return cached[key]
    try:
        value = measure(threads)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None
    if value["gflops"] is None:
        return None
    cached[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return value


def efficiency(flops_per_sample: float | None, samples_per_s: float | None, ceiling_gflops: float | None) -> tuple[float | None, float | None]:
    """(achieved GFLOP/s, fraction of the ceiling); None where unknown."""
    if not flops_per_sample or not samples_per_s:
        return None, None
    achieved = flops_per_sample * samples_per_s / 1e9
    return achieved, (achieved / ceiling_gflops if ceiling_gflops else None)
