"""Nothing lost when things go wrong around a run (issue 15): its results folder, stop signals, the current directory.

The signal and shadowing tests start a real ``cnnbench run`` on the example NumPy backend, so they need no framework.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from cnnbench import ceiling, distributed, messages, results, runner
from cnnbench.cli import cli
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import ExitCode, UsageError
from cnnbench.plugins import load_registry
from cnnbench.results import FAILED, INTERRUPTED, OK, BackendResult, Measurement, RunResult
from cnnbench.runner import BackendTarget, RunInterrupted, RunOptions, run_benchmark, run_worker

SMALL_DATA = DataConfig(dataset="synthetic", options={"n_train": 200, "n_test": 100})
SMALL_TRAIN = TrainConfig(epochs=1, batch_size=50, threads=1, warmup_steps=1)
#: ``cnnbench run`` options for a run of a few seconds on the NumPy backend.
SMALL_RUN = [
    "-d",
    "synthetic",
    "--dataset-option",
    "n_train=200",
    "--dataset-option",
    "n_test=100",
    "--epochs",
    "1",
    "--batch-size",
    "50",
    "--threads",
    "1",
    "--skip-parity",
]
#: The CLI in a fresh interpreter: stop signals at their defaults (a test runner in the background may ignore
#: SIGINT or SIGHUP, and children inherit that), and the current directory off sys.path (it may shadow cnnbench).
CLI = [
    sys.executable,
    "-c",
    textwrap.dedent("""
    import signal, sys
    sys.path[:] = [p for p in sys.path if p]
    for name in ("SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from cnnbench.cli import main
    main()
"""),
]


@pytest.fixture
def quiet_ceiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache holding a fresh, quiet, high ceiling: runs (in workers too) never start the GEMM probe."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(cache))
    entry = {
        "gflops": 1e9,
        "library": "numpy",
        "threads": 1,
        "size": ceiling.GEMM_SIZE,
        "measured_at": time.time(),
        "load_1m": 0.0,
        "cores": os.cpu_count(),
    }
    ceiling.cache_file().parent.mkdir(parents=True)
    ceiling.cache_file().write_text(json.dumps({ceiling._key(1): entry}))
    return cache


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test's own (here and in children), so leftovers can be counted."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("cnnbench-"))


def fake_row(target: BackendTarget, status: str = OK, reason: str = "") -> BackendResult:
    return BackendResult(
        backend=target.id,
        framework="NumPy",
        framework_version="9.9",
        status=status,
        reason=reason,
        repeats=(Measurement(status=status, reason=reason, train_throughput=100.0),),
    )


def no_measuring(monkeypatch: pytest.MonkeyPatch, status: str = OK) -> list[str]:
    """Replace each backend's measurement by a made-up row (no worker); returns the ids measured."""
    measured: list[str] = []

    def measure(target: BackendTarget, *args: Any) -> tuple[BackendResult, dict[str, Any]]:
        measured.append(target.id)
        return fake_row(target, status), {}

    monkeypatch.setattr(runner, "measure_backend", measure)
    monkeypatch.setattr(ceiling, "ceiling", lambda threads, refresh=False: None)
    return measured


# --- 1. the results folder ---------------------------------------------------------------------------------------


def test_an_unusable_results_folder_is_refused_before_anything_is_measured(tmp_path, numpy_backend, monkeypatch):
    def never(*args: Any) -> None:
        raise AssertionError("a worker started before the results folder was checked")

    monkeypatch.setattr(runner, "run_worker", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = CliRunner().invoke(
        cli, ["run", "-f", numpy_backend, *SMALL_RUN, "--results-dir", str(blocker / "x")], catch_exceptions=False
    )
    assert out.exit_code == ExitCode.USAGE, out.output
    assert out.output.strip().splitlines() == [f"error: cannot write results to {blocker / 'x'}: Not a directory"]


def test_a_full_disk_mid_run_saves_the_whole_run_to_a_named_fallback(
    tmp_path, numpy_backend, fixture_plugins, monkeypatch, quiet_ceiling
):
    fixture_plugins("endless_backends")
    measured = no_measuring(monkeypatch)
    write = results._write_file
    writes: list[int] = []

    def full_at_the_second_save(fd: int, text: str) -> None:
        writes.append(fd)
        if len(writes) == 2:
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(fd, text)

    monkeypatch.setattr(results, "_write_file", full_at_the_second_save)
    store = tmp_path / "results"
    out = CliRunner().invoke(
        cli, ["run", "-f", f"{numpy_backend},endless", *SMALL_RUN, "--results-dir", str(store)], catch_exceptions=False
    )
    assert measured == [numpy_backend, "endless"]
    assert out.exit_code == ExitCode.NOT_SAVED, out.output
    fallback = quiet_ceiling / "unsaved-results"
    saved = list(fallback.glob("*.json"))
    assert len(saved) == 1 and [row.backend for row in results.load(saved[0]).backends] == measured
    warning = next(line for line in out.output.splitlines() if line.startswith("warning:"))
    assert warning == (
        f"warning: cannot write results to {store}: No space left on device; "
        f"the whole run was saved to {saved[0]} instead"
    )
    assert "endless" in out.output and "9.9" in out.output  # the table is printed
    assert list(store.iterdir()) == []  # neither a temporary file nor the copy that lacked the last backend


def test_when_no_folder_takes_the_result_the_table_still_shows_it(
    tmp_path, numpy_backend, monkeypatch, quiet_ceiling, private_tmp
):
    no_measuring(monkeypatch)

    def full(fd: int, text: str) -> None:
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results, "_write_file", full)
    store = tmp_path / "results"
    out = CliRunner().invoke(
        cli, ["run", "-f", numpy_backend, *SMALL_RUN, "--results-dir", str(store)], catch_exceptions=False
    )
    assert out.exit_code == ExitCode.NOT_SAVED, out.output
    assert "9.9" in out.output
    assert (
        f"warning: cannot write results to {store}: No space left on device; no fallback folder was writable "
        "either: the result is only in the table above"
    ) in out.output
    assert not [p for p in private_tmp.rglob("*") if p.is_file()] and list(store.iterdir()) == []


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_atomic_save_leaves_no_temporary_file_on_any_failure(tmp_path, monkeypatch, fault):
    def failing(fd: int, text: str) -> None:
        os.close(fd)
        raise fault

    monkeypatch.setattr(results, "_write_file", failing)
    run = RunResult(
        run_id="20260101T000000Z-0000", created="2026-01-01T00:00:00+00:00", train=TrainConfig(), data=DataConfig()
    )
    with pytest.raises(UsageError if isinstance(fault, OSError) else KeyboardInterrupt):
        results.save(run, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    run = RunResult(
        run_id="20260101T000000Z-0000", created="2026-01-01T00:00:00+00:00", train=TrainConfig(), data=DataConfig()
    )
    (tmp_path / "taken.json").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(UsageError, match="cannot write results"):
        results.save(run, tmp_path, filename="taken.json")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.json"]


def test_a_failed_backend_makes_run_exit_3(tmp_path, numpy_backend, monkeypatch):
    no_measuring(monkeypatch, status=FAILED)
    out = CliRunner().invoke(
        cli, ["run", "-f", numpy_backend, *SMALL_RUN, "--results-dir", str(tmp_path)], catch_exceptions=False
    )
    assert out.exit_code == ExitCode.BACKEND_FAILED, out.output


# --- 2. stop signals ---------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.2)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_saves_and_prints_what_finished_and_leaves_nothing_behind(
    sig,
    tmp_path,
    numpy_backend,
    fixture_plugins,
    quiet_ceiling,
    private_tmp,
):
    fixture_plugins("endless_backends")
    pid_file = tmp_path / "pids"
    store = tmp_path / "results"
    env = {**os.environ, "CNNBENCH_TEST_PID_FILE": str(pid_file), "COLUMNS": "300"}
    proc = subprocess.Popen(
        [*CLI, "run", "-f", f"{numpy_backend},endless", *SMALL_RUN, "--results-dir", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        wait_for(pid_file.exists, 240, "the endless backend to start training")
        pids = [int(pid) for pid in pid_file.read_text().split()]
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        for pid in [proc.pid, *pids]:  # never leave a process behind, even when the test fails
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    name = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {name}; finished results saved to {store}" in err
    assert numpy_backend in out and "endless" in out  # the table, with the row cut short
    saved = results.load(next(store.glob("*.json")))
    assert saved.interrupted
    rows = {row.backend: row for row in saved.backends}
    assert rows[numpy_backend].status == OK and rows[numpy_backend].repeats[0].train_throughput
    cut = rows["endless"]
    assert cut.status == INTERRUPTED and name in cut.reason
    assert cut.framework_version == rows[numpy_backend].framework_version != ""
    wait_for(lambda: all(gone(pid) for pid in pids), 10, "the worker and the process it started to end")
    assert leftovers(private_tmp) == []  # request folders and log folders
    assert not list(store.glob(".tmp-*"))


def test_a_stop_signal_waits_for_a_held_section_and_an_ignored_one_stays_ignored() -> None:
    stop = runner._StopSignals()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop.installed():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            reached: list[str] = []

            def held_section() -> None:
                with stop.held():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.05)  # the handler runs here, and must not raise yet
                    reached.append("end")

            with pytest.raises(runner.Interrupted) as raised:
                held_section()
            assert reached == ["end"] and raised.value.signum == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)  # a second one while stopping is ignored
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_an_interrupted_row_keeps_its_framework_version_and_finished_repeats(
    tmp_path, numpy_backend, monkeypatch, quiet_ceiling, private_tmp
):
    calls: list[int] = []

    def second_repeat_interrupted(request: messages.Request, *args: Any) -> tuple[str, messages.Final]:
        calls.append(1)
        if len(calls) == 2:
            raise runner.Interrupted(signal.SIGTERM)
        return FAILED, messages.Error("a first repeat that failed")

    monkeypatch.setattr(runner, "run_worker", second_repeat_interrupted)
    registry = load_registry()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as stop:
        run_benchmark(
            [BackendTarget(numpy_backend)],
            registry,
            SMALL_TRAIN,
            SMALL_DATA,
            RunOptions(repeat=2, results_dir=str(tmp_path / "results")),
        )
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    assert stop.value.exit_code == 143 and stop.value.path is not None
    row = results.load(stop.value.path).backends[0]
    assert row.status == INTERRUPTED and row.reason == "interrupted by SIGTERM"
    assert row.framework_version == registry.backend(numpy_backend).item.framework_version()
    assert [m.status for m in row.repeats] == [FAILED, INTERRUPTED]


# --- 4. a cnnbench folder in the current directory ---------------------------------------------------------------


@pytest.fixture
def shadowing_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory with a ``cnnbench`` package that breaks any process importing it from there."""
    where = tmp_path / "checkout"
    (where / "cnnbench").mkdir(parents=True)
    (where / "cnnbench" / "__init__.py").write_text("raise ImportError('the cnnbench folder in the cwd was imported')")
    monkeypatch.chdir(where)
    return where


def test_a_cnnbench_folder_in_the_current_directory_does_not_shadow_the_workers(
    shadowing_cwd,
    tmp_path,
    numpy_backend,
    quiet_ceiling,
):
    store = tmp_path / "results"
    done = subprocess.run(
        [*CLI, "run", "-f", numpy_backend, *SMALL_RUN, "--results-dir", str(store)],
        capture_output=True,
        text=True,
        cwd=shadowing_cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert results.load(next(store.glob("*.json"))).backends[0].status == OK


def test_ranks_a_launcher_starts_are_not_shadowed_either(shadowing_cwd, tmp_path, numpy_backend):
    # A stand-in for torchrun: it starts the rank as torchrun does (python -u -m cnnbench.worker REQUEST), inheriting
    # the launcher's directory and environment.
    launcher = tmp_path / "launcher.py"
    launcher.write_text("import subprocess, sys\nsys.exit(subprocess.call([sys.executable, '-u', *sys.argv[1:]]))\n")
    request = messages.MeasureRequest(numpy_backend, None, SMALL_TRAIN, SMALL_DATA)
    status, _ = run_worker(request, dict(os.environ), 300, None, tmp_path / "log", [str(launcher)])
    assert status == OK, (tmp_path / "log").read_text()[-2000:]


@pytest.mark.requires("torch")
def test_torchrun_ranks_are_not_shadowed(shadowing_cwd, tmp_path, numpy_backend):
    launcher = distributed.torchrun_arguments(1, distributed.Cluster())
    request = messages.MeasureRequest(numpy_backend, None, SMALL_TRAIN, SMALL_DATA)
    status, _ = run_worker(request, dict(os.environ), 300, None, tmp_path / "log", launcher)
    assert status == OK, (tmp_path / "log").read_text()[-2000:]


def test_the_ceiling_probe_is_not_shadowed(tmp_path, monkeypatch):
    (tmp_path / "json.py").write_text("raise ImportError('json.py in the cwd was imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ceiling, "GEMM_SIZE", 64)
    assert ceiling.measure(1)["gflops"] > 0


# --- 11. log folders, symlink loops ------------------------------------------------------------------------------


def test_logs_of_failed_rows_are_kept_and_the_temporary_log_folder_removed(
    tmp_path, numpy_backend, monkeypatch, quiet_ceiling, private_tmp
):
    def failing_worker(
        request: messages.Request,
        env: dict[str, str],
        timeout: float | None,
        on_event: Any,
        log_path: Path,
        launcher: Any = None,
        on_final: Any = None,
    ) -> tuple[str, messages.Final]:
        log_path.write_text("Traceback: the reason of the failure\n")
        return FAILED, messages.Error("worker exited with code 1")

    monkeypatch.setattr(runner, "run_worker", failing_worker)
    result, _ = run_benchmark(
        [BackendTarget(numpy_backend)], load_registry(), SMALL_TRAIN, SMALL_DATA, RunOptions(save=False)
    )
    reason = result.backends[0].reason
    kept = Path(reason.partition("(log: ")[2].rstrip(")"))
    assert kept.parent == quiet_ceiling / "logs" / result.run_id
    assert kept.read_text() == "Traceback: the reason of the failure\n"
    assert leftovers(private_tmp) == []


def test_a_symlink_loop_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop.json", "loop.json")
    with pytest.raises(UsageError, match=r"loop\.json: cannot read result file: symlink loop"):
        results.resolve("loop.json", tmp_path / "store")
    os.symlink("missing.json", "dangling.json")
    with pytest.raises(UsageError, match=r"dangling\.json: cannot read result file: broken symlink"):
        results.resolve("dangling.json", tmp_path / "store")
    with pytest.raises(UsageError, match="no such result file"):
        results.resolve("absent.json", tmp_path / "store")


# --- the scaling table shows names and reasons from result files literally (item 9, in scaling.py) ---------------


def test_the_scaling_table_renders_names_and_reasons_literally() -> None:
    from rich.console import Console

    from cnnbench.scaling import scaling_table

    rows = (BackendResult(backend="[link=https://x.example]evil[/link]", status=FAILED, reason="[/] \x1b]8;;x\x07"),)
    run = RunResult(
        run_id="r",
        created="2026-01-01T00:00:00+00:00",
        train=TrainConfig(threads=1),
        data=DataConfig(dataset="[bold]d"),
        backends=rows,
    )
    console = Console(width=300, record=True)
    console.print(scaling_table([run]))
    text = console.export_text()
    assert "[link=https://x.example]evil[/link]" in text and "failed: [/] \\x1b]8;;x\\x07" in text
    assert "[bold]d" in text
