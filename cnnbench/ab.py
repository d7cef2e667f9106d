"""Same-machine A/B comparison: both sides measured in one job, interleaved, with paired statistics.

A stored baseline from another day or machine cannot gate a noisy shared runner: its load and its
hardware differ from the current run's. Here each round measures the base and the head one after
the other, each in a fresh ``cnnbench run`` process (its workers fresh too), alternating the order
(base head, head base, base head ...), so slow drifts of the machine hit both sides alike. The
ratio head/base within a round cancels most of the machine's state; the verdict comes from a
seeded bootstrap interval of the median ratio over the rounds, checked against the threshold
after every round: "regression" when the whole interval is worse than the threshold, "no
regression" once it lies above that line ("unchanged" when also inside the threshold on the
other side), and "inconclusive" (exit 5) when the time budget runs out first. docs/ci.md has the
decision rule, the measured power and false-alarm rate, and the workflow built on it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbench import results, stats
from cnnbench.compare import ConfigurationMismatch, Metric, comparability_warnings, config_changes
from cnnbench.errors import CnnbenchError, ExitCode, UsageError
from cnnbench.results import RunResult

#: Sides of a comparison: the reference and the change under test.
BASE, HEAD = "base", "head"

#: Verdicts per framework. A gate fails only on REGRESSION; FAILED is a side that could not be measured.
REGRESSION, NO_REGRESSION, UNCHANGED, IMPROVEMENT = "regression", "no regression", "unchanged", "improvement"
UNDECIDED, INCONCLUSIVE, FAILED = "undecided", "inconclusive", "failed"
DECIDED = (REGRESSION, NO_REGRESSION, UNCHANGED, IMPROVEMENT)

DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BUDGET_S = 600.0
DEFAULT_MIN_ROUNDS = 5
DEFAULT_MAX_ROUNDS = 200
#: ``cnnbench run`` options that ab sets itself (one repeat a round, its own store) or that make no sense here.
RESERVED_RUN_OPTIONS = ("--repeat", "--results-dir", "--no-save", "--devices", "--plot", "--report", "--help", "-h")
#: Lines of a failed side's output kept in the error.
LOG_TAIL_LINES = 25


# --- inputs ---------------------------------------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*(?:(?P<m>\d+(?:\.\d+)?)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str, what: str = "--budget") -> float:
    """``10m``, ``90s``, ``1h30m``, ``600`` (seconds) -> seconds; anything else is a UsageError."""
    match = _DURATION.match(text)
    if not match or not any(match.groupdict().values()):
        raise UsageError(f"{what} {text!r}: give a duration such as 10m, 90s, 1h30m or 600 (seconds)")
    seconds = sum(float(match[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}")
    return seconds


def parse_threshold(text: str) -> float:
    """``5%`` or ``5`` (percent) -> 0.05: the smallest change the gate treats as one."""
    cleaned = text.strip().removesuffix("%").strip().lstrip("+-")
    try:
        percent = float(cleaned)
    except ValueError:
        raise UsageError(f"--threshold {text!r}: give a percentage such as 5%") from None
    if not 0 < percent < 50 or not math.isfinite(percent):
        raise UsageError(f"--threshold must be between 0% and 50%, got {text!r}")
    return percent / 100


def check_run_args(run_args: Sequence[str]) -> list[str]:
    """The ``cnnbench run`` arguments both sides get; refuses the options ab sets itself, makes --data-dir absolute."""
    checked: list[str] = []
    args = list(run_args)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in RESERVED_RUN_OPTIONS:
            raise UsageError(f"{name} is set by ab itself (one repeat per side and round, its own result folder)")
        if name == "--data-dir":  # each side runs in a fresh folder: a relative path would move
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            checked += ["--data-dir", str(Path(value).resolve())] if value else [arg]
            i += 1 if "=" in arg or not value else 2
            continue
        checked.append(arg)
        i += 1
    return checked


def parse_env(items: Sequence[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` items -> a dict; a malformed item is a UsageError."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"{option} {item!r}: give NAME=VALUE")
        env[key] = value
    return env


# --- sides ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """How one side runs cnnbench: an interpreter, source folders put first on its path, extra variables."""

    name: str
    python: str
    description: str
    #: Folders prepended to PYTHONPATH: a git ref's worktree (its ``cnnbench`` and ``plugins``) wins over the install.
    source_paths: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The process environment of this side's runs."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        if self.source_paths:
            env["PYTHONPATH"] = os.pathsep.join([*self.source_paths, *filter(None, [env.get("PYTHONPATH")])])
        return env


def _git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; a failure is a UsageError quoting git's message."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"git {' '.join(args)} failed: {exc}") from None
    if done.returncode:
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise UsageError(f"git {' '.join(args)}: {message[-1] if message else f'exit {done.returncode}'}")
    return done.stdout.strip()


@contextlib.contextmanager
def prepare_side(
    spec: str,
    name: str,
    env: Mapping[str, str] | None = None,
    repo: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> Iterator[Side]:
    """A side from ``current``, an interpreter path, or ``ref:REV`` (a temporary git worktree, removed afterwards).

    A ref side runs this interpreter with the worktree's sources first on the path: right when the ref
    has the same dependencies; for other dependencies make a venv for the ref and give its interpreter.
    """
    extra = dict(env or {})
    text = spec.strip()
    if text in ("current", "."):
        yield Side(name, sys.executable, f"this environment ({sys.executable})", env=extra)
        return
    if text.startswith("ref:"):
        rev = text[4:].strip()
        if not rev or rev.startswith("-"):
            raise UsageError(f"--{name} {spec!r}: give a git revision after ref:, e.g. ref:origin/main")
        top = Path(_git(Path(repo or "."), "rev-parse", "--show-toplevel"))
        try:
            commit = _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except UsageError:
            raise UsageError(f"--{name} {spec!r}: no commit {rev!r} in {top}") from None
        parent = Path(workdir or tempfile.gettempdir())
        tree = Path(tempfile.mkdtemp(prefix=f"cnnbench-ab-{name}-", dir=parent))
        try:
            _git(top, "worktree", "add", "--detach", "--force", str(tree), commit)
            paths = tuple(str(p) for p in (tree, tree / "plugins") if p.is_dir())
            yield Side(name, sys.executable, f"git {rev} ({commit[:12]}) in a worktree, this interpreter", paths, extra)
        finally:
            with contextlib.suppress(UsageError):
                _git(top, "worktree", "remove", "--force", str(tree))
            shutil.rmtree(tree, ignore_errors=True)
            with contextlib.suppress(UsageError):
                _git(top, "worktree", "prune")
        return
    path = Path(text).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                path = candidate
                break
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(
            f"--{name} {spec!r}: not an executable Python interpreter or venv; give current, ref:REV or a path"
        )
    yield Side(name, str(path.absolute()), f"interpreter {path.absolute()}", env=extra)


# --- measuring ------------------------------------------------------------------------------------------------


class SideFailed(CnnbenchError):
    """A side's run did not produce a value: a crash, a timeout, a failed framework."""

    exit_code = ExitCode.BACKEND_FAILED


#: Measures one side once: (side, round index, seconds left) -> the run's result.
Measure = Callable[[Side, int, float], RunResult]


class SubprocessMeasure:
    """One ``cnnbench run --repeat 1`` per call, with the side's interpreter, in a fresh folder of ``workdir``."""

    def __init__(self, run_args: Sequence[str], workdir: str | os.PathLike[str]) -> None:
        self.run_args = [*check_run_args(run_args), "--skip-parity"]
        self.workdir = Path(workdir)

    def command(self, side: Side, out: Path) -> list[str]:
        """The command line of one side's run."""
        return [side.python, "-m", "cnnbench.cli", "run", *self.run_args, "--repeat", "1", "--results-dir", str(out)]

    def __call__(self, side: Side, index: int, seconds_left: float) -> RunResult:
        """Run it with the working directory in the fresh folder (so ``-m`` never imports a checkout from cwd)."""
        out = self.workdir / f"round{index:03d}-{side.name}"
        out.mkdir(parents=True, exist_ok=True)
        log = out / "output.log"
        timeout = max(seconds_left, 60.0)
        with log.open("wb") as handle:
            child = subprocess.Popen(
                self.command(side, out),
                cwd=out,
                env=side.environment(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                code: int | str = child.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop(child)
                code = f"stopped after {timeout:.0f} s"
            except BaseException:  # Ctrl-C, SIGTERM: the run stops its own workers, then ab cleans up
                _stop(child)
                raise
        files = sorted(out.glob("*.json"))
        if not files:
            raise SideFailed(f"{side.name} ({side.description}) wrote no result (exit {code}):\n{_tail(log)}")
        return results.load(files[-1])


def _stop(child: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM first, so ``cnnbench run`` ends its workers and keeps what finished; SIGKILL if it does not stop."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def side_values(result: RunResult, metric: Metric, side: str) -> dict[str, float]:
    """Per framework, the metric's value in this one-repeat run; a framework that did not run ok fails the side.

    One that cannot run on this machine (unavailable, unsupported) is left out; if the other side did run
    it, the comparison fails as "measured on one side only".
    """
    values: dict[str, float] = {}
    for row in result.backends:
        if row.status in (results.UNAVAILABLE, results.UNSUPPORTED):
            continue
        found = [v for v in row.values(metric.key) if stats.finite(v) and v > 0]  # ratios need positive values
        if row.status != results.OK or not found:
            reason = f"{row.status}: {row.reason}" if row.reason else row.status
            raise SideFailed(f"{side}: {row.backend} gave no {metric.key} ({reason})")
        values[row.backend] = found[0]
    if not values:
        raise SideFailed(f"{side}: the run measured no framework ({len(result.backends)} unavailable here)")
    return values


# --- deciding -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One framework after some rounds: the per-round ratios head/base, their median, its interval, the verdict."""

    backend: str
    ratios: tuple[float, ...]
    median: float
    low: float
    high: float
    verdict: str
    #: One-sided Wilcoxon signed-rank p-value that the head is worse than the base at all (any amount).
    p_worse: float

    @property
    def change(self) -> float:
        return self.median - 1

    def describe(self) -> str:
        """``-10.3% [-12.9%, -8.1%]``: the median change and its interval."""
        return f"{100 * (self.median - 1):+.1f}% [{100 * (self.low - 1):+.1f}%, {100 * (self.high - 1):+.1f}%]"


def verdict(low: float, high: float, threshold: float, bigger_is_better: bool) -> str:
    """Where the interval [low, high] of the ratio head/base lies against the threshold (see the module doc)."""
    if not bigger_is_better:  # a time or memory: a ratio above 1 is worse; mirror it onto "above 1 is better"
        low, high = 1 / high, 1 / low
    worse_line, better_line = 1 - threshold, 1 + threshold
    if high < worse_line:
        return REGRESSION
    if low > better_line:
        return IMPROVEMENT
    if low > worse_line:
        return UNCHANGED if high < better_line else NO_REGRESSION
    return UNDECIDED


def estimate(
    backend: str,
    ratios: Sequence[float],
    metric: Metric,
    threshold: float,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    min_rounds: int = DEFAULT_MIN_ROUNDS,
) -> Estimate:
    """The interval of the median ratio and its verdict; undecided before ``min_rounds`` rounds."""
    logs = [math.log(r) for r in ratios]
    low, high = stats.bootstrap_median_ci(logs, confidence, seed=seed)
    median = float(stats.median(logs) or 0.0)
    worse_sign = -1.0 if metric.bigger_is_better else 1.0
    p_worse = stats.wilcoxon_greater([worse_sign * d for d in logs])
    judged = verdict(math.exp(low), math.exp(high), threshold, metric.bigger_is_better)
    if len(ratios) < min_rounds:
        judged = UNDECIDED
    return Estimate(backend, tuple(ratios), math.exp(median), math.exp(low), math.exp(high), judged, p_worse)


@dataclass(frozen=True)
class Settings:
    """How ab decides: the metric, the threshold, the interval, the rounds and the time budget."""

    metric: Metric
    threshold: float = DEFAULT_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE
    budget_s: float = DEFAULT_BUDGET_S
    min_rounds: int = DEFAULT_MIN_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    seed: int = 0
    allow_config_change: bool = False

    def validate(self) -> Settings:
        """Every field in range, so bad input is one line and exit 2 before anything is measured."""
        if not 0 < self.threshold < 0.5:
            raise UsageError(f"threshold must be between 0 and 50%, got {100 * self.threshold:g}%")
        if not 0.5 <= self.confidence < 1:
            raise UsageError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.budget_s <= 0:
            raise UsageError(f"--budget must be positive, got {self.budget_s}")
        if self.min_rounds < 2:
            raise UsageError(f"--min-rounds must be at least 2, got {self.min_rounds}")
        if self.max_rounds < self.min_rounds:
            raise UsageError(f"--max-rounds ({self.max_rounds}) is below --min-rounds ({self.min_rounds})")
        return self


@dataclass(frozen=True)
class Round:
    """One round: which side ran first, each side's value per framework, and its wall time."""

    index: int
    order: tuple[str, str]
    base: dict[str, float]
    head: dict[str, float]
    seconds: float

    def ratio(self, backend: str) -> float:
        return self.head[backend] / self.base[backend]


@dataclass(frozen=True)
class Outcome:
    """What ab found: every round, each framework's estimate, the overall verdict and its exit code."""

    base: Side
    head: Side
    settings: Settings
    rounds: tuple[Round, ...]
    estimates: tuple[Estimate, ...]
    verdict: str
    reason: str
    elapsed_s: float
    #: What differs between the two sides' results besides the code: versions, commits, allowed config changes.
    differences: tuple[str, ...] = ()
    failure: str = ""

    @property
    def exit_code(self) -> int:
        return {
            REGRESSION: ExitCode.REGRESSION,
            INCONCLUSIVE: ExitCode.INCONCLUSIVE,
            FAILED: ExitCode.BACKEND_FAILED,
        }.get(self.verdict, ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        """The whole outcome as JSON-ready data (for CI artifacts and the power benchmark)."""
        return {
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "reason": self.reason,
            "elapsed_s": round(self.elapsed_s, 3),
            "failure": self.failure,
            "differences": list(self.differences),
            "sides": {s.name: {"description": s.description, "env": dict(s.env)} for s in (self.base, self.head)},
            "settings": {
                "metric": self.settings.metric.key,
                "threshold": self.settings.threshold,
                "confidence": self.settings.confidence,
                "budget_s": self.settings.budget_s,
                "min_rounds": self.settings.min_rounds,
                "max_rounds": self.settings.max_rounds,
                "seed": self.settings.seed,
            },
            "estimates": [
                {
                    "backend": e.backend,
                    "verdict": e.verdict,
                    "median_ratio": e.median,
                    "low": e.low,
                    "high": e.high,
                    "p_worse": e.p_worse,
                    "ratios": list(e.ratios),
                }
                for e in self.estimates
            ],
            "rounds": [
                {
                    "index": r.index,
                    "order": list(r.order),
                    "base": r.base,
                    "head": r.head,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.rounds
            ],
        }


def overall(estimates: Sequence[Estimate]) -> str:
    """Regression if any framework regressed; else inconclusive if any is undecided; else the common verdict."""
    verdicts = {e.verdict for e in estimates}
    if REGRESSION in verdicts:
        return REGRESSION
    if UNDECIDED in verdicts or not verdicts:
        return INCONCLUSIVE
    if len(verdicts) == 1:
        return verdicts.pop()
    return NO_REGRESSION


class Observer:
    """Progress hooks for the command line; every method is optional."""

    def side_started(self, side: Side, index: int) -> None: ...
    def round_done(self, done: Round, estimates: Sequence[Estimate], elapsed_s: float) -> None: ...


def round_order(index: int) -> tuple[str, str]:
    """A B, B A, A B, ...: each side goes first in every other round."""
    return (BASE, HEAD) if index % 2 == 0 else (HEAD, BASE)


def run_ab(
    base: Side,
    head: Side,
    settings: Settings,
    measure: Measure,
    observer: Observer | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Measure rounds until every framework's verdict is decided, the budget or the round limit is reached."""
    settings = settings.validate()
    observer = observer or Observer()
    start = clock()
    rounds: list[Round] = []
    estimates: list[Estimate] = []
    differences: list[str] = []
    sides = {BASE: base, HEAD: head}

    def finish(verdict_: str, reason: str, failure: str = "") -> Outcome:
        return Outcome(
            base,
            head,
            settings,
            tuple(rounds),
            tuple(estimates),
            verdict_,
            reason,
            clock() - start,
            tuple(differences),
            failure,
        )

    while True:
        index = len(rounds)
        elapsed = clock() - start
        if rounds:
            per_round = float(stats.median([r.seconds for r in rounds]) or 0.0)
            if elapsed + per_round > settings.budget_s:
                return finish(overall(estimates), f"budget of {settings.budget_s:.0f} s spent after {index} rounds")
            if index >= settings.max_rounds:
                return finish(overall(estimates), f"--max-rounds {settings.max_rounds} reached")
        began = clock()
        values: dict[str, dict[str, float]] = {}
        results_: dict[str, RunResult] = {}
        try:
            for name in round_order(index):
                observer.side_started(sides[name], index)
                results_[name] = measure(sides[name], index, settings.budget_s - (clock() - start))
                values[name] = side_values(results_[name], settings.metric, name)
        except SideFailed as exc:
            return finish(FAILED, f"a side failed in round {index + 1}", str(exc))
        if index == 0:
            differences += _first_round_checks(results_[BASE], results_[HEAD], settings)
        missing = sorted(set(values[BASE]) ^ set(values[HEAD]))
        if missing:
            return finish(FAILED, f"round {index + 1}", f"frameworks measured on one side only: {', '.join(missing)}")
        done = Round(index, round_order(index), values[BASE], values[HEAD], clock() - began)
        rounds.append(done)
        estimates = [
            estimate(
                name,
                [r.ratio(name) for r in rounds],
                settings.metric,
                settings.threshold,
                settings.confidence,
                settings.seed,
                settings.min_rounds,
            )
            for name in sorted(values[BASE])
        ]
        observer.round_done(done, estimates, clock() - start)
        if all(e.verdict in DECIDED for e in estimates):
            return finish(overall(estimates), f"decided after {len(rounds)} rounds")


def _first_round_checks(base: RunResult, head: RunResult, settings: Settings) -> list[str]:
    """What differs between the sides; a configuration change is an error unless allowed."""
    changes = config_changes(base, head, (BASE, HEAD))
    if changes and not settings.allow_config_change:
        raise ConfigurationMismatch(
            "the two sides ran different configurations (" + "; ".join(changes) + "): their code reads the same "
            "run options differently; pass --allow-config-change to compare them anyway"
        )
    differences = comparability_warnings(base, head, (BASE, HEAD))
    for key in ("git_commit", "cnnbench_version", "python"):
        a, b = base.environment.get(key), head.environment.get(key)
        if a != b:
            differences.append(f"{key}: {a!r} (base) vs {b!r} (head)")
    return differences


# --- reporting ------------------------------------------------------------------------------------------------


def headline(outcome: Outcome) -> str:
    """One line: the overall verdict, why the loop stopped and how long it took."""
    minutes = outcome.elapsed_s / 60
    return f"{outcome.verdict}: {outcome.reason} ({len(outcome.rounds)} rounds, {minutes:.1f} min)"


def markdown(outcome: Outcome) -> str:
    """The outcome as a GitHub job summary (or PR comment): verdict, per-framework interval, sides, decision rule."""
    s = outcome.settings
    icon = {REGRESSION: "❌", INCONCLUSIVE: "⚠️", FAILED: "❌"}.get(outcome.verdict, "✅")
    lines = [
        f"### {icon} cnnbench ab: {_md(headline(outcome))}",
        "",
        f"{_md(s.metric.label)}, head vs base, each round both sides in fresh processes (order alternating). "
        f"Regression: the whole {100 * s.confidence:g}% interval of the median change is worse than "
        f"{100 * s.threshold:g}%.",
        "",
        "| framework | rounds | median change [interval] | p (head worse at all) | verdict |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for e in outcome.estimates:
        lines.append(f"| {_md(e.backend)} | {len(e.ratios)} | {e.describe()} | {e.p_worse:.3g} | {e.verdict} |")
    lines += ["", f"- base: {_md(outcome.base.description)}", f"- head: {_md(outcome.head.description)}"]
    lines += [f"- differs: {_md(d)}" for d in outcome.differences]
    if outcome.failure:
        lines += ["", "```", outcome.failure.replace("```", "'''"), "```"]
    return "\n".join(lines) + "\n\n"


def _md(text: str) -> str:
    """Text from result files and paths, inert in a markdown table (no markup, links or HTML)."""
    from cnnbench.report import strip_controls

    return re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", strip_controls(text))


def write_json(outcome: Outcome, path: str | os.PathLike[str]) -> Path:
    """The outcome as JSON (rounds, ratios, estimates): what the power benchmark and CI artifacts read."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
