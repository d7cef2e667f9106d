"""cnnbench ab: the decision rule on generated rounds, the sides, the command, and one real injected slowdown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import resultgen
from cnnbench import ab
from cnnbench.cli import cli
from cnnbench.compare import ConfigurationMismatch, metric_for
from cnnbench.errors import ExitCode, UsageError
from cnnbench.results import RunResult

REPO = Path(__file__).resolve().parent.parent
THROUGHPUT = metric_for("train_throughput")
BASE_SIDE = ab.Side(ab.BASE, sys.executable, "base for tests")
HEAD_SIDE = ab.Side(ab.HEAD, sys.executable, "head for tests")


class FakeMachine:
    """Measures sides without processes: lognormal noise per run, a slow drift shared by both sides, a fake clock."""

    def __init__(
        self,
        slowdown: float = 0.0,
        noise: float = 0.03,
        seed: int = 0,
        seconds: float = 10.0,
        backends: tuple[str, ...] = ("torch",),
        drift: float = 0.01,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.slowdown, self.noise, self.seconds, self.backends, self.drift = slowdown, noise, seconds, backends, drift
        self.now = 0.0
        self.calls: list[tuple[str, int]] = []
        self.load = 1.0

    def clock(self) -> float:
        return self.now

    def run_for(self, side: ab.Side) -> RunResult:
        self.load *= float(np.exp(self.rng.normal(0.0, self.drift)))  # neighbours come and go: both sides see it
        speed = 1000.0 / self.load * (1 / (1 + self.slowdown) if side.name == ab.HEAD else 1.0)
        rows = [
            resultgen.backend(name, [speed * float(np.exp(self.rng.normal(0.0, self.noise)))], epochs=2)
            for name in self.backends
        ]
        return resultgen.run(rows)

    def __call__(self, side: ab.Side, index: int, seconds_left: float) -> RunResult:
        self.calls.append((side.name, index))
        self.now += self.seconds
        return self.run_for(side)


def settings(**changes: object) -> ab.Settings:
    return replace(ab.Settings(THROUGHPUT), **changes)  # type: ignore[arg-type]


def run_fake(machine: FakeMachine, **changes: object) -> ab.Outcome:
    return ab.run_ab(BASE_SIDE, HEAD_SIDE, settings(**changes), machine, clock=machine.clock)


# --- inputs ---------------------------------------------------------------------------------------------------


def test_durations_thresholds_and_env_items() -> None:
    assert ab.parse_duration("10m") == 600 and ab.parse_duration("90s") == 90 and ab.parse_duration("600") == 600
    assert ab.parse_duration("1h30m") == 5400 and ab.parse_duration("1.5m") == 90
    for bad in ("", "ten", "5x", "0", "-3m", "m"):
        with pytest.raises(UsageError, match="--budget"):
            ab.parse_duration(bad)
    assert ab.parse_threshold("5%") == pytest.approx(0.05) and ab.parse_threshold("-10") == pytest.approx(0.10)
    for bad in ("0%", "50%", "abc", "nan"):
        with pytest.raises(UsageError, match="--threshold"):
            ab.parse_threshold(bad)
    assert ab.parse_env(["A=1", "B_2=x=y"], "--head-env") == {"A": "1", "B_2": "x=y"}
    with pytest.raises(UsageError, match="NAME=VALUE"):
        ab.parse_env(["1A=2"], "--head-env")


def test_run_args_refuse_what_ab_sets_and_pin_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for reserved in ("--repeat", "--repeat=3", "--results-dir", "--no-save", "--devices=2"):
        with pytest.raises(UsageError, match="set by ab itself"):
            ab.check_run_args(["-f", "torch", reserved])
    pinned = ["-f", "torch", "--data-dir", str(tmp_path / "data")]
    assert ab.check_run_args(["-f", "torch", "--data-dir", "data"]) == pinned
    assert ab.check_run_args(["--data-dir=d", "-e", "2"]) == ["--data-dir", str(tmp_path / "d"), "-e", "2"]


# --- the decision rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "bigger_is_better", "expected"),
    [
        (0.85, 0.94, True, ab.REGRESSION),
        (0.85, 0.96, True, ab.UNDECIDED),
        (0.96, 1.04, True, ab.UNCHANGED),
        (0.97, 1.10, True, ab.NO_REGRESSION),
        (1.06, 1.20, True, ab.IMPROVEMENT),
        (1.06, 1.20, False, ab.REGRESSION),  # a time or memory 6-20% up
        (0.80, 0.90, False, ab.IMPROVEMENT),
        (0.97, 1.03, False, ab.UNCHANGED),
        (0.90, 1.03, False, ab.NO_REGRESSION),
        (0.99, 1.06, False, ab.UNDECIDED),
    ],
)
def test_verdict_of_an_interval(low: float, high: float, bigger_is_better: bool, expected: str) -> None:
    assert ab.verdict(low, high, 0.05, bigger_is_better) == expected


def test_no_verdict_before_the_minimum_rounds() -> None:
    early = ab.estimate("torch", [0.8, 0.8, 0.8], THROUGHPUT, 0.05, min_rounds=5)
    assert early.verdict == ab.UNDECIDED and early.median == pytest.approx(0.8)
    late = ab.estimate("torch", [0.8, 0.81, 0.79, 0.8, 0.8], THROUGHPUT, 0.05, min_rounds=5)
    assert late.verdict == ab.REGRESSION and late.p_worse == pytest.approx(1 / 32)
    assert late.describe().startswith("-20.0% [")


def test_an_injected_10_percent_slowdown_is_a_regression_found_early() -> None:
    machine = FakeMachine(slowdown=0.10, seed=1)
    outcome = run_fake(machine)
    assert outcome.verdict == ab.REGRESSION and outcome.exit_code == ExitCode.REGRESSION == 1
    assert ab.DEFAULT_MIN_ROUNDS <= len(outcome.rounds) < 20
    assert outcome.estimates[0].high < 0.95 and outcome.reason.startswith("decided after")
    # interleaved: base head, head base, base head ...
    assert [name for name, _ in machine.calls[:6]] == ["base", "head", "head", "base", "base", "head"]


def test_a_and_a_is_not_a_regression() -> None:
    outcome = run_fake(FakeMachine(slowdown=0.0, seed=2))
    assert outcome.verdict in (ab.UNCHANGED, ab.NO_REGRESSION) and outcome.exit_code == ExitCode.OK == 0
    assert outcome.estimates[0].low > 0.95


def test_noise_beyond_the_budget_is_inconclusive_with_its_own_exit_code() -> None:
    machine = FakeMachine(slowdown=0.05, noise=0.3, seed=3, seconds=30.0)
    outcome = run_fake(machine, budget_s=600.0)
    assert outcome.verdict == ab.INCONCLUSIVE and outcome.exit_code == ExitCode.INCONCLUSIVE == 5
    assert "budget of 600 s spent" in outcome.reason
    assert machine.now <= 600.0  # no round was started that would end past the budget
    assert len(outcome.rounds) == 10


def test_max_rounds_stops_too() -> None:
    outcome = run_fake(FakeMachine(slowdown=0.05, noise=0.3, seed=4), max_rounds=6, budget_s=1e6)
    assert len(outcome.rounds) == 6 and outcome.verdict == ab.INCONCLUSIVE and "--max-rounds 6" in outcome.reason


def test_a_regression_in_one_framework_fails_the_whole_comparison() -> None:
    class OneSlower(FakeMachine):
        def run_for(self, side: ab.Side) -> RunResult:
            result = super().run_for(side)
            if side.name != ab.HEAD:
                return result
            slow = result.backends[1]
            repeat = replace(slow.repeats[0], train_throughput=(slow.repeats[0].train_throughput or 0) * 0.8)
            return replace(result, backends=(result.backends[0], replace(slow, repeats=(repeat,))))

    outcome = run_fake(OneSlower(seed=5, backends=("torch", "jax")))
    by_name = {e.backend: e.verdict for e in outcome.estimates}
    assert by_name["jax"] == ab.REGRESSION and by_name["torch"] != ab.REGRESSION
    assert outcome.verdict == ab.REGRESSION


def test_a_lower_is_better_metric_is_mirrored() -> None:
    class MoreMemory(FakeMachine):
        def run_for(self, side: ab.Side) -> RunResult:
            rss = 600.0 * (1.25 if side.name == ab.HEAD else 1.0) * float(np.exp(self.rng.normal(0, 0.01)))
            return resultgen.run([resultgen.backend("torch", [1000.0], peak_rss_mb=rss)])

    outcome = run_fake(MoreMemory(seed=6), metric=metric_for("peak_rss"))
    assert outcome.verdict == ab.REGRESSION and outcome.estimates[0].median == pytest.approx(1.25, rel=0.03)


def test_a_failing_side_stops_with_exit_3_and_says_why() -> None:
    class Crashes(FakeMachine):
        def run_for(self, side: ab.Side) -> RunResult:
            if side.name == ab.HEAD and len(self.calls) > 3:
                return resultgen.run([resultgen.backend("torch", [], status="failed", reason="worker killed")])
            return super().run_for(side)

    outcome = run_fake(Crashes(seed=7))
    assert outcome.verdict == ab.FAILED and outcome.exit_code == ExitCode.BACKEND_FAILED == 3
    assert "worker killed" in outcome.failure and len(outcome.rounds) == 2 and "round 3" in outcome.reason


def test_frameworks_unavailable_on_both_sides_are_left_out() -> None:
    run = resultgen.run([resultgen.backend("torch", [1000.0]), resultgen.backend("tf", [], status="unavailable")])
    assert ab.side_values(run, THROUGHPUT, "base") == {"torch": 1000.0}
    with pytest.raises(ab.SideFailed, match="measured no framework"):
        ab.side_values(resultgen.run([resultgen.backend("tf", [], status="unavailable")]), THROUGHPUT, "base")


def test_frameworks_on_one_side_only_fail() -> None:
    class Lopsided(FakeMachine):
        def run_for(self, side: ab.Side) -> RunResult:
            if side.name == ab.HEAD:
                return resultgen.run([resultgen.backend("tf", [1000.0])])
            return super().run_for(side)

    outcome = run_fake(Lopsided())
    assert outcome.verdict == ab.FAILED and "one side only: tf, torch" in outcome.failure


def test_different_configurations_are_an_error_unless_allowed() -> None:
    class OtherEpochs(FakeMachine):
        def run_for(self, side: ab.Side) -> RunResult:
            result = super().run_for(side)
            return replace(result, train=replace(result.train, epochs=5)) if side.name == ab.HEAD else result

    with pytest.raises(ConfigurationMismatch, match=r"train.epochs differs: 3 \(base\) vs 5 \(head\)") as caught:
        run_fake(OtherEpochs())
    assert caught.value.exit_code == ExitCode.USAGE
    outcome = run_fake(OtherEpochs(), allow_config_change=True)
    assert any("train.epochs differs" in d for d in outcome.differences)


def test_settings_are_validated() -> None:
    for changes, message in (
        ({"threshold": 0.0}, "threshold"),
        ({"confidence": 1.0}, "--confidence"),
        ({"min_rounds": 1}, "--min-rounds"),
        ({"max_rounds": 3}, "--max-rounds"),
        ({"budget_s": 0.0}, "--budget"),
    ):
        with pytest.raises(UsageError, match=message):
            settings(**changes).validate()


def test_the_decision_rule_has_the_targeted_power_on_a_modelled_machine() -> None:
    """Per-run noise 4% and a drift both sides share: 10% caught in >= 90% of trials, A/A alarms <= 5%.

    This checks the rule, not this machine: benchmarks/gate_power.py measures the real thing.
    """
    trials = 60
    slow = [run_fake(FakeMachine(slowdown=0.10, noise=0.04, seed=s)).verdict for s in range(trials)]
    same = [run_fake(FakeMachine(noise=0.04, seed=1000 + s)).verdict for s in range(trials)]
    caught, alarms = slow.count(ab.REGRESSION), same.count(ab.REGRESSION)
    assert caught >= 0.9 * trials and alarms <= 0.05 * trials


# --- reporting ------------------------------------------------------------------------------------------------


def test_markdown_and_json_outcome(tmp_path: Path) -> None:
    outcome = run_fake(FakeMachine(slowdown=0.2, seed=8, backends=(resultgen.HOSTILE, "torch")))
    text = ab.markdown(outcome)
    assert "regression" in text and "| torch |" in text and "\x1b" not in text and "\u202e" not in text
    hostile = next(line for line in text.splitlines() if "evil" in line)
    name = hostile.split(" | ")[0]
    assert re.search(r"(?<!\\)[\[\]<>|`*_]", name.removeprefix("| ")) is None, name  # every one escaped: inert
    assert hostile.count(" | ") == 4  # five columns, whatever the name holds
    data = json.loads(ab.write_json(outcome, tmp_path / "out" / "ab.json").read_text())
    assert data["verdict"] == "regression" and data["exit_code"] == 1
    assert len(data["rounds"]) == len(outcome.rounds) and data["rounds"][1]["order"] == ["head", "base"]
    assert data["settings"]["threshold"] == 0.05


# --- sides ----------------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_a_ref_side_runs_the_worktrees_code_and_leaves_no_worktree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "cnnbench").mkdir(parents=True)
    (repo / "cnnbench" / "__init__.py").write_text("MARK = 'old'\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "cnnbench")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "old")
    (repo / "cnnbench" / "__init__.py").write_text("MARK = 'new'\n")  # the working tree moved on
    with ab.prepare_side("ref:HEAD", ab.BASE, {"X_AB": "1"}, repo, tmp_path) as side:
        assert side.source_paths and "git HEAD" in side.description
        probe = "import cnnbench, os; print(cnnbench.MARK, os.environ['X_AB'])"
        out = subprocess.run(
            [side.python, "-c", probe],
            env=side.environment(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.split() == ["old", "1"]
        tree = Path(side.source_paths[0])
    assert not tree.exists() and git(repo, "worktree", "list").count("\n") == 1
    with pytest.raises(UsageError, match="no commit"), ab.prepare_side("ref:no-such-branch", ab.BASE, repo=repo):
        pass


def test_interpreter_and_venv_sides(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.symlink_to(sys.executable)
    with ab.prepare_side(str(venv), ab.BASE) as side:
        assert side.python == str(python.absolute())
    with ab.prepare_side("current", ab.HEAD) as side:
        assert side.python == sys.executable and not side.source_paths
    (tmp_path / "text").write_text("")
    for bad in (str(tmp_path / "text"), str(tmp_path / "none")):
        with pytest.raises(UsageError, match="not an executable Python"), ab.prepare_side(bad, ab.BASE):
            pass


def test_subprocess_measure_never_imports_a_checkout_from_its_working_directory(tmp_path: Path) -> None:
    measure = ab.SubprocessMeasure(["-f", "torch"], tmp_path)
    command = measure.command(BASE_SIDE, tmp_path / "x")
    assert command[:4] == [sys.executable, "-m", "cnnbench.cli", "run"] and "--skip-parity" in command
    assert command[-4:] == ["--repeat", "1", "--results-dir", str(tmp_path / "x")]


# --- the command ----------------------------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["ab", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--base", "current"), "options after --"),
        (("--base", "current", "--threshold", "70%", "--", "-f", "x"), "--threshold"),
        (("--base", "current", "--budget", "soon", "--", "-f", "x"), "--budget"),
        (("--base", "current", "--metric", "speed", "--", "-f", "x"), "unknown metric"),
        (("--base", "/nonexistent/python", "--", "-f", "x"), "not an executable"),
        (("--base", "current", "--", "-f", "x", "--repeat", "3"), "set by ab itself"),
        (("--base", "current", "--head-env", "oops", "--", "-f", "x"), "NAME=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, output = invoke(*args)
    assert code == ExitCode.USAGE, output
    assert message in output and "Traceback" not in output


@pytest.fixture
def delayed_plugins(fixture_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    """The example NumPy backend and its injected-delay wrapper, visible to every process a test starts."""
    from conftest import EXAMPLE_PLUGIN, prepend_path

    prepend_path(monkeypatch, EXAMPLE_PLUGIN)
    fixture_plugins("cnnbench_numpy", "delayed_backends")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", os.environ.get("CNNBENCH_CACHE_DIR") or "/tmp/cnnbench-cache-test-ab")


def test_a_real_injected_slowdown_is_caught_end_to_end(delayed_plugins: None, tmp_path: Path) -> None:
    """Short rounds of real runs: steps made twice as long must come out as a regression, exit 1."""
    summary, out = tmp_path / "summary.md", tmp_path / "ab.json"
    code, output = invoke(
        "--base",
        "current",
        "--head-env",
        "CNNBENCH_INJECTED_DELAY=1",
        "--min-rounds",
        "2",
        "--budget",
        "4m",
        "--summary",
        str(summary),
        "--json",
        str(out),
        "--keep",
        str(tmp_path / "runs"),
        "--",
        "-f",
        "delayed-numpy",
        "-d",
        "synthetic",
        "-e",
        "2",
        "--limit-train",
        "400",
        "--limit-test",
        "100",
        "--threads",
        "1",
        "--batch-size",
        "50",
    )
    data = json.loads(out.read_text())
    assert code == ExitCode.REGRESSION, output
    rounds = len(data["rounds"])
    assert data["verdict"] == "regression" and 2 <= rounds <= 8  # 2 unless a load burst hit one side
    ratio = data["estimates"][0]["median_ratio"]
    assert 0.3 < ratio < 0.75, ratio  # 1 / 2, give or take this machine's noise
    assert "injected_delay differs: 0.0 (base) vs 1.0 (head)" in " ".join(data["differences"])
    assert "cnnbench ab: regression" in summary.read_text()
    assert len(list((tmp_path / "runs").glob("round*/*.json"))) == 2 * rounds  # every side's result kept


# --- compare (a stored baseline) refuses other configurations too ---------------------------------------------


def test_compare_refuses_another_configuration_unless_allowed(tmp_path: Path) -> None:
    base = resultgen.save(resultgen.run([resultgen.backend("torch", [1000.0, 1010.0, 990.0])]), tmp_path)
    other = resultgen.run([resultgen.backend("torch", [500.0, 505.0, 495.0])], run_id="20250102T000000Z")
    other = resultgen.save(replace(other, train=replace(other.train, batch_size=50, learning_rate=0.01)), tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(base), str(other)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "train.learning_rate differs: 0.001 (baseline) vs 0.01 (current)" in result.output
    assert "train.batch_size differs" in result.output and "--allow-config-change" in result.output
    allowed = CliRunner().invoke(cli, ["compare", str(base), str(other), "--allow-config-change"])
    assert allowed.exit_code == ExitCode.REGRESSION and "train.batch_size differs" in allowed.output
    same_config = CliRunner().invoke(cli, ["compare", str(base), str(base)])
    assert same_config.exit_code == ExitCode.OK, same_config.output


def test_sigterm_stops_ab_and_its_run_and_leaves_no_folder(delayed_plugins: None, tmp_path: Path) -> None:
    """A cancelled CI job: exit 143, the side's run stopped too, the temporary folder gone."""
    import signal
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    command = [
        sys.executable,
        "-m",
        "cnnbench.cli",
        "ab",
        "--base",
        "current",
        "--",
        "-f",
        "delayed-numpy",
        "-d",
        "synthetic",
        "-e",
        "30",
        "--limit-train",
        "400",
        "--limit-test",
        "100",
        "--threads",
        "1",
    ]
    child = subprocess.Popen(
        command,
        env={**os.environ, "TMPDIR": str(scratch)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not list(scratch.glob("cnnbench-ab-*/round000-base/output.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the run is under way
    log = next(scratch.glob("cnnbench-ab-*/round000-base/output.log"))
    child.send_signal(signal.SIGTERM)
    output = child.communicate(timeout=60)[0].decode()
    assert child.returncode == 128 + signal.SIGTERM, output
    assert "interrupted (SIGTERM)" in output
    assert not list(scratch.iterdir())  # the ab folder and everything in it removed
    assert not log.exists()
    import psutil

    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(scratch) in " ".join(p.info["cmdline"] or [])]
    assert not left  # the side's `cnnbench run` (its --results-dir is in the folder) stopped too


def test_the_power_benchmark_counts_catches_and_false_alarms() -> None:
    """benchmarks/gate_power.py's summary: the rates against the targets, time and rounds as median (range)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_power", REPO / "benchmarks" / "gate_power.py")
    assert spec and spec.loader
    gate_power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate_power)

    def trial(slowdown: float, verdict: str, minutes: float, rounds: int, ratio: float) -> dict[str, object]:
        return {"slowdown": slowdown, "verdict": verdict, "seconds": 60 * minutes, "rounds": rounds, "ratio": ratio}

    trials = [
        trial(0.0, "unchanged", 2.0, 5, 1.01),
        trial(0.0, "regression", 4.0, 9, 0.93),
        trial(0.0, "inconclusive", 10.0, 30, 0.97),
        trial(0.0, "no regression", 3.0, 7, 1.04),
        trial(0.1, "regression", 2.5, 6, 0.90),
        trial(0.1, "inconclusive", 10.0, 31, 0.95),
    ]
    text = "\n".join(gate_power.summarise(trials, [0.0, 0.1]))
    assert "delay 0: A/A: false alarms 1/4 = 25% (target <= 5%)" in text
    assert "verdicts: inconclusive 1, no regression 1, regression 1, unchanged 1" in text
    assert "minutes per comparison: 3.5 (2.0-10.0); rounds: 8 (5-30)" in text
    assert "delay 0.1: 10% longer steps: caught 1/2 = 50% (target >= 90%)" in text
    assert "estimated ratio head/base: 0.925 (0.900-0.950) (injected: 0.909)" in text
