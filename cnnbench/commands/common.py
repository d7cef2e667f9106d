"""What several commands share: the console, the ``run`` options and their typed form, and a run with progress bars.

Command modules reach each other only through this module or the core (tests/test_import_graph.py checks it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cnnbench import allocator, distributed, report, results
from cnnbench.config import (
    DEVICES,
    INIT_SCHEMES,
    OPTIMIZERS,
    DataConfig,
    TrainConfig,
    check_sizes,
    check_threads,
    check_timeout,
    override,
    parse_key_values,
)
from cnnbench.errors import ExitCode, UsageError
from cnnbench.frameworks import available_cores
from cnnbench.modes import MODES_CHOICES, BackendTarget
from cnnbench.plugins import Registry, load_registry
from cnnbench.report import literal
from cnnbench.results import OK, UNAVAILABLE, UNSUPPORTED, BackendResult, RunResult
from cnnbench.runner import (
    ALLOCATORS,
    RunInterrupted,
    RunObserver,
    RunOptions,
    parse_frameworks,
    run_benchmark,
)

#: Tables stay readable in logs and CI: a fixed wide width when stdout is not a terminal.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

#: Row statuses that do not make a run exit with 1: the backend could not run here, by design.
NOT_FAILURES = (OK, UNAVAILABLE, UNSUPPORTED)

F = TypeVar("F", bound=Callable[..., Any])


def model_option() -> Callable[[F], F]:
    """``--model NAME``: the network to train, shared by run, check, reproduce and ab."""
    return click.option(
        "--model", "-m", default=None, help="Registered model name (see 'cnnbench list') [lenet: the chapter's]."
    )


def run_options(func: F) -> F:
    """Options shared by ``run`` and commands built on it; each is a field of ``RunParams``."""
    options = [
        click.option(
            "--frameworks",
            "-f",
            default="all",
            show_default=True,
            help="Comma list of backends (name, name:variant, name:mode, name:variant+mode), or 'all'.",
        ),
        click.option(
            "--modes",
            type=click.Choice(MODES_CHOICES),
            default="default",
            show_default=True,
            help="default: each framework's default execution mode; all: every mode it declares, a row each.",
        ),
        click.option("--dataset", "-d", default=None, help="Registered dataset name (see 'cnnbench list') [mnist]."),
        model_option(),
        click.option("--epochs", "-e", type=int, default=None, help="Training epochs [1]."),
        click.option("--batch-size", "-b", type=int, default=None, help="Training batch size [100]."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer [adam]."),
        click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate [0.001]."),
        click.option("--seed", type=int, default=None, help="Seed for weights, batch order and dropout [0]."),
        click.option(
            "--init", type=click.Choice(INIT_SCHEMES), default=None, help="Weight-init scheme [glorot-uniform]."
        ),
        click.option(
            "--dropout",
            type=float,
            default=None,
            help="Dropout rate (default: 0.2 for colour datasets, none for grayscale).",
        ),
        click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores]."),
        click.option(
            "--warmup-steps",
            type=int,
            default=None,
            help="Batches excluded from steady state when running one epoch [10].",
        ),
        click.option("--eval-batch-size", type=int, default=None, help="Evaluation batch size [1000]."),
        click.option(
            "--eval-warmup/--no-eval-warmup",
            default=None,
            help="One untimed evaluation pass before the timed one (eval samples/s is a steady state) [on].",
        ),
        click.option("--device", type=click.Choice(DEVICES), default=None, help="Device [auto]."),
        click.option(
            "--devices",
            default=None,
            metavar="N|N1,N2,...",
            help="Data-parallel devices per host (global batch = batch size x devices); "
            "N measures 1, 2, 4 ... N and prints a scaling table; see docs/distributed.md.",
        ),
        click.option(
            "--backend-option",
            "backend_options",
            multiple=True,
            metavar="NAME.KEY=VALUE",
            help="Backend switch, e.g. tf.xla=true (repeatable).",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder holding dataset files (else $CNNBENCH_DATA_DIR, the cache...).",
        ),
        click.option("--offline", is_flag=True, default=False, help="Never download datasets."),
        click.option(
            "--limit-train", type=int, default=None, help="Use a seeded, stratified subset of N training images."
        ),
        click.option("--limit-test", type=int, default=None, help="Use a seeded, stratified subset of N test images."),
        click.option("--validation", type=int, default=None, help="Hold out N training images (seeded)."),
        click.option(
            "--standardize/--no-standardize", default=None, help="Per-channel standardisation with training statistics."
        ),
        click.option(
            "--dataset-option",
            "dataset_options",
            multiple=True,
            metavar="KEY=VALUE",
            help="Dataset-specific option (repeatable).",
        ),
        click.option(
            "--repeat",
            type=int,
            default=1,
            show_default=True,
            help="Repeat the whole measurement N times (fresh process each).",
        ),
        click.option(
            "--timeout",
            "timeout_s",
            type=float,
            default=None,
            help="Seconds before a backend's worker is killed [no limit].",
        ),
        click.option(
            "--target-accuracy",
            type=float,
            default=None,
            help="Evaluate after each epoch and report training time until this accuracy (0..1).",
        ),
        click.option(
            "--allocator",
            type=click.Choice(ALLOCATORS),
            default="auto",
            show_default=True,
            help="Memory allocator for every backend (auto: the fastest installed; docs/performance.md).",
        ),
        click.option(
            "--results-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Where result JSON files go [$CNNBENCH_RESULTS_DIR or ./results].",
        ),
        click.option("--no-save", is_flag=True, default=False, help="Do not write a result file."),
        click.option(
            "--skip-parity",
            is_flag=True,
            default=False,
            help="Skip the parity check against the float64 reference (on by default).",
        ),
        click.option(
            "--plot",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write loss / accuracy curves and throughput bars to FILE.png (evaluates after every epoch).",
        ),
        click.option(
            "--report",
            "report_dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Also write the HTML report of the result store (this run included) to DIR/index.html "
            "(evaluates after every epoch).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class RunParams:
    """The ``run`` options, typed: what run, scale and reproduce hand each other instead of click's dict.

    Field names are click's parameter names, so ``RunParams.from_options(kwargs)`` takes a command's kwargs;
    the defaults are the options' defaults (None: the preset's or the config's value).
    """

    frameworks: str = "all"
    modes: str = "default"
    dataset: str | None = None
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    learning_rate: float | None = None
    seed: int | None = None
    init: str | None = None
    dropout: float | None = None
    threads: int | None = None
    warmup_steps: int | None = None
    eval_batch_size: int | None = None
    eval_warmup: bool | None = None
    device: str | None = None
    devices: str | None = None
    backend_options: tuple[str, ...] = ()
    data_dir: str | None = None
    offline: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    validation: int | None = None
    standardize: bool | None = None
    dataset_options: tuple[str, ...] = ()
    repeat: int = 1
    timeout_s: float | None = None
    target_accuracy: float | None = None
    allocator: str = "auto"
    results_dir: str | None = None
    no_save: bool = False
    skip_parity: bool = False
    plot: str | None = None
    report_dir: str | None = None
    #: Not an option: evaluate after every epoch even without ``plot`` (reproduce plots every preset at the end).
    evaluate_each_epoch: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RunParams:
        """From the keyword arguments click passes a command decorated with ``run_options``."""
        return cls(**options)


def build_configs(
    params: RunParams,
    base_train: TrainConfig | None = None,
    base_data: DataConfig | None = None,
) -> tuple[TrainConfig, DataConfig]:
    """Configs from the run options; explicit flags override the base (a preset or the defaults)."""
    train = override(
        base_train or TrainConfig(),
        model=params.model,
        epochs=params.epochs,
        batch_size=params.batch_size,
        optimizer=params.optimizer,
        learning_rate=params.learning_rate,
        seed=params.seed,
        init=params.init,
        dropout=params.dropout,
        threads=params.threads,
        warmup_steps=params.warmup_steps,
        eval_batch_size=params.eval_batch_size,
        eval_warmup=params.eval_warmup,
        device=params.device,
    )
    if params.backend_options:
        chosen = parse_key_values(params.backend_options, "--backend-option")
        train = override(train, backend_options={**train.backend_options, **chosen})
    if train.backend_options:
        train = replace(train, backend_options=checked_backend_options(train.backend_options))
    data = override(
        base_data or DataConfig(),
        dataset=params.dataset,
        data_dir=params.data_dir,
        limit_train=params.limit_train,
        limit_test=params.limit_test,
        validation=params.validation,
        standardize=params.standardize,
        offline=params.offline or None,
    )
    if params.dataset_options:
        data = override(data, options={**data.options, **parse_key_values(params.dataset_options, "--dataset-option")})
    if params.target_accuracy is not None and not 0 < params.target_accuracy <= 1:
        raise UsageError(f"target accuracy must be in (0, 1], got {params.target_accuracy}")
    if params.repeat < 1:
        raise UsageError(f"repeat must be at least 1, got {params.repeat}")
    check_timeout(params.timeout_s)
    check_threads(train.threads, available_cores())
    allocator.resolve(params.allocator)  # a missing library: one line before the dataset and the first worker
    if params.report_dir is not None and Path(params.report_dir).exists() and not Path(params.report_dir).is_dir():
        raise UsageError(f"--report {params.report_dir} is a file; give a folder")
    return train.validate(), data.validate()


def backend_options_table(registry: Registry) -> Table | None:
    """Every ``--backend-option`` the backends declare, with its values and default; None when none declares one."""
    from cnnbench.backend_options import declared_options

    rows = [
        (name, option)
        for name, registered in sorted(registry.backends.items())
        for option in declared_options(registered.item)
    ]
    if not rows:
        return None
    table = Table(title="Backend options (--backend-option NAME.KEY=VALUE)", title_justify="left")
    for column in ("option", "values", "default", "what it does"):
        table.add_column(column, overflow="fold")
    for name, option in rows:  # plugin text: shown literally
        table.add_row(
            literal(f"{name}.{option.key}"),
            literal(option.describe_values()),
            literal(option.describe_default()),
            literal(option.help),
        )
    return table


def checked_backend_options(options: Mapping[str, str]) -> dict[str, str]:
    """``--backend-option`` values checked against what each registered backend declares, in canonical form."""
    from cnnbench.backend_options import validate_backend_options

    return validate_backend_options(options, load_registry())


class ProgressObserver(RunObserver):
    """A rich progress bar per backend: epochs and batches while it trains."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.bar, self.epochs = progress, epochs
        self.task: TaskID | None = None
        self.label = ""

    def backend_started(self, target: BackendTarget, repeat: int, repeats: int) -> None:
        # The bar's text column reads markup: a plugin's backend name is escaped.
        self.label = escape(target.id) + (f" (repeat {repeat}/{repeats})" if repeats > 1 else "")
        self.task = self.bar.add_task(f"{self.label}: starting", total=None)

    def phase(self, target: BackendTarget, name: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=f"{self.label}: {name.replace('_', ' ')}")

    def progress(self, target: BackendTarget, epoch: int, done: int, total: int) -> None:
        if self.task is not None:
            self.bar.update(
                self.task,
                description=f"{self.label}: epoch {epoch}/{self.epochs}",
                completed=(epoch - 1) * total + done,
                total=self.epochs * total,
            )

    def backend_finished(self, result: BackendResult) -> None:
        if self.task is None:
            return  # a row that never started a worker (unavailable, unsupported): no bar of its own
        status = "done" if result.status == "ok" else result.status
        self.bar.update(self.task, description=f"{self.label}: {status}")
        self.bar.stop_task(self.task)
        self.task = None


class RunProgress(ProgressObserver):
    """The progress bars, and the one fact about saving that ``execute_run`` must tell after the table."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        super().__init__(progress, epochs)
        self.save_problem: str | None = None
        self.saved_instead: Path | None = None

    def save_failed(self, problem: str, saved_to: Path | None) -> None:
        self.save_problem, self.saved_instead = problem, saved_to


def execute_run(
    params: RunParams,
    train: TrainConfig,
    data: DataConfig,
    preset: str | None = None,
    title: str | None = None,
    show: bool = True,
) -> tuple[RunResult, Path | None]:
    """Validate, prepare the dataset once, run every backend in its own process, print and save.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP) prints and saves what finished, then exits 128 + the signal.
    """
    registry = load_registry()
    targets = parse_frameworks(params.frameworks, registry, params.modes)
    if not params.no_save:  # before the dataset download and the first worker, not after the first backend
        unwritable = results.writable_folder_error(params.results_dir)
        if unwritable:
            raise UsageError(unwritable)
    dataset = registry.dataset(data.dataset).item
    with console.status(f"preparing dataset {data.dataset}..."):
        arrays = dataset.load(data)  # locate, download, verify and cache once, in the parent
    check_sizes(train, data, len(arrays.y_train), distributed.replicas(train))  # one line, not a failed row each
    options = RunOptions(
        repeat=params.repeat,
        timeout_s=params.timeout_s,
        target_accuracy=params.target_accuracy,
        allocator=params.allocator,
        results_dir=params.results_dir,
        save=not params.no_save,
        preset=preset,
        measure_ceiling=True,
        parity=not params.skip_parity,
        evaluate_each_epoch=params.evaluate_each_epoch or bool(params.plot or params.report_dir),
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    observer = RunProgress(progress, train.epochs)
    stopped: RunInterrupted | None = None
    try:
        with progress:
            try:
                result, path = run_benchmark(targets, registry, train, data, options, observer)
            except RunInterrupted as stop:
                stopped = stop
    except OSError:  # the terminal went away (SIGHUP) while the bars were closed: still save and exit as told
        if stopped is None:
            raise
    if stopped is not None:
        with contextlib.suppress(OSError):
            report.print_result(stopped.result, console, title)
            _warn_if_not_saved(observer)
            where = Text.assemble("; finished results saved to ", report.literal(stopped.path)) if stopped.path else ""
            err_console.print(
                Text.assemble(("interrupted", "yellow"), f" by {stopped.signal_name}", where), soft_wrap=True
            )
        sys.exit(stopped.exit_code)
    if show:
        report.print_result(result, console, title)
    if path and observer.save_problem is None:
        console.print(Text.assemble("saved ", report.literal(path)))
    _warn_if_not_saved(observer)
    return result, path


def _warn_if_not_saved(observer: RunProgress) -> None:
    """One line: the asked results folder failed mid-run, and where the whole run went instead."""
    if observer.save_problem is None:
        return
    if observer.saved_instead is not None:
        where = Text.assemble("; the whole run was saved to ", report.literal(observer.saved_instead), " instead")
    else:
        where = Text("; no fallback folder was writable either: the result is only in the table above")
    err_console.print(
        Text.assemble(("warning:", "yellow"), " ", report.literal(observer.save_problem), where), soft_wrap=True
    )


def not_saved(params: RunParams, path: Path | None) -> bool:
    """Whether a run that was to be saved is not in the asked folder (it went to a fallback, or nowhere)."""
    if params.no_save:
        return False
    return path is None or path.parent.resolve() != results.results_dir(params.results_dir).resolve()


def run_title(train: TrainConfig, data: DataConfig, where: distributed.Cluster) -> str:
    """The per-run table title of a data-parallel run, stating the global batch."""
    hosts = f"{where.num_hosts} hosts x " if where.multi_host else ""
    devices = f"{train.devices} device{'s' if train.devices != 1 else ''}"
    return (
        f"cnnbench: {data.dataset}, {train.optimizer} lr {train.learning_rate:g}, {hosts}{devices} x batch "
        f"{train.batch_size} = global batch {distributed.global_batch_size(train, where):,}, "
        f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}, {train.threads} threads"
    )


def targets_for_count(params: RunParams, train: TrainConfig, counts: list[int], count: int) -> list[str]:
    """Backend ids to run at ``count``: the one-device baseline only for backends that scale at another count."""
    registry = load_registry()
    targets = parse_frameworks(params.frameworks, registry, params.modes)
    if count != 1 or not any(c > 1 for c in counts):
        return [t.id for t in targets]
    kept = []
    others = [c for c in counts if c > 1]
    for target in targets:
        backend = registry.backend(target.name).item
        if backend.unavailable_reason() or any(
            backend.devices_unsupported_reason(target.variant, replace(train, devices=c)) is None for c in others
        ):
            kept.append(target.id)
    return kept


def run_device_counts(
    params: RunParams,
    train: TrainConfig,
    data: DataConfig,
    preset: str | None = None,
    counts: list[int] | None = None,
) -> list[RunResult]:
    """A run per device count (each printed and saved), then the scaling table; exits 3 on a failed row.

    ``run --devices`` and ``scale`` both end here; ``params.devices`` gives the counts unless ``counts`` does.
    """
    where = distributed.cluster()
    counts = counts or distributed.parse_device_counts(params.devices or "", where)
    train = replace(train, threads=train.threads or os.cpu_count() or 1)  # as run_benchmark resolves it
    runs: list[RunResult] = []
    unsaved = False
    for count in counts:
        train_n = replace(train, devices=count).validate()
        ids = targets_for_count(params, train_n, counts, count)
        if not ids:
            continue
        hosts = f", {where.describe()}" if where.multi_host else ""
        console.rule(f"{count} device{'s' if count != 1 else ''} per host{hosts}")
        result, path = execute_run(
            replace(params, frameworks=",".join(ids)),
            train_n,
            data,
            preset=preset,
            title=run_title(train_n, data, where),
        )
        runs.append(result)
        unsaved = unsaved or not_saved(params, path)
    print_scaling(runs)
    if params.plot:
        from cnnbench.plots import plot_runs

        plotted = plot_runs([(f"{r.train.devices} device(s)", r) for r in runs], params.plot)
        console.print(Text.assemble("plot written to ", literal(plotted)))
    if runs:
        write_report_if_asked(params, runs[-1])
    if unsaved:
        sys.exit(ExitCode.NOT_SAVED)
    if any(row.status not in NOT_FAILURES for run in runs for row in run.backends):
        sys.exit(ExitCode.BACKEND_FAILED)
    return runs


def write_report_if_asked(params: RunParams, latest: RunResult) -> None:
    """``--report DIR``: the HTML report of the result store, with ``latest`` in it even when it was not saved."""
    if params.report_dir:
        from cnnbench.html import write_store_report

        written = write_store_report(Path(params.report_dir), params.results_dir, latest=latest)
        console.print(Text.assemble("report written to ", literal(written)))


def print_scaling(runs: list[RunResult]) -> None:
    """The speed-up and efficiency table of runs at several device counts."""
    from cnnbench.scaling import SIMULATED_NOTE, scaling_table, simulated_devices_only

    if not runs:
        console.print("no run to report")
        return
    console.print(scaling_table(runs))
    if simulated_devices_only(runs):
        console.print(Text(SIMULATED_NOTE, style="dim"))
