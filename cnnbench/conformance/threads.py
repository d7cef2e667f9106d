"""Threads honoured: process CPU time over wall time while a backend trains, against the threads it was given.

A backend's ``settings()`` reports its thread count itself; this measures it, so a row that claims
two threads and uses one core (or asks for one and takes them all) shows in the manifest and the kit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cnnbench.conformance.tolerances import THREADS_FLOOR, THREADS_SLACK


@dataclass
class ThreadUse:
    """CPU seconds (every thread of this process) and wall seconds over a measured stretch."""

    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def used(self) -> float | None:
        """Average busy threads: CPU time / wall time (None before anything was measured)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else None


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@contextmanager
def measure_threads() -> Iterator[ThreadUse]:
    """Measure the process's CPU and wall time over the ``with`` block (fills the yielded record at its end)."""
    use = ThreadUse()
    cpu, wall = _cpu_seconds(), time.perf_counter()
    try:
        yield use
    finally:
        use.cpu_s, use.wall_s = _cpu_seconds() - cpu, time.perf_counter() - wall


def threads_disagreement(requested: int | None, used: float | None, cores: int) -> str:
    """Why ``used`` threads do not honour ``requested`` (None: all ``cores``), or "" when they agree."""
    if used is None:
        return ""
    wanted = requested if requested is not None else cores
    if used > wanted + THREADS_SLACK:
        return (
            f"asked for {wanted} thread{'s' if wanted != 1 else ''}, the training call kept {used:.1f} busy: "
            "apply config.threads to every thread pool (intra-op, inter-op, BLAS)"
        )
    if wanted >= 2 and used < THREADS_FLOOR * min(wanted, cores):
        return (
            f"asked for {wanted} threads, the training call kept {used:.1f} busy: the thread setting is not "
            "applied (or the machine is busy)"
        )
    return ""
