"""Isolation: every way a backend can fail becomes a row; the real backends still run and are saved."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cnnbench import messages, results
from cnnbench.cli import cli
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.results import FAILED, OK, TIMEOUT
from cnnbench.runner import BackendTarget, RunOptions, parse_frameworks, run_benchmark, run_worker
from cnnbench.timing import epoch_batch_indices

SMALL_DATA = DataConfig(dataset="synthetic", options={"n_train": 600, "n_test": 200})
SMALL_TRAIN = TrainConfig(epochs=2, batch_size=50, threads=1, warmup_steps=2)


def test_batch_order_depends_only_on_seed_and_epoch():
    a = epoch_batch_indices(0, 1, 1050, 100)
    assert a.shape == (10, 100) and len(set(a.ravel())) == 1000
    assert (a == epoch_batch_indices(0, 1, 1050, 100)).all()
    assert not (a == epoch_batch_indices(0, 2, 1050, 100)).all()
    assert not (a == epoch_batch_indices(1, 1, 1050, 100)).all()


def test_parse_frameworks_expands_all_and_deduplicates():
    registry = load_registry()
    targets = parse_frameworks("torch,all,torch", registry)
    ids = [target.id for target in targets]
    assert ids[0] == "torch" and ids.count("torch") == 1


def test_every_fault_is_a_row_and_real_results_are_saved(fixture_plugins, numpy_backend, tmp_path):
    fixture_plugins("faulty_backends")
    registry = load_registry()
    faulty = "faulty-import,faulty-raise,faulty-hang,faulty-nan,faulty-kill"
    targets = parse_frameworks(f"{faulty},{numpy_backend}", registry)
    options = RunOptions(timeout_s=30, results_dir=str(tmp_path))
    result, path = run_benchmark(targets, registry, SMALL_TRAIN, SMALL_DATA, options)
    rows = {row.backend: row for row in result.backends}
    assert rows["faulty-import"].status == "failed"
    assert "injected failure while importing" in rows["faulty-import"].reason
    assert rows["faulty-raise"].status == "failed" and "injected failure in the middle" in rows["faulty-raise"].reason
    assert rows["faulty-nan"].status == "diverged" and "loss became nan" in rows["faulty-nan"].reason
    assert rows["faulty-kill"].status == "failed" and "SIGKILL" in rows["faulty-kill"].reason
    assert rows[numpy_backend].status == "ok" and rows[numpy_backend].median("test_accuracy") > 0.5
    # the hang is cut by the timeout, which must not have swallowed the remaining backends
    assert rows["faulty-hang"].status == "timeout"
    saved = results.load(path)
    assert [row.backend for row in saved.backends] == [t.id for t in targets]
    assert saved.backends[-1].repeats[0].train_throughput > 0


def test_repeats_run_in_fresh_processes_and_keep_every_sample(numpy_backend, tmp_path):
    registry = load_registry()
    options = RunOptions(repeat=2, results_dir=str(tmp_path))
    result, _ = run_benchmark([BackendTarget(numpy_backend)], registry, SMALL_TRAIN, SMALL_DATA, options)
    row = result.backends[0]
    assert len(row.repeats) == 2 and all(m.status == "ok" for m in row.repeats)
    assert len(row.values("train_throughput")) == 2
    # same seed, same batches, deterministic backend: identical accuracy in both processes
    assert row.repeats[0].test_accuracy == row.repeats[1].test_accuracy
    assert row.parameters == 3_255_914 and row.settings["intra_op_threads"] == 1
    assert row.repeats[0].phases.import_s > 0 and row.repeats[0].peak_rss_mb > 50


def test_time_to_accuracy_counts_training_time_only(numpy_backend, tmp_path):
    registry = load_registry()
    options = RunOptions(target_accuracy=0.5, save=False)
    result, _ = run_benchmark([BackendTarget(numpy_backend)], registry, SMALL_TRAIN, SMALL_DATA, options)
    m = result.backends[0].repeats[0]
    assert all(e.test_accuracy is not None for e in m.epochs)
    reached = next(i for i, e in enumerate(m.epochs) if e.test_accuracy >= 0.5)
    assert m.time_to_accuracy_s == pytest.approx(sum(e.seconds for e in m.epochs[: reached + 1]))
    assert m.phases.train_s == pytest.approx(sum(e.seconds for e in m.epochs))


def test_cli_run_prints_the_table_and_saves(results_dir, numpy_backend):
    args = [
        "run",
        "-f",
        numpy_backend,
        "-d",
        "synthetic",
        "--threads",
        "1",
        "--dataset-option",
        "n_train=600",
        "--dataset-option",
        "n_test=200",
    ]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    columns = (
        "framework",
        "version",
        "device",
        "params",
        "test acc",
        "train samples/s",
        "eval samples/s",
        "first epoch s",
        "total s",
    )
    for column in columns:
        assert column in out.output
    assert "3,255,914" in out.output
    assert len(list(results_dir.glob("*.json"))) == 1


# --- the shared subprocess runner, with stand-in workers (no framework needed) ----------------

MEASURE = messages.MeasureRequest("torch", None, SMALL_TRAIN, SMALL_DATA)
CHECK = messages.CheckRequest(
    "torch", None, TrainConfig(), (28, 28, 1), 10, None, {"sgd": 0.01}, seed=0, steps=1, init="glorot-uniform", batch=4
)


def stand_in(tmp_path: Path, body: str) -> list[str]:
    """A launcher argument that runs ``body`` instead of the worker (it gets ``-m cnnbench.worker REQUEST``)."""
    script = tmp_path / "stand_in_worker.py"
    script.write_text(textwrap.dedent(body))
    return [str(script)]


def test_stray_lines_are_skipped_and_events_arrive_typed(tmp_path: Path) -> None:
    launcher = stand_in(
        tmp_path,
        """
        import json
        from cnnbench import messages
        print("launcher chatter, not a message")
        print(messages.encode(messages.Phase("import")))
        print(messages.encode(messages.Progress(1, 2, 3)))
        print(messages.encode(messages.CheckResult({"status": "PASS", "message": "ok", "checks": {}})))
    """,
    )
    seen: list[messages.Phase | messages.Progress] = []
    status, final = run_worker(CHECK, dict(os.environ), 60, seen.append, tmp_path / "log", launcher)
    assert status == OK and final == messages.CheckResult({"status": "PASS", "message": "ok", "checks": {}})
    assert seen == [messages.Phase("import"), messages.Progress(1, 2, 3)]


def test_a_job_answered_with_the_wrong_final_event_fails(tmp_path: Path) -> None:
    launcher = stand_in(
        tmp_path,
        """
        from cnnbench import messages
        print(messages.encode(messages.CheckResult({"status": "PASS"})))
    """,
    )
    status, final = run_worker(MEASURE, dict(os.environ), 60, None, tmp_path / "log", launcher)
    assert status == FAILED and isinstance(final, messages.Error)
    assert "measure job answered with a 'check_result'" in final.reason


def test_a_worker_of_an_older_cnnbench_is_killed_with_a_clear_reason(tmp_path: Path) -> None:
    launcher = stand_in(
        tmp_path,
        """
        import json, time
        print(json.dumps({"event": "phase", "name": "import"}), flush=True)
        time.sleep(120)
    """,
    )
    started = time.monotonic()
    status, final = run_worker(MEASURE, dict(os.environ), 100, None, tmp_path / "log", launcher)
    assert status == FAILED and isinstance(final, messages.Error)
    assert "carries no protocol version" in final.reason and time.monotonic() - started < 60


def test_the_worker_refuses_a_request_of_another_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "PROTOCOL_VERSION", messages.PROTOCOL_VERSION + 1)  # this side "upgraded"
    status, final = run_worker(MEASURE, dict(os.environ), 100, None, tmp_path / "log")
    assert status == FAILED and isinstance(final, messages.Error)
    theirs, ours = messages.PROTOCOL_VERSION - 1, messages.PROTOCOL_VERSION
    assert f"speaks message protocol version {theirs}, this cnnbench speaks {ours}" in final.reason


def test_a_hung_worker_is_killed_at_the_timeout(tmp_path: Path) -> None:
    launcher = stand_in(tmp_path, "import time\ntime.sleep(120)\n")
    started = time.monotonic()
    status, final = run_worker(MEASURE, dict(os.environ), 1, None, tmp_path / "log", launcher)
    assert status == TIMEOUT and isinstance(final, messages.Error)
    assert final.reason == "no result after 1 s (timeout); worker killed"
    assert time.monotonic() - started < 30


def test_a_worker_that_exits_without_a_result_names_its_last_log_line(tmp_path: Path) -> None:
    launcher = stand_in(tmp_path, "import sys\nprint('boom: the last words', file=sys.stderr)\nsys.exit(5)\n")
    status, final = run_worker(MEASURE, dict(os.environ), 60, None, tmp_path / "log", launcher)
    assert status == FAILED and isinstance(final, messages.Error)
    assert final.reason == "worker exited with code 5 without a result: boom: the last words"


def test_the_parity_check_follows_the_last_repeat_in_its_worker(
    numpy_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second process or framework import for the check, and every measured repeat ran before it."""
    from cnnbench import runner

    requests: list[messages.Request] = []
    real_run_worker = runner.run_worker

    def recording(request: messages.Request, *args: Any, **kwargs: Any) -> tuple[str, messages.Final]:
        requests.append(request)
        return real_run_worker(request, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", recording)
    options = RunOptions(repeat=2, parity=True, save=False)
    result, _ = run_benchmark([BackendTarget(numpy_backend)], load_registry(), SMALL_TRAIN, SMALL_DATA, options)
    row = result.backends[0]
    assert [request.job for request in requests] == ["measure", "measure"]
    first, last = requests
    assert isinstance(first, messages.MeasureRequest) and first.then_check is None
    assert isinstance(last, messages.MeasureRequest) and isinstance(last.then_check, messages.CheckRequest)
    assert last.then_check.probes is False and last.then_check.learning_rates == {"adam": SMALL_TRAIN.learning_rate}
    assert row.status == OK and len(row.repeats) == 2 and all(m.train_throughput for m in row.repeats)
    assert row.parity["status"] == "PASS" and 0 < row.parity["seconds"] < row.repeats[-1].phases.total_s * 10


def worker_whose_check(tmp_path: Path, body: str) -> list[str]:
    """A launcher that runs the real worker, with its follow-up check replaced by ``body``."""
    return stand_in(
        tmp_path,
        f"""
        import os, signal, sys, time
        from cnnbench import worker

        def follow_up_check(*args, **kwargs):
            {body}

        worker.follow_up_check = follow_up_check
        sys.exit(worker.main(sys.argv[3:]))
        """,
    )


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("os.kill(os.getpid(), signal.SIGKILL)", "the worker ended after its result"),
        ("raise SystemExit(7)", "the worker ended after its result"),
    ],
    ids=["killed", "exits"],
)
def test_a_check_that_dies_after_the_result_keeps_the_measurement(
    numpy_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, said: str
) -> None:
    from cnnbench import runner

    launcher = worker_whose_check(tmp_path, body)
    real_run_worker = runner.run_worker

    def through_stand_in(request: messages.Request, *args: Any) -> tuple[str, messages.Final]:
        assert isinstance(request, messages.MeasureRequest), "the check came in a worker of its own"
        env, timeout_s, on_event, log_path, _launcher, on_final = args
        return real_run_worker(request, env, timeout_s, on_event, log_path, launcher, on_final)

    monkeypatch.setattr(runner, "run_worker", through_stand_in)
    options = RunOptions(parity=True, save=False)
    result, _ = run_benchmark([BackendTarget(numpy_backend)], load_registry(), SMALL_TRAIN, SMALL_DATA, options)
    row = result.backends[0]
    assert row.status == OK and row.repeats[0].train_throughput and row.repeats[0].test_accuracy is not None
    assert row.parity["status"] == "FAIL" and said in row.parity["message"]


def test_a_check_that_raises_in_the_worker_is_a_failed_column(numpy_backend: str, tmp_path: Path) -> None:
    from cnnbench.runner import check_request

    check = check_request(BackendTarget(numpy_backend), load_registry(), SMALL_TRAIN, SMALL_DATA)
    request = messages.MeasureRequest(numpy_backend, None, SMALL_TRAIN, SMALL_DATA, then_check=check)
    launcher = stand_in(
        tmp_path,
        """
        import sys
        from cnnbench import worker

        def check_report(*args, **kwargs):
            raise RuntimeError("the check broke")

        worker.check_report = check_report
        sys.exit(worker.main(sys.argv[3:]))
        """,
    )
    seen: list[Any] = []
    status, final = run_worker(request, dict(os.environ), 120, seen.append, tmp_path / "log", launcher)
    assert status == OK and isinstance(final, messages.Result) and final.measurement.status == OK
    reports = [event.report for event in seen if isinstance(event, messages.FollowUpCheck)]
    assert len(reports) == 1 and reports[0]["status"] == "FAIL"
    assert reports[0]["message"] == "the parity check did not finish: RuntimeError: the check broke"


def test_a_follow_up_that_hangs_is_cut_at_the_timeout_and_the_result_kept(tmp_path: Path) -> None:
    result = messages.Result(results.Measurement(train_throughput=5.0), "cpu", 1)
    launcher = stand_in(
        tmp_path,
        f"""
        import time
        print({messages.encode(result)!r}, flush=True)
        print({messages.encode(messages.Phase("parity check"))!r}, flush=True)
        time.sleep(120)
        """,
    )
    arrived: list[messages.Final] = []
    started = time.monotonic()
    status, final = run_worker(MEASURE, dict(os.environ), 3, None, tmp_path / "log", launcher, arrived.append)
    assert status == OK and final == result and arrived == [result]
    assert time.monotonic() - started < 30


def test_a_worker_that_fails_before_its_result_gets_the_check_in_a_job_of_its_own(
    numpy_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed training still gets its parity column: it may say why."""
    from cnnbench import runner

    jobs: list[str] = []
    real_run_worker = runner.run_worker

    def measure_dies(request: messages.Request, *args: Any, **kwargs: Any) -> tuple[str, messages.Final]:
        jobs.append(request.job)
        if isinstance(request, messages.MeasureRequest):
            return FAILED, messages.Error("worker killed by SIGKILL")
        return real_run_worker(request, *args, **kwargs)

    monkeypatch.setattr(runner, "run_worker", measure_dies)
    options = RunOptions(parity=True, save=False)
    result, _ = run_benchmark([BackendTarget(numpy_backend)], load_registry(), SMALL_TRAIN, SMALL_DATA, options)
    row = result.backends[0]
    assert jobs == ["measure", "check"]
    assert row.status == FAILED and row.parity["status"] == "PASS"


def test_a_stop_during_the_follow_up_check_keeps_the_result(
    numpy_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from cnnbench import runner

    measured = results.Measurement(train_throughput=123.0, test_accuracy=0.9)

    def stopped_while_checking(request: messages.Request, *args: Any) -> tuple[str, messages.Final]:
        on_final = args[-1]
        on_final(messages.Result(measured, "cpu", 7, {"k": "v"}))
        raise runner.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(runner, "run_worker", stopped_while_checking)
    options = RunOptions(parity=True, results_dir=str(tmp_path / "results"))
    with pytest.raises(runner.RunInterrupted) as stop:
        run_benchmark([BackendTarget(numpy_backend)], load_registry(), SMALL_TRAIN, SMALL_DATA, options)
    assert stop.value.path is not None
    row = results.load(stop.value.path).backends[0]
    assert [m.status for m in row.repeats] == [OK, "interrupted"]
    assert row.repeats[0].train_throughput == 123.0 and row.parameters == 7 and row.settings["k"] == "v"
