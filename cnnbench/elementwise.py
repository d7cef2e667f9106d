"""Element-wise NumPy work on big arrays, split over the cores: NumPy's loops release the GIL.

The parity check runs float64 arithmetic over the 3.2 M LeNet weights on one core while the others idle
(docs/performance.md#the-whole-run). Each function here takes the slices ``parts(n)`` returns and runs one
function per slice on a shared thread pool; element-wise results are bitwise those of one whole-array call,
and the callers combine reductions (max, all, first argmax) exactly.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")

#: Below this many elements per part, one thread does it all: a thread hand-off costs more than it saves.
MIN_PART = 1 << 18

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads: int | None = None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> None:
    """Use at most ``threads`` threads (``--threads``); None: every available core."""
    global _threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    _threads = threads


def threads() -> int:
    """How many threads ``run`` splits work over."""
    cores = available_cores()
    return min(cores, _threads) if _threads else cores


def parts(n: int) -> list[slice]:
    """Contiguous slices covering ``range(n)``, one per thread, none smaller than ``MIN_PART`` (at least one)."""
    count = max(1, min(threads(), n // MIN_PART))
    bounds = np.linspace(0, n, count + 1).astype(int)
    return [slice(int(start), int(stop)) for start, stop in itertools.pairwise(bounds)]


def run(function: Callable[[slice], T], n: int) -> list[T]:
    """``function(part)`` for each of ``parts(n)``, in order; on the thread pool when there is more than one."""
    pieces = parts(n)
    if len(pieces) == 1:
        return [function(pieces[0])]
    return list(_executor().map(function, pieces))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="cnnbench-elementwise")
        return _pool


def flat(array: npt.ArrayLike, dtype: Any = None) -> npt.NDArray[Any]:
    """``array`` as a 1-D C-order array: a view when it already is contiguous (and of ``dtype``)."""
    return np.asarray(array, dtype=dtype).reshape(-1)


def max_abs(array: npt.ArrayLike) -> float:
    """max |array| (NaN if any element is NaN; 0.0 for an empty array), without an array of absolute values."""
    values = flat(array)
    if not values.size:
        return 0.0

    return float(np.max(run(lambda piece: part_max_abs(values[piece]), values.size)))


def part_max_abs(chunk: npt.NDArray[Any]) -> float:
    """max |chunk| of one non-empty part (NaN if it holds one): the per-part step of ``max_abs``."""
    return float(np.maximum(chunk.max(), -chunk.min()))


def first_argmax(values: list[float]) -> int:
    """Index of the part whose maximum wins as ``np.argmax`` over the whole would: the first NaN, else the first max."""
    for index, value in enumerate(values):
        if value != value:  # NaN: np.argmax stops at the first one
            return index
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best
