"""The matmul ceiling is reused only while fresh and measured quietly; a beaten ceiling is implausible."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cnnbench import ceiling


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path))
    return ceiling.cache_file()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the GEMM subprocess by a fixed quiet measurement; counts the calls."""
    calls: list[int] = []

    def fake(threads: int) -> dict[str, Any]:
        calls.append(threads)
        return {"gflops": 200.0, "library": "numpy", "per_library": {"numpy": 200.0}, "threads": threads,
                "size": ceiling.GEMM_SIZE, "measured_at": time.time(), "load_1m": 0.1, "cores": 2}

    monkeypatch.setattr(ceiling, "measure", fake)
    return calls


def _store(cache: Path, **entry: Any) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({ceiling._key(2): {"threads": 2, "size": ceiling.GEMM_SIZE, **entry}}))


def test_a_fresh_quiet_entry_is_reused(cache: Path, probe: list[int]) -> None:
    _store(cache, gflops=190.0, measured_at=time.time() - 60, load_1m=0.2, cores=2)
    assert ceiling.ceiling(2)["gflops"] == 190.0
    assert probe == []


def test_an_entry_measured_under_load_is_measured_again(cache: Path, probe: list[int]) -> None:
    _store(cache, gflops=17.7, measured_at=time.time() - 60, load_1m=9.5, cores=2)
    assert ceiling.ceiling(2)["gflops"] == 200.0
    assert probe == [2]
    assert json.loads(cache.read_text())[ceiling._key(2)]["gflops"] == 200.0


def test_a_stale_or_legacy_entry_is_measured_again(cache: Path, probe: list[int]) -> None:
    _store(cache, gflops=150.0, measured_at=time.time() - ceiling.MAX_AGE_S - 1, load_1m=0.1, cores=2)
    assert ceiling.ceiling(2)["gflops"] == 200.0
    _store(cache, gflops=150.0)  # an older cnnbench recorded neither time nor load
    assert ceiling.ceiling(2)["gflops"] == 200.0
    assert probe == [2, 2]


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "200", None])
def test_a_nonsense_figure_is_never_trusted(cache: Path, probe: list[int], bad: object) -> None:
    _store(cache, gflops=bad, measured_at=time.time(), load_1m=0.1, cores=2)
    assert ceiling.ceiling(2)["gflops"] == 200.0


def test_a_garbled_cache_file_is_measured_again(cache: Path, probe: list[int]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("[1, 2")
    assert ceiling.ceiling(2)["gflops"] == 200.0
    cache.write_text("[1, 2]")
    assert ceiling.ceiling(2)["gflops"] == 200.0
    assert not list(cache.parent.glob("*.tmp"))


def test_loaded_rule_counts_tasks_per_core() -> None:
    assert not ceiling.was_loaded({"load_1m": 1.9, "cores": 2})
    assert ceiling.was_loaded({"load_1m": 2.1, "cores": 2})
    assert ceiling.was_loaded({"cores": 2})


def test_a_backend_beating_the_ceiling_makes_it_implausible() -> None:
    entry = {"gflops": 100.0}
    assert ceiling.plausible(entry, 99.0)
    assert not ceiling.plausible(entry, 174.0)
    assert ceiling.plausible(None, 174.0)
    assert ceiling.plausible(entry, None)


def test_the_real_probe_records_time_and_load() -> None:
    value = ceiling.measure(1)
    assert value["gflops"] and value["gflops"] > 0
    assert value["measured_at"] <= time.time()
    assert "load_1m" in value and value["cores"]
