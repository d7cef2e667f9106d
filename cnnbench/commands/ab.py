"""``cnnbench ab --base SIDE -- RUN_OPTIONS``: the CI gate, both sides measured here and now, interleaved."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import click
from rich.table import Table
from rich.text import Text

from cnnbench import ab
from cnnbench.commands.common import console, err_console
from cnnbench.compare import metric_for
from cnnbench.errors import ExitCode, UsageError
from cnnbench.report import literal
from cnnbench.runner import STOP_SIGNALS, Interrupted

VERDICT_STYLE = {
    ab.REGRESSION: "bold red",
    ab.FAILED: "bold red",
    ab.INCONCLUSIVE: "yellow",
    ab.UNDECIDED: "yellow",
    ab.IMPROVEMENT: "green",
    ab.UNCHANGED: "green",
    ab.NO_REGRESSION: "green",
}


class ConsoleObserver(ab.Observer):
    """A line per round on stderr: the ratios and where each framework's interval stands."""

    def round_done(self, done: ab.Round, estimates: Sequence[ab.Estimate], elapsed_s: float) -> None:
        parts = [
            Text(f"round {done.index + 1:>3} ({done.order[0]} first, {done.seconds:.0f} s, {elapsed_s / 60:.1f} min): ")
        ]
        for e in estimates:
            parts += [
                literal(e.backend),
                Text(f" {done.ratio(e.backend):.3f}, median {e.describe()} "),
                Text(e.verdict, style=VERDICT_STYLE.get(e.verdict, "")),
                Text("  "),
            ]
        err_console.print(Text.assemble(*parts), highlight=False, soft_wrap=True)


def outcome_table(outcome: ab.Outcome) -> Table:
    """One row per framework: rounds, median change with its interval, the paired test, the verdict."""
    s = outcome.settings
    unit = f"{s.metric.label}, head / base - 1"
    table = Table(title=f"cnnbench ab: {unit}; threshold {100 * s.threshold:g}%", title_justify="left")
    for name in (
        "framework",
        "rounds",
        f"median change [{100 * s.confidence:g}% interval]",
        "p (head worse)",
        "verdict",
    ):
        table.add_column(name, justify="left" if name in ("framework", "verdict") else "right")
    for e in outcome.estimates:
        table.add_row(
            literal(e.backend),
            str(len(e.ratios)),
            e.describe(),
            f"{e.p_worse:.3g}",
            Text(e.verdict, style=VERDICT_STYLE.get(e.verdict, "")),
        )
    return table


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a cancelled CI job, a closed terminal) stop ab as Ctrl-C does: worktrees and folders go."""
    previous: dict[int, object] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # once: the cleanup must finish
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                previous[sig] = current
                signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        folder = Path(keep)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--keep {keep}: {exc.strerror or exc}") from None
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="cnnbench-ab-") as name:
        yield Path(name)


@click.command("ab", context_settings={"max_content_width": 110})
@click.option(
    "--base",
    "base_spec",
    required=True,
    metavar="SIDE",
    help="The reference: 'ref:REV' (a git worktree run with this interpreter), a Python interpreter "
    "or venv path (another cnnbench, plugin or framework version), or 'current'.",
)
@click.option(
    "--head",
    "head_spec",
    default="current",
    show_default=True,
    metavar="SIDE",
    help="The change under test, same forms as --base.",
)
@click.option("--base-env", multiple=True, metavar="NAME=VALUE", help="Environment variable for the base's runs.")
@click.option("--head-env", multiple=True, metavar="NAME=VALUE", help="Environment variable for the head's runs.")
@click.option(
    "--metric",
    "-m",
    default="train_throughput",
    show_default=True,
    help="Metric of each run compared as the ratio head/base within each round.",
)
@click.option(
    "--threshold",
    default="5%",
    show_default=True,
    help="Regression: the whole interval of the median change is worse than this.",
)
@click.option(
    "--confidence",
    type=float,
    default=ab.DEFAULT_CONFIDENCE,
    show_default=True,
    help="Coverage of the bootstrap interval of the median per-round ratio.",
)
@click.option(
    "--budget",
    default="10m",
    show_default=True,
    help="Stop starting rounds when the next would end past this (10m, 90s, 1h); undecided: inconclusive.",
)
@click.option(
    "--min-rounds", type=int, default=ab.DEFAULT_MIN_ROUNDS, show_default=True, help="Rounds before any verdict."
)
@click.option("--max-rounds", type=int, default=ab.DEFAULT_MAX_ROUNDS, show_default=True, help="Rounds at most.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--allow-config-change",
    is_flag=True,
    default=False,
    help="Compare even when the two sides ran different configurations (else exit 2).",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the outcome as markdown to this file (e.g. $GITHUB_STEP_SUMMARY).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the outcome (every round, ratio and interval) as JSON.",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep every run's result file and output in this folder [a temporary folder].",
)
@click.option(
    "--repo",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Git repository of ref: sides [the current directory's].",
)
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def ab_command(
    base_spec: str,
    head_spec: str,
    base_env: tuple[str, ...],
    head_env: tuple[str, ...],
    metric: str,
    threshold: str,
    confidence: float,
    budget: str,
    min_rounds: int,
    max_rounds: int,
    seed: int,
    allow_config_change: bool,
    summary_path: str | None,
    json_path: str | None,
    keep: str | None,
    repo: str | None,
    run_args: tuple[str, ...],
) -> None:
    """Measure BASE and HEAD in this job, alternating, until the change is decided: the CI gate.

    RUN_ARGS after -- are 'cnnbench run' options both sides get (e.g. -- -f torch -d synthetic -e 3
    --limit-train 2000). Each round runs both sides once, each in a fresh process, the order alternating.
    Exit status: 0 no regression, 1 regression, 2 bad input or different configurations, 3 a side
    failed, 5 inconclusive (budget spent first), 130 interrupted. See docs/ci.md.
    """
    settings = ab.Settings(
        metric_for(metric),
        ab.parse_threshold(threshold),
        confidence,
        ab.parse_duration(budget),
        min_rounds,
        max_rounds,
        seed,
        allow_config_change,
    ).validate()
    if not run_args:
        raise UsageError("give the 'cnnbench run' options after --, e.g. cnnbench ab --base ref:main -- -f torch")
    args = ab.check_run_args(run_args)
    envs = ab.parse_env(base_env, "--base-env"), ab.parse_env(head_env, "--head-env")
    try:
        with (
            _stop_signals(),
            _workdir(keep) as work,
            ab.prepare_side(base_spec, ab.BASE, envs[0], repo, work) as base,
            ab.prepare_side(head_spec, ab.HEAD, envs[1], repo, work) as head,
        ):
            err_console.print(Text.assemble("base: ", literal(base.description)), highlight=False, soft_wrap=True)
            err_console.print(Text.assemble("head: ", literal(head.description)), highlight=False, soft_wrap=True)
            outcome = ab.run_ab(base, head, settings, ab.SubprocessMeasure(args, work), ConsoleObserver())
    except KeyboardInterrupt as stop:
        err_console.print(Text.assemble(("interrupted", "yellow"), f" ({stop})" if str(stop) else ""))
        click.get_current_context().exit(
            ExitCode.for_signal(stop.signum) if isinstance(stop, Interrupted) else ExitCode.INTERRUPTED
        )
    console.print(outcome_table(outcome))
    for difference in outcome.differences:
        console.print(Text.assemble(("differs:", "yellow"), " ", literal(difference)), soft_wrap=True)
    if outcome.failure:
        err_console.print(literal(outcome.failure), soft_wrap=True)
    if summary_path:
        try:
            with Path(summary_path).open("a") as handle:
                handle.write(ab.markdown(outcome))
        except OSError as exc:
            raise UsageError(f"cannot write summary {summary_path}: {exc.strerror or exc}") from None
    if json_path:
        ab.write_json(outcome, json_path)
    console.print(literal(ab.headline(outcome), VERDICT_STYLE.get(outcome.verdict, "")), soft_wrap=True)
    click.get_current_context().exit(outcome.exit_code)


command: click.Command = ab_command
