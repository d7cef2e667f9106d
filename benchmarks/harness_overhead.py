"""Does cnnbench cost speed? Bare loops vs cnnbench, in one session, and the protocol's own overhead.

1. For each framework with a bare loop (benchmarks/bare_loops.py): the bare loop and
   ``cnnbench run`` alternate ROUNDS times, both in fresh processes with the same threads,
   allocator and MNIST subset; steady-state samples/s is the median over epochs 2..E of all
   rounds. Target: cnnbench >= 90% of the bare loop.
2. The protocol itself (chunked ``train_batches`` calls, progress events, syncs): one epoch
   through ``timing.measure`` against one direct ``train_batches`` call over the same batches,
   alternating in ABBA order in one process (PyTorch). Target: overhead < 3%.

Usage: python benchmarks/harness_overhead.py [--frameworks torch,tf,jax] [--epochs 3] [--n-train 20000] [--rounds 2]
       [--protocol-rounds 8] [--skip-bare]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cnnbench import stats
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.runner import RunOptions, harness_environment, parse_frameworks, run_benchmark

HERE = Path(__file__).resolve().parent


def bare(framework: str, epochs: int, n_train: int, env: dict) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "bare_loops.py"), framework, str(epochs), str(n_train)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"][1:]


def through_cnnbench(
    framework: str, epochs: int, n_train: int, registry, threads: int, allocator_choice: str = "auto"
) -> list[float]:
    train = TrainConfig(epochs=epochs, threads=threads)
    data = DataConfig(dataset="mnist", limit_train=n_train, limit_test=1000)
    targets = parse_frameworks(framework, registry)  # its default mode, recorded as in a run
    result, _ = run_benchmark(targets, registry, train, data, RunOptions(save=False, allocator=allocator_choice))
    row = result.backends[0]
    if row.status != "ok":
        raise RuntimeError(f"{framework}: {row.reason}")
    return list(row.repeats[0].train_throughput_samples)


def protocol_overhead(n_train: int, threads: int, rounds: int) -> list[float]:
    """Per-round overhead of timing.measure over one direct train_batches call, PyTorch in this process.

    Each round runs the same epoch both ways, in ABBA order (direct first in even rounds,
    protocol first in odd ones) so a drift in machine speed does not masquerade as overhead.
    Returns 1 - protocol/direct per round.
    """
    from cnnbench import preprocess, timing
    from cnnbench.datasets.mnist import MNIST
    from cnnbench.initializers import initial_weights
    from cnnbench.spec import MNIST_LENET

    config = TrainConfig(epochs=1, threads=threads, warmup_steps=0)
    data = preprocess.prepare(MNIST().load(DataConfig()), DataConfig(limit_train=n_train, limit_test=1000))
    backend = load_registry().backend("torch").item
    session = backend.create_session(MNIST_LENET, config)
    session.set_weights(initial_weights(MNIST_LENET, "glorot-uniform", 0))
    session.load_data(data.x_train, data.y_train, data.x_test, data.y_test)
    session.train_batches(timing.epoch_batch_indices(0, 99, n_train, 100)[:20])  # warm up
    events = io.StringIO()
    batches = timing.epoch_batch_indices(0, 1, n_train, 100)

    def direct() -> float:
        session.sync()
        start = time.perf_counter()
        session.train_batches(batches)
        session.sync()
        return batches.size / (time.perf_counter() - start)

    def through_protocol() -> float:
        outcome = timing.measure(
            session, data, config, progress=lambda e, d, t: events.write(json.dumps({"e": e, "d": d, "t": t}) + "\n")
        )
        return outcome.epochs[0].samples_per_s

    overheads = []
    for round_index in range(rounds):
        if round_index % 2 == 0:
            d, m = direct(), through_protocol()
        else:
            m, d = through_protocol(), direct()
        overheads.append(1 - m / d)
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", default="torch,tf,jax")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--protocol-rounds", type=int, default=8, help="ABBA rounds of the protocol-overhead measurement"
    )
    parser.add_argument("--skip-bare", action="store_true", help="only measure the protocol overhead")
    args = parser.parse_args()
    console = Console(width=160)
    registry = load_registry()
    threads = os.cpu_count() or 1
    harness_env, manifest = harness_environment(TrainConfig(threads=threads), "auto")
    env = {**os.environ, **harness_env}
    console.print(
        f"{threads} threads, allocator {manifest['allocator']}, MNIST subset {args.n_train:,}, "
        f"{args.epochs} epochs (first excluded), {args.rounds} alternating rounds"
    )

    table = Table(
        title="Bare loop vs cnnbench (steady-state training samples/s, median of epochs 2..E over rounds)",
        title_justify="left",
    )
    for column in ("framework", "bare loop", "cnnbench", "cnnbench / bare"):
        table.add_column(column, justify="right")
    for framework in [] if args.skip_bare else [f.strip() for f in args.frameworks.split(",") if f.strip()]:
        if framework not in registry.backends or registry.backends[framework].item.unavailable_reason():
            table.add_row(framework, "-", "-", "unavailable")
            continue
        backend_env = {
            **env,
            **registry.backends[framework].item.process_environment(None, TrainConfig(threads=threads)),
        }
        bare_rates, cnn_rates = [], []
        for _ in range(args.rounds):
            bare_rates += bare(framework, args.epochs, args.n_train, backend_env)
            cnn_rates += through_cnnbench(framework, args.epochs, args.n_train, registry, threads)
        b, c = stats.median(bare_rates), stats.median(cnn_rates)
        table.add_row(framework, f"{b:,.0f}", f"{c:,.0f}", f"{100 * c / b:.1f}%")
        console.print(table)

    overheads = protocol_overhead(args.n_train, threads, args.protocol_rounds)
    q1, q3 = np.percentile(overheads, [25, 75])
    console.print(
        f"protocol overhead (PyTorch, one epoch of {args.n_train:,}, {len(overheads)} ABBA rounds): "
        f"median {100 * stats.median(overheads):+.2f}% (IQR {100 * q1:+.2f}% .. {100 * q3:+.2f}%); "
        f"per round: {', '.join(f'{100 * o:+.1f}%' for o in overheads)}"
    )


if __name__ == "__main__":
    main()
