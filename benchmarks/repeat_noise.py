"""How noisy is a measurement here? Steady-state throughput over N fresh-process repeats.

Prints, per backend, the median, the IQR and the coefficient of variation (std / mean) of the
per-repeat steady-state training samples/s: the figure to set `cnnbench compare` thresholds by.
Usage: python benchmarks/repeat_noise.py [--frameworks all] [--repeat 5] [--epochs 3] [--n-train 10000]
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from cnnbench import stats
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.runner import RunOptions, parse_frameworks, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=10_000)
    args = parser.parse_args()
    registry = load_registry()
    targets = parse_frameworks(args.frameworks, registry)
    train = TrainConfig(epochs=args.epochs)
    data = DataConfig(dataset="mnist", limit_train=args.n_train, limit_test=2000)
    result, path = run_benchmark(targets, registry, train, data, RunOptions(repeat=args.repeat))
    table = Table(
        title=f"Steady-state train samples/s over {args.repeat} fresh-process repeats "
        f"(MNIST subset {args.n_train:,}, {args.epochs} epochs)",
        title_justify="left",
    )
    for column in ("framework", "median", "IQR", "CV", "per repeat"):
        table.add_column(column, justify="right")
    for row in result.backends:
        values = row.values("train_throughput")
        if not values:
            table.add_row(row.backend, "-", "-", "-", row.status)
            continue
        cv = stats.cv(values)
        table.add_row(
            row.backend,
            f"{stats.median(values):,.0f}",
            f"{stats.iqr(values):,.0f}",
            "-" if cv is None else f"{100 * cv:.1f}%",
            ", ".join(f"{v:,.0f}" for v in values),
        )
    Console(width=160).print(table)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
