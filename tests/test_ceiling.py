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
        return {
            "gflops": 200.0,
            "library": "numpy",
            "per_library": {"numpy": 200.0},
            "threads": threads,
            "size": ceiling.GEMM_SIZE,
            "measured_at": time.time(),
            "load_1m": 0.1,
            "cores": 2,
        }

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


# --- the runner's check after a run, and the report's flag ---------------------------------------------------


def _run_with(ceiling_gflops: float, throughputs: dict[str, float]) -> Any:
    """A finished run whose rows train at ``throughputs`` samples/s, 1 GFLOP per sample, under one ceiling."""
    from cnnbench.config import DataConfig, TrainConfig
    from cnnbench.results import BackendResult, Measurement, RunResult

    rows = tuple(
        BackendResult(backend=name, status="ok", repeats=(Measurement(train_throughput=speed),))
        for name, speed in throughputs.items()
    )
    return RunResult(
        run_id="r",
        created="2026-01-01T00:00:00+00:00",
        train=TrainConfig(),
        data=DataConfig(),
        environment={"matmul_ceiling": {"gflops": ceiling_gflops, "threads": 2}},
        model={"flops_train_per_sample": 1e9},
        backends=rows,
    )


def test_a_beaten_ceiling_is_measured_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnbench.runner import check_ceiling

    calls: list[tuple[int, bool]] = []

    def measured_again(threads: int, refresh: bool = False) -> dict[str, Any]:
        calls.append((threads, refresh))
        return {"gflops": 500.0, "threads": threads}

    monkeypatch.setattr(ceiling, "ceiling", measured_again)
    quiet = _run_with(1000.0, {"a": 300.0})
    assert check_ceiling(quiet, 2) is quiet and calls == []  # nothing beats it: not measured again
    checked = check_ceiling(_run_with(100.0, {"a": 300.0, "b": 600.0, "c": 50.0}), 2)
    assert calls == [(2, True)]
    assert checked.environment["matmul_ceiling"] == {
        "gflops": 500.0,
        "threads": 2,
        "remeasured": True,
        "above_ceiling": ["b"],
    }
    monkeypatch.setattr(ceiling, "ceiling", lambda threads, refresh=False: {"gflops": 1000.0})
    fixed = check_ceiling(_run_with(100.0, {"a": 300.0}), 2)
    assert fixed.environment["matmul_ceiling"] == {"gflops": 1000.0, "remeasured": True}


def test_a_row_above_the_ceiling_is_flagged_in_the_table_with_a_footnote() -> None:
    from rich.console import Console

    from cnnbench import report

    run = _run_with(500.0, {"a": 300.0, "b": 600.0})
    run.environment["matmul_ceiling"].update(remeasured=True, above_ceiling=["b"])
    console = Console(width=250, record=True)
    report.print_result(run, console)
    text = console.export_text()
    assert "300 (60%) " in text and "300 (60%) !" not in text
    assert "600 (120%) !" in text
    assert "! GFLOP/s above the machine's measured matmul ceiling (measured again after the run)" in text
    older = _run_with(500.0, {"b": 600.0})  # a file from before the flag: over 100% is still marked
    assert report.fmt_efficiency(older, older.backends[0]).endswith(" !")
    below = _run_with(500.0, {"a": 300.0})
    console = Console(width=250, record=True)
    report.print_result(below, console)
    assert "!" not in console.export_text()


def test_the_runner_checks_the_ceiling_after_the_last_backend_and_saves_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cnnbench import results, runner
    from cnnbench.config import DataConfig, TrainConfig
    from cnnbench.plugins import load_registry
    from cnnbench.results import BackendResult, Measurement

    def measure(target: runner.BackendTarget, *args: Any) -> tuple[BackendResult, dict[str, Any]]:
        row = BackendResult(backend=target.id, status="ok", repeats=(Measurement(train_throughput=300.0),))
        return row, {"model": {"flops_train_per_sample": 1e9}, "preprocessing": {}}

    entries = {False: {"gflops": 100.0}, True: {"gflops": 200.0}}  # a loaded first probe, then still too low
    monkeypatch.setattr(runner, "measure_backend", measure)
    monkeypatch.setattr(ceiling, "ceiling", lambda threads, refresh=False: dict(entries[refresh]))
    options = runner.RunOptions(results_dir=str(tmp_path), measure_ceiling=True)
    _, path = runner.run_benchmark(
        [runner.BackendTarget("torch")],
        load_registry(),
        TrainConfig(threads=1),
        DataConfig(dataset="synthetic"),
        options,
    )
    assert path is not None
    assert results.load(path).environment["matmul_ceiling"] == {
        "gflops": 200.0,
        "remeasured": True,
        "above_ceiling": ["torch"],
    }
