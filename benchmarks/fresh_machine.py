"""Each framework at its best on this machine, in one run: the figures docs/performance.md and the README quote.

1. Allocator matrix: each framework's default mode under every allocator this machine has (glibc as it
   comes, glibc with tunables, mimalloc from the cmeel-mimalloc wheel, Debian's tcmalloc when installed;
   jemalloc too with --all-allocators), in ABBA rounds (the allocator order reversed every other round, each
   run a fresh worker), so a ratio to glibc is taken within a round. Train and eval samples/s, compile seconds.
2. Modes: every execution mode of tf, torch, jax and Keras on each engine, with ``--allocator`` (default auto).
3. Bare loops: ``benchmarks/bare_loops.py`` against the same framework through cnnbench, alternating.
4. Wall time of ``cnnbench run --frameworks all --dataset mnist --epochs 1`` (the README's command, run
   as a user runs it), split into process start, import, build, parity, data, compile, steady training,
   evaluation and the harness's own remainder.

Usage: python benchmarks/fresh_machine.py [--n-train 6000] [--rounds 2] [--skip matrix,modes,bare,wall]
       [--json OUT.json] [--all-allocators] [--quick]
About 15 minutes on a quiet 2-core machine with the defaults (docs/performance.md); ``--quick`` only tries the
script (one steady batch per row: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cnnbench import allocator, results, stats
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.modes import MODE_DEFAULT_KEY, MODE_KEY
from cnnbench.plugins import Registry, load_registry
from cnnbench.report import warmup_seconds
from cnnbench.results import OK, BackendResult, RunResult
from cnnbench.runner import BackendTarget, RunOptions, parse_frameworks, run_benchmark

HERE = Path(__file__).resolve().parent
#: The rows of the allocator matrix: each framework's default mode (what ``--frameworks all`` runs).
MATRIX_FRAMEWORKS = "tf,torch,jax,keras"
#: Every mode of these (``--modes all``): Keras on each engine.
MODES_FRAMEWORKS = "tf,torch,jax,keras:tensorflow,keras:jax,keras:torch"
#: The README's command, timed as a user runs it.
WALL_COMMAND = ("run", "--frameworks", "all", "--dataset", "mnist", "--epochs", "1")
#: Wall-time parts that are the frameworks' own work; the rest is the harness's (target: <= 10% of the wall).
FRAMEWORK_PARTS = ("import", "compile", "steady training", "evaluation", "eval warm-up")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as uptime prints them."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def row_figures(row: BackendResult) -> dict[str, float | None]:
    """Train / eval samples/s and compile seconds of one row (None when it did not run)."""
    if row.status != OK or not row.repeats:
        return {"train": None, "eval": None, "compile": None}
    measurement = row.repeats[0]
    return {
        "train": measurement.train_throughput,
        "eval": measurement.eval_throughput,
        "compile": warmup_seconds(measurement),
    }


def allocator_matrix(
    targets: list[BackendTarget],
    allocators: Sequence[str],
    registry: Registry,
    train: TrainConfig,
    data: DataConfig,
    rounds: int,
    console: Console,
) -> dict[str, dict[str, list[dict[str, float | None]]]]:
    """allocator -> row id -> one figures dict per round; the allocator order reverses every other round."""
    figures: dict[str, dict[str, list[dict[str, float | None]]]] = {name: {} for name in allocators}
    for index in range(rounds):
        order = list(allocators) if index % 2 == 0 else list(reversed(allocators))
        for name in order:
            result, _ = run_benchmark(targets, registry, train, data, RunOptions(allocator=name, save=False))
            for row in result.backends:
                figures[name].setdefault(row.backend, []).append(row_figures(row))
            console.print(f"  round {index + 1}/{rounds}, {name}: done (load {load_average()})")
    return figures


def paired_ratio(values: Sequence[float | None], baseline: Sequence[float | None]) -> float | None:
    """Median over rounds of value / baseline within the same round (None when no round has both)."""
    ratios = [v / b for v, b in zip(values, baseline, strict=False) if v and b]
    return stats.median(ratios) if ratios else None


def matrix_table(figures: Mapping[str, Mapping[str, list[dict[str, float | None]]]], baseline: str) -> Table:
    """Rows: framework; columns: allocator, train / eval samples/s and the paired ratio to ``baseline``."""
    table = Table(
        title=f"Allocator matrix: train / eval samples/s, median of rounds (x {baseline}, paired)", title_justify="left"
    )
    table.add_column("framework")
    for name in figures:
        table.add_column(name, justify="right")
    row_ids = list(dict.fromkeys(row for per_row in figures.values() for row in per_row))
    for row_id in row_ids:
        cells = []
        base = figures.get(baseline, {}).get(row_id, [])
        for name, per_row in figures.items():
            rounds = per_row.get(row_id, [])
            train = stats.median([f["train"] for f in rounds if f["train"]])
            evals = stats.median([f["eval"] for f in rounds if f["eval"]])
            if train is None:
                cells.append("-")
                continue
            cell = f"{train:,.0f} / {evals:,.0f}" if evals else f"{train:,.0f} / -"
            if name != baseline:
                ratio_train = paired_ratio([f["train"] for f in rounds], [f["train"] for f in base])
                ratio_eval = paired_ratio([f["eval"] for f in rounds], [f["eval"] for f in base])
                cell += f"\n(x{ratio_train or 0:.2f} / x{ratio_eval or 0:.2f})"
            cells.append(cell)
        table.add_row(row_id, *cells)
    return table


def modes_table(result: RunResult, ceiling_gflops: float | None) -> Table:
    """Every mode: train samples/s (and % of the ceiling), eval samples/s, compile s, and x its default mode."""
    from cnnbench.modes import group_and_mode

    flops = result.model.get("flops_train_per_sample")
    table = Table(title="Execution modes (* = the default mode)", title_justify="left")
    for column in (
        "framework",
        "mode",
        "train samples/s",
        "% of ceiling",
        "x default",
        "eval samples/s",
        "compile s",
        "status",
    ):
        table.add_column(column, justify="left" if column in ("framework", "mode", "status") else "right")
    defaults: dict[str, float | None] = {}
    for row in result.backends:
        group, _ = group_and_mode(row.backend, row.settings)
        if row.settings.get(MODE_DEFAULT_KEY) is True:
            defaults[group] = row_figures(row)["train"]
    for row in result.backends:
        group, mode = group_and_mode(row.backend, row.settings)
        f = row_figures(row)
        base = defaults.get(group)
        share = (
            f"{100 * f['train'] * flops / 1e9 / ceiling_gflops:.0f}%"
            if (f["train"] and flops and ceiling_gflops)
            else "-"
        )
        table.add_row(
            group,
            mode + (" *" if row.settings.get(MODE_DEFAULT_KEY) is True else ""),
            f"{f['train']:,.0f}" if f["train"] else "-",
            share,
            f"x{f['train'] / base:.2f}" if f["train"] and base else "-",
            f"{f['eval']:,.0f}" if f["eval"] else "-",
            f"{f['compile']:.1f}" if f["compile"] is not None else "-",
            row.status if row.status == OK else f"{row.status}: {row.reason[:80]}",
        )
    return table


def bare_ratios(
    frameworks: Sequence[str],
    epochs: int,
    n_train: int,
    rounds: int,
    registry: Registry,
    threads: int,
    console: Console,
    allocator_choice: str = "auto",
) -> dict[str, dict[str, float | None]]:
    """framework -> bare loop and cnnbench steady samples/s (median of epochs 2..E over rounds) and their ratio."""
    sys.path.insert(0, str(HERE))
    from harness_overhead import bare, through_cnnbench

    from cnnbench.runner import harness_environment

    env = {**os.environ, **harness_environment(TrainConfig(threads=threads), allocator_choice)[0]}
    out: dict[str, dict[str, float | None]] = {}
    for framework in frameworks:
        backend = registry.backends[framework].item
        if backend.unavailable_reason():
            continue
        backend_env = {**env, **backend.process_environment(None, TrainConfig(threads=threads))}
        bare_rates: list[float] = []
        cnn_rates: list[float] = []
        for index in range(rounds):  # ABBA: the bare loop first in even rounds
            sides = [("bare", bare_rates), ("cnnbench", cnn_rates)]
            for side, rates in sides if index % 2 == 0 else reversed(sides):
                if side == "bare":
                    rates += bare(framework, epochs, n_train, backend_env)
                else:
                    rates += through_cnnbench(framework, epochs, n_train, registry, threads, allocator_choice)
        b, c = stats.median(bare_rates), stats.median(cnn_rates)
        out[framework] = {"bare": b, "cnnbench": c, "ratio": c / b if b and c else None}
        console.print(f"  bare loop {framework}: done (load {load_average()})")
    return out


def wall_breakdown(result: RunResult, wall_s: float, process_start_s: float | None = None) -> dict[str, float]:
    """Seconds of one run's wall time by part, summed over backends; the parts add up to ``wall_s``.

    Per backend: the parity check (its own seconds, after the last repeat's result in that worker), then from
    each measurement worker's phases:
    import, build, data (load_data), compile (the first epoch beyond its steady-state time), steady training,
    evaluation, its untimed warm-up pass and worker setup (registry and dataset in the worker: the rest of its
    total). Outside the measurement workers: ``process_start_s`` per worker
    (a measured ``python -c 'import cnnbench.worker'``; 0 when not given), and the parent (CLI start,
    dataset, ceiling, saving: the remainder).
    """
    parts = dict.fromkeys(
        (
            "process start",
            "worker setup",
            "import",
            "build",
            "parity",
            "data",
            "compile",
            "steady training",
            "evaluation",
            "eval warm-up",
        ),
        0.0,
    )
    workers = 0
    inside = 0.0
    for row in result.backends:
        # The parity check follows the last repeat's result in its worker, outside that measurement's total_s.
        parity = float(row.parity.get("seconds") or 0.0) if row.parity else 0.0
        parts["parity"] += parity
        inside += parity
        for measurement in row.repeats:
            phases = measurement.phases
            if phases.total_s is None:
                continue
            workers += 1
            compile_s = warmup_seconds(measurement) or 0.0
            train = phases.train_s or 0.0
            known = {
                "import": phases.import_s or 0.0,
                "build": phases.build_s or 0.0,
                "data": phases.load_data_s or 0.0,
                "compile": min(compile_s, train),
                "steady training": max(0.0, train - compile_s),
                "evaluation": phases.eval_s or 0.0,
                "eval warm-up": phases.eval_warmup_s or 0.0,
            }
            for key, value in known.items():
                parts[key] += value
            parts["worker setup"] += max(0.0, phases.total_s - sum(known.values()))
            inside += phases.total_s
    parts["process start"] = min(max(0.0, wall_s - inside), workers * (process_start_s or 0.0))
    parts["parent"] = max(0.0, wall_s - inside - parts["process start"])
    return parts


def breakdown_table(parts: Mapping[str, float], wall_s: float) -> Table:
    """Each part's seconds and share of the wall time; the frameworks' own parts marked."""
    table = Table(title=f"Wall time of 'cnnbench {' '.join(WALL_COMMAND)}': {wall_s:.1f} s", title_justify="left")
    for column in ("part", "seconds", "% of wall", "whose"):
        table.add_column(column, justify="right" if column in ("seconds", "% of wall") else "left")
    for part, seconds in parts.items():
        table.add_row(
            part,
            f"{seconds:.1f}",
            f"{100 * seconds / wall_s:.1f}%",
            "framework" if part in FRAMEWORK_PARTS else "cnnbench",
        )
    harness = sum(s for p, s in parts.items() if p not in FRAMEWORK_PARTS)
    table.add_row(
        "cnnbench's own (all but the framework parts)", f"{harness:.1f}", f"{100 * harness / wall_s:.1f}%", ""
    )
    return table


def process_start_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh ``python -c 'import cnnbench.worker'``: what each worker pays before its clock."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cnnbench.worker, cnnbench.plugins"], check=True)
        times.append(time.perf_counter() - start)
    return stats.median(times) or 0.0


def timed_cli_run(extra: Sequence[str], folder: Path, allocator_choice: str = "auto") -> tuple[RunResult, float]:
    """Run the README's command as a subprocess (results into ``folder``); its result and wall seconds."""
    script = shutil.which("cnnbench", path=str(Path(sys.executable).parent)) or shutil.which("cnnbench")
    command = [script] if script else [sys.executable, "-c", "from cnnbench.cli import main; main()"]
    start = time.perf_counter()
    subprocess.run(
        [*command, *WALL_COMMAND, "--allocator", allocator_choice, "--results-dir", str(folder), *extra],
        check=False,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    saved = sorted(folder.glob("*.json"))
    if not saved:
        raise RuntimeError("the timed run saved no result")
    return results.load(saved[-1]), wall


def machine_line(environment: Mapping[str, Any]) -> str:
    """Date, CPU, cores, memory, OS and Python of this machine, for the tables' captions."""
    cpu = environment.get("cpu") or platform.processor() or platform.machine()
    memory = environment.get("memory_gb") or environment.get("memory")
    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {cpu}, {os.cpu_count()} cores"
        + (f", {memory} GB" if memory else "")
        + f", {platform.platform()}, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for, print each table as it is ready, and write everything to ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=6000, help="MNIST training images for the matrix and modes")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of the allocator matrix and bare loops")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: matrix, modes, bare, wall")
    parser.add_argument(
        "--json", type=Path, default=None, help="write every figure here (and the timed run's result to OUT.run.json)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the script (figures not kept)")
    parser.add_argument(
        "--all-allocators", action="store_true", help="also allocators auto never picks (jemalloc), when installed"
    )
    parser.add_argument(
        "--allocator",
        default="auto",
        choices=allocator.CHOICES,
        help="allocator of parts 2-4 [auto]; 'mimalloc' stands for a fresh machine's auto where Debian's tcmalloc is"
        " installed for the matrix's comparison",
    )
    parser.add_argument("--wall-args", default="", help="extra arguments for the timed run (e.g. '--limit-train 5000')")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.rounds = 1000, 2
        args.wall_args = args.wall_args or "--limit-train 2000 --limit-test 2000"
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    console = Console(width=160)
    registry = load_registry()
    threads = os.cpu_count() or 1
    from cnnbench import environment

    env_info = environment.collect()
    report: dict[str, Any] = {"machine": machine_line(env_info), "load_before": load_average(), "threads": threads}
    console.print(f"{report['machine']}; {threads} threads; load average before: {report['load_before']}")
    available = allocator.available()
    auto = allocator.resolve("auto")
    report["allocators"] = {name: found.describe() for name, found in available.items()}
    report["auto"] = auto.name
    report["sections_allocator"] = allocator.resolve(args.allocator).name
    console.print(
        "allocators here: " + ", ".join(available) + f"; auto picks {auto.name}; parts 2-4 run with"
        f" {report['sections_allocator']}"
    )
    train = TrainConfig(epochs=1, threads=threads, warmup_steps=10)
    data = DataConfig(dataset="mnist", limit_train=args.n_train)
    started = time.perf_counter()

    if "matrix" not in skip:
        console.rule("1. allocator matrix")
        targets = parse_frameworks(MATRIX_FRAMEWORKS, registry)
        names = [n for n in available if args.all_allocators or n in (allocator.SYSTEM, *allocator.AUTO_ORDER)]
        figures = allocator_matrix(targets, names, registry, train, data, args.rounds, console)
        report["matrix"] = figures
        console.print(matrix_table(figures, allocator.SYSTEM))
    if "modes" not in skip:
        console.rule("2. execution modes")
        targets = parse_frameworks(MODES_FRAMEWORKS, registry, "all")
        options = RunOptions(save=False, measure_ceiling=True, allocator=args.allocator)
        result, _ = run_benchmark(targets, registry, train, data, options)
        ceiling = (result.environment.get("matmul_ceiling") or {}).get("gflops")
        report["modes"] = {
            row.backend: {
                **row_figures(row),
                "mode": row.settings.get(MODE_KEY),
                "default": row.settings.get(MODE_DEFAULT_KEY),
                "status": row.status,
            }
            for row in result.backends
        }
        report["ceiling_gflops"] = ceiling
        console.print(modes_table(result, ceiling))
    if "bare" not in skip:
        console.rule("3. bare loops vs cnnbench")
        epochs = 2 if args.quick else 3
        ratios = bare_ratios(
            ["torch", "tf", "jax"], epochs, args.n_train, args.rounds, registry, threads, console, args.allocator
        )
        report["bare"] = ratios
        table = Table(
            title=f"Bare loop vs cnnbench: steady samples/s, epochs 2..{epochs}, {args.rounds} ABBA rounds",
            title_justify="left",
        )
        for column in ("framework", "bare loop", "cnnbench", "cnnbench / bare"):
            table.add_column(column, justify="right")
        for framework, r in ratios.items():
            table.add_row(
                framework, f"{r['bare'] or 0:,.0f}", f"{r['cnnbench'] or 0:,.0f}", f"{100 * (r['ratio'] or 0):.1f}%"
            )
        console.print(table)
    if "wall" not in skip:
        console.rule("4. wall time of the README's command")
        start_s = process_start_seconds()
        with tempfile.TemporaryDirectory(prefix="cnnbench-fresh-") as folder:
            result, wall = timed_cli_run(args.wall_args.split(), Path(folder), args.allocator)
            if args.json:  # the run itself (accuracy, parity, manifests) beside the figures, for the README's table
                saved = sorted(Path(folder).glob("*.json"))[-1]
                shutil.copyfile(saved, args.json.with_suffix(".run.json"))
        parts = wall_breakdown(result, wall, start_s)
        report["wall"] = {
            "seconds": wall,
            "process_start_each_s": start_s,
            "parts": parts,
            "rows": {row.backend: row_figures(row) for row in result.backends},
        }
        console.print(breakdown_table(parts, wall))
    report["load_after"] = load_average()
    report["elapsed_s"] = time.perf_counter() - started
    console.print(f"done in {report['elapsed_s'] / 60:.1f} min; load average after: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        console.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
