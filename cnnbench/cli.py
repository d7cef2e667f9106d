"""The ``cnnbench`` command line. Errors a user can cause end as one line and exit code 2."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnbench import __version__, report
from cnnbench.config import DEVICES, INIT_SCHEMES, OPTIMIZERS, DataConfig, TrainConfig, parse_key_values
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.plugins import load_registry
from cnnbench.runner import ALLOCATORS, BackendTarget, RunInterrupted, RunObserver, RunOptions, parse_frameworks, run_benchmark

#: Tables stay readable in logs and CI: a fixed wide width when stdout is not a terminal.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


class CnnbenchGroup(click.Group):
    """Turns project errors and click usage errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            err_console.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
            ctx.exit(2)
        except CnnbenchError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=CnnbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnbench")
def cli() -> None:
    """Train the same LeNet in several frameworks; compare accuracy and speed."""


class ProgressObserver(RunObserver):
    """A rich progress bar per backend: epochs and batches while it trains."""

    def __init__(self, progress: Progress, epochs: int):
        self.bar, self.epochs, self.task, self.label = progress, epochs, None, ""

    def backend_started(self, target: BackendTarget, repeat: int, repeats: int) -> None:
        self.label = target.id + (f" (repeat {repeat}/{repeats})" if repeats > 1 else "")
        self.task = self.bar.add_task(f"{self.label}: starting", total=None)

    def phase(self, target: BackendTarget, name: str) -> None:
        self.bar.update(self.task, description=f"{self.label}: {name.replace('_', ' ')}")

    def progress(self, target: BackendTarget, epoch: int, done: int, total: int) -> None:
        self.bar.update(self.task, description=f"{self.label}: epoch {epoch}/{self.epochs}", completed=(epoch - 1) * total + done, total=self.epochs * total)

    def backend_finished(self, result) -> None:
        if self.task is None:
            return  # a row that never started a worker (unavailable, unsupported): no bar of its own
        status = "done" if result.status == "ok" else result.status
        self.bar.update(self.task, description=f"{self.label}: {status}")
        self.bar.stop_task(self.task)
        self.task = None


def run_options(func):
    """Options shared by ``run`` and commands built on it."""
    options = [
        click.option("--frameworks", "-f", default="all", show_default=True, help="Comma list of backends (name or name:variant), or 'all'."),
        click.option("--dataset", "-d", default=None, help="Registered dataset name (see 'cnnbench list') [mnist]."),
        click.option("--epochs", "-e", type=int, default=None, help="Training epochs [1]."),
        click.option("--batch-size", "-b", type=int, default=None, help="Training batch size [100]."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer [adam]."),
        click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate [0.001]."),
        click.option("--seed", type=int, default=None, help="Seed for weights, batch order and dropout [0]."),
        click.option("--init", type=click.Choice(INIT_SCHEMES), default=None, help="Weight-init scheme [glorot-uniform]."),
        click.option("--dropout", type=float, default=None, help="Dropout rate (default: 0.2 for colour datasets, none for grayscale)."),
        click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores]."),
        click.option("--warmup-steps", type=int, default=None, help="Batches excluded from steady state when running one epoch [10]."),
        click.option("--eval-batch-size", type=int, default=None, help="Evaluation batch size [1000]."),
        click.option("--device", type=click.Choice(DEVICES), default=None, help="Device [auto]."),
        click.option("--devices", default=None, metavar="N|N1,N2,...", help="Data-parallel devices per host (global batch = batch size x devices); N measures 1, 2, 4 ... N and prints a scaling table; see docs/distributed.md."),
        click.option("--backend-option", "backend_options", multiple=True, metavar="NAME.KEY=VALUE", help="Backend switch, e.g. tf.xla=true (repeatable)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files (else $CNNBENCH_DATA_DIR, the cache...)."),
        click.option("--offline", is_flag=True, default=False, help="Never download datasets."),
        click.option("--limit-train", type=int, default=None, help="Use a seeded, stratified subset of N training images."),
        click.option("--limit-test", type=int, default=None, help="Use a seeded, stratified subset of N test images."),
        click.option("--validation", type=int, default=None, help="Hold out N training images (seeded)."),
        click.option("--standardize/--no-standardize", default=None, help="Per-channel standardisation with training statistics."),
        click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE", help="Dataset-specific option (repeatable)."),
        click.option("--repeat", type=int, default=1, show_default=True, help="Repeat the whole measurement N times (fresh process each)."),
        click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds before a backend's worker is killed [no limit]."),
        click.option("--target-accuracy", type=float, default=None, help="Evaluate after each epoch and report training time until this accuracy (0..1)."),
        click.option("--allocator", type=click.Choice(ALLOCATORS), default="auto", show_default=True, help="Memory allocator for every backend (auto: tcmalloc when installed)."),
        click.option("--results-dir", type=click.Path(file_okay=False), default=None, help="Where result JSON files go [$CNNBENCH_RESULTS_DIR or ./results]."),
        click.option("--no-save", is_flag=True, default=False, help="Do not write a result file."),
        click.option("--skip-parity", is_flag=True, default=False, help="Skip the parity check against the float64 reference (on by default)."),
        click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write loss / accuracy curves and throughput bars to FILE.png (evaluates after every epoch)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_configs(params: dict, base_train: TrainConfig | None = None, base_data: DataConfig | None = None) -> tuple[TrainConfig, DataConfig]:
    """Configs from CLI parameters; explicit flags override the base (a preset or the defaults)."""
    from cnnbench.config import override

    train = override(
        base_train or TrainConfig(),
        epochs=params["epochs"], batch_size=params["batch_size"], optimizer=params["optimizer"],
        learning_rate=params["learning_rate"], seed=params["seed"], init=params["init"], dropout=params["dropout"],
        threads=params["threads"], warmup_steps=params["warmup_steps"], eval_batch_size=params["eval_batch_size"],
        device=params["device"],
    )
    if params["backend_options"]:
        train = override(train, backend_options={**train.backend_options, **parse_key_values(params["backend_options"], "--backend-option")})
    data = override(
        base_data or DataConfig(),
        dataset=params["dataset"], data_dir=params["data_dir"], limit_train=params["limit_train"],
        limit_test=params["limit_test"], validation=params["validation"], standardize=params["standardize"],
        offline=params["offline"] or None,
    )
    if params["dataset_options"]:
        data = override(data, options={**data.options, **parse_key_values(params["dataset_options"], "--dataset-option")})
    if params["target_accuracy"] is not None and not 0 < params["target_accuracy"] <= 1:
        raise UsageError(f"target accuracy must be in (0, 1], got {params['target_accuracy']}")
    if params["repeat"] < 1:
        raise UsageError(f"repeat must be at least 1, got {params['repeat']}")
    if params["timeout_s"] is not None and params["timeout_s"] <= 0:
        raise UsageError(f"timeout must be positive, got {params['timeout_s']}")
    return train.validate(), data.validate()


def execute_run(params: dict, train: TrainConfig, data: DataConfig, preset: str | None = None, title: str | None = None, show: bool = True):
    """Validate, prepare the dataset once, run every backend in its own process, print and save."""
    registry = load_registry()
    targets = parse_frameworks(params["frameworks"], registry)
    dataset = registry.dataset(data.dataset).item
    with console.status(f"preparing dataset {data.dataset}..."):
        dataset.load(data)  # locate, download, verify and cache once, in the parent
    options = RunOptions(
        repeat=params["repeat"], timeout_s=params["timeout_s"], target_accuracy=params["target_accuracy"],
        allocator=params["allocator"], results_dir=params["results_dir"], save=not params["no_save"], preset=preset,
        measure_ceiling=True, parity=not params["skip_parity"], evaluate_each_epoch=bool(params.get("plot")),
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
    try:
        with progress:
            result, path = run_benchmark(targets, registry, train, data, options, ProgressObserver(progress, train.epochs))
    except RunInterrupted as stop:
        report.print_result(stop.result, console, title)
        where = f"; finished results saved to {stop.path}" if stop.path else ""
        err_console.print(f"[yellow]interrupted[/yellow]{where}")
        sys.exit(130)
    if show:
        report.print_result(result, console, title)
    if path:
        console.print(f"saved {path}")
    return result, path


@cli.command()
@run_options
@click.option("--preset", default=None, help="Start from a named preset (see 'cnnbench presets'); flags override it.")
def run(preset: str | None, **params) -> None:
    """Train and evaluate the LeNet in each framework; print a table and save a result JSON."""
    from cnnbench import presets

    chosen = presets.get(preset) if preset else None
    train, data = build_configs(params, chosen.train if chosen else None, chosen.data if chosen else None)
    if params.get("devices"):  # data-parallel runs and the scaling report
        from cnnbench.commands.scale import run_device_counts

        run_device_counts(params, train, data, preset)
        return
    result, _ = execute_run(params, train, data, preset=preset)
    if params["plot"]:
        from cnnbench.plots import plot_runs

        console.print(f"plot written to {plot_runs([(preset or data.dataset, result)], params['plot'])}")
    if any(row.status not in ("ok", "unavailable") for row in result.backends):
        sys.exit(1)


@cli.command("presets")
def presets_command() -> None:
    """The reference chapter's experiments, as named presets for 'run --preset' and 'reproduce'."""
    from cnnbench import presets

    table = Table(title="Presets (the reference chapter's results table)", title_justify="left")
    for column in ("preset", "published", "optimizer", "epochs", "init", "dropout", "data", "what"):
        table.add_column(column, overflow="fold")
    for p in presets.PRESETS.values():
        data = p.data.dataset + (f", {p.data.validation:,} held out" if p.data.validation else "")
        table.add_row(
            p.name, f"{100 * p.published_accuracy:.2f}% ({p.published_with})", f"{p.train.optimizer} {p.train.learning_rate:g}",
            str(p.train.epochs), p.train.init, f"{p.train.dropout:g}" if p.train.dropout else "-", data,
            p.description + (f". {p.notes}" if p.notes else ""),
        )
    console.print(table)


@cli.command("reproduce")
@click.option("--frameworks", "-f", default="all", show_default=True, help="Comma list of backends, or 'all'.")
@click.option("--presets", "preset_names", default="all", show_default=True, help="Comma list of presets, or 'all'.")
@click.option("--quick", is_flag=True, help="Shortened runs for CI: fewer epochs, seeded subsets (the table says so).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files.")
@click.option("--offline", is_flag=True, default=False, help="Never download datasets.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores].")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds before a backend's worker is killed.")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None, help="Where result JSON files go.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write curves and throughput bars for every preset to FILE.png.")
def reproduce_command(frameworks, preset_names, quick, data_dir, offline, threads, timeout_s, results_dir, plot) -> None:
    """Run the chapter's experiments in every framework; published vs measured accuracy side by side."""
    import time

    from cnnbench import presets
    from cnnbench.config import override

    chosen = presets.parse(preset_names)
    params = {"frameworks": frameworks, "repeat": 1, "timeout_s": timeout_s, "target_accuracy": None, "allocator": "auto",
              "results_dir": results_dir, "no_save": False, "skip_parity": False, "plot": True}
    runs = []
    started = time.perf_counter()
    for preset in chosen:
        train, data = preset.configs(quick)
        train = override(train, threads=threads).validate()
        data = override(data, data_dir=data_dir, offline=offline or None).validate()
        console.rule(f"{preset.name}{' (quick)' if quick else ''}")
        result, _ = execute_run(params, train, data, preset=preset.name, show=False)
        runs.append((preset, result))
    console.print(report.reproduce_table(runs, quick, time.perf_counter() - started))
    if plot:
        from cnnbench.plots import plot_runs

        console.print(f"plot written to {plot_runs([(p.name, r) for p, r in runs], plot)}")


@cli.command("list")
def list_command() -> None:
    """Registered backends and datasets, the plugin providing each, and whether each is usable."""
    registry = load_registry()
    backends = Table(title="Backends", title_justify="left")
    for column in ("name", "framework", "variants", "version", "plugin", "status"):
        backends.add_column(column, overflow="fold")
    for name in sorted(registry.backends):
        registered = registry.backends[name]
        backend = registered.item
        reason = _safe(backend.unavailable_reason)
        plugin = registered.plugin
        backends.add_row(
            name, backend.framework, ", ".join(backend.variants) or "-", _safe(backend.framework_version) or "-",
            f"{plugin.name} ({plugin.distribution} {plugin.version})".strip(),
            "[green]available[/green]" if not reason else f"[dim]unavailable: {escape(reason)}[/dim]",
        )
    console.print(backends)
    datasets = Table(title="Datasets", title_justify="left")
    for column in ("name", "shape", "classes", "plugin", "location"):
        datasets.add_column(column, overflow="fold")
    for name in sorted(registry.datasets):
        registered = registry.datasets[name]
        dataset = registered.item
        status = _safe(lambda: dataset.status(DataConfig(dataset=name))) or {}
        datasets.add_row(
            name, "x".join(map(str, dataset.input_shape)), str(dataset.num_classes),
            f"{registered.plugin.name} ({registered.plugin.distribution} {registered.plugin.version})".strip(),
            str(status.get("location", "?")),
        )
    console.print(datasets)
    broken = [p for p in registry.plugins if p.status != "ok"]
    if broken:
        table = Table(title="Plugins not loaded", title_justify="left")
        for column in ("plugin", "module", "status"):
            table.add_column(column, overflow="fold")
        for plugin in broken:
            table.add_row(plugin.name, plugin.module, f"[red]{plugin.status}[/red]: {escape(plugin.error)}")
        console.print(table)


# --- commands defined in cnnbench/commands/ (one registration line each, keep this anchor) ---
cli.add_command(__import__("cnnbench.commands.plugins", fromlist=["plugins_command"]).plugins_command)
cli.add_command(__import__("cnnbench.commands.scale", fromlist=["scale_command"]).scale_command)
cli.add_command(__import__("cnnbench.commands.check", fromlist=["check"]).check)
cli.add_command(__import__("cnnbench.commands.datasets", fromlist=["datasets_command"]).datasets_command)
cli.add_command(__import__("cnnbench.commands.compare", fromlist=["compare_command"]).compare_command)
cli.add_command(__import__("cnnbench.commands.export", fromlist=["export_command"]).export_command)
cli.add_command(__import__("cnnbench.commands.history", fromlist=["history_command"]).history_command)


@cli.command("ceiling")
@click.option("--threads", type=int, default=None, help="Threads [all cores].")
@click.option("--refresh", is_flag=True, help="Measure again instead of using the cached value.")
def ceiling_command(threads: int | None, refresh: bool) -> None:
    """This machine's fp32 matmul ceiling (GFLOP/s), the yardstick of the efficiency column."""
    import os

    from cnnbench import ceiling

    threads = threads or os.cpu_count() or 1
    with console.status("measuring fp32 GEMM..."):
        value = ceiling.ceiling(threads, refresh=refresh)
    if not value:
        raise UsageError("could not measure the matmul ceiling (neither NumPy nor PyTorch ran the probe)")
    libraries = ", ".join(f"{name} {gflops:,.0f}" for name, gflops in value["per_library"].items())
    console.print(f"fp32 matmul ceiling, {value['size']}x{value['size']}, {value['threads']} threads: {value['gflops']:,.0f} GFLOP/s ({libraries}); cached in {ceiling.cache_file()}")


def _safe(func):
    """Call a plugin's method; a plugin bug shows as text instead of crashing the listing."""
    try:
        return func()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
