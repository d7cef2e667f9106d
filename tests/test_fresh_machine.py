"""benchmarks/fresh_machine.py: the wall-time breakdown adds up and puts each phase where it belongs."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from cnnbench.config import DataConfig, TrainConfig
from cnnbench.results import BackendResult, EpochRecord, Measurement, Phases, RunResult

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fresh_machine.py"


@pytest.fixture(scope="module")
def fresh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fresh_machine", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(first: float, rate: float, import_s: float, build_s: float, eval_s: float, total: float) -> Measurement:
    """One epoch of 1,000 samples taking ``first`` seconds, steady at ``rate`` samples/s."""
    phases = Phases(
        import_s=import_s,
        build_s=build_s,
        load_data_s=0.5,
        first_epoch_s=first,
        train_s=first,
        eval_s=eval_s,
        total_s=total,
    )
    return Measurement(epochs=(EpochRecord(1, 0.3, first, 1000, 1000 / first),), phases=phases, train_throughput=rate)


def run_of(*rows: BackendResult) -> RunResult:
    return RunResult(run_id="r", created="2026-01-01T00:00:00Z", train=TrainConfig(), data=DataConfig(), backends=rows)


def test_the_parts_add_up_to_the_wall_time(fresh):
    # 12 s epoch at 100 samples/s steady: 10 s of it steady, 2 s compile; 17 s of known phases + 4 s setup.
    # The parity check (3 s) follows the result in the last worker, outside the measurement's 21 s.
    a = BackendResult("a", parity={"seconds": 3.0}, repeats=(measured(12.0, 100.0, 2.0, 1.0, 1.5, 21.0),))
    b = BackendResult("b", repeats=(measured(5.0, 250.0, 1.0, 0.5, 0.5, 8.0),))
    parts = fresh.wall_breakdown(run_of(a, b), wall_s=40.0, process_start_s=1.5)
    assert sum(parts.values()) == pytest.approx(40.0)
    assert parts["compile"] == pytest.approx(2.0 + 1.0) and parts["steady training"] == pytest.approx(10.0 + 4.0)
    assert parts["parity"] == 3.0 and parts["import"] == 3.0 and parts["build"] == 1.5 and parts["evaluation"] == 2.0
    assert parts["worker setup"] == pytest.approx(21.0 - 17.0 + 8.0 - 7.5)
    assert parts["process start"] == 3.0 and parts["parent"] == pytest.approx(40.0 - (21.0 + 8.0 + 3.0) - 3.0)


def test_the_eval_warm_up_pass_is_a_framework_part_of_its_own(fresh):
    row = measured(12.0, 100.0, 2.0, 1.0, 1.5, 21.0)
    warmed = BackendResult("a", repeats=(replace(row, phases=replace(row.phases, eval_warmup_s=2.5)),))
    parts = fresh.wall_breakdown(run_of(warmed), wall_s=30.0, process_start_s=1.0)
    assert parts["eval warm-up"] == 2.5 and parts["evaluation"] == 1.5
    assert parts["worker setup"] == pytest.approx(21.0 - 17.0 - 2.5)  # no longer counted as the harness's
    assert "eval warm-up" in fresh.FRAMEWORK_PARTS


def test_failed_rows_and_a_short_wall_never_give_negative_parts(fresh):
    failed = BackendResult("x", status="failed", repeats=(Measurement(status="failed"),))
    ok = BackendResult("a", repeats=(measured(12.0, 100.0, 2.0, 1.0, 1.5, 21.0),))
    parts = fresh.wall_breakdown(run_of(failed, ok), wall_s=20.0, process_start_s=5.0)
    assert all(value >= 0 for value in parts.values())
    assert parts["process start"] == 0.0 and parts["parent"] == 0.0  # the clock said less than the workers


def test_the_breakdown_table_names_the_harness_share(fresh):
    from rich.console import Console

    parts = {"import": 2.0, "steady training": 6.0, "parity": 1.0, "parent": 1.0}
    console = Console(width=160, record=True)
    console.print(fresh.breakdown_table(parts, 10.0))
    text = console.export_text()
    assert "cnnbench's own" in text and "20.0%" in text and "framework" in text


def test_paired_ratio_uses_rounds_with_both_sides(fresh):
    assert fresh.paired_ratio([2.0, 3.0, None], [1.0, 2.0, 4.0]) == pytest.approx(1.75)
    assert fresh.paired_ratio([None], [1.0]) is None
