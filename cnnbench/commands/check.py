"""``cnnbench check``: every selected backend against the float64 reference, each in its own process.

A process per backend because frameworks read their environment at import (Keras' engine is
fixed per process) and must not share threads or allocators; the child is the worker's check job
(``messages.CheckRequest``), started by ``runner.run_worker`` with the same harness environment as a run,
the same job that fills a run's parity column.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cnnbench import messages, parity
from cnnbench.backend import model_unsupported_reason
from cnnbench.commands.common import checked_backend_options, console, model_option
from cnnbench.config import DEVICES, TrainConfig, check_threads, check_timeout, parse_key_values
from cnnbench.errors import ExitCode, UsageError
from cnnbench.frameworks import available_cores
from cnnbench.messages import CheckRequest
from cnnbench.models import DEFAULT_MODEL
from cnnbench.modes import BackendTarget
from cnnbench.plugins import Registry, load_registry
from cnnbench.report import literal
from cnnbench.results import UNAVAILABLE
from cnnbench.runner import harness_environment, parse_frameworks, run_worker


def _learning_rates(optimizer: str, adam_lr: float, sgd_lr: float) -> dict[str, float]:
    chosen = {"adam": adam_lr, "sgd": sgd_lr}
    if optimizer != "both":
        chosen = {optimizer: chosen[optimizer]}
    for name, rate in chosen.items():
        TrainConfig(optimizer=name, learning_rate=rate).validate()
    return chosen


def run_check_process(
    request: dict[str, Any] | CheckRequest, env: dict[str, str], timeout_s: float | None, log_path: Path
) -> dict[str, Any]:
    """Run one backend's check as a worker job through the runner's ``run_worker``; never raises for its faults."""
    job = request if isinstance(request, CheckRequest) else messages.from_dict(CheckRequest, request, "check request")
    status, final = run_worker(job, env, timeout_s, None, log_path)
    if isinstance(final, messages.CheckResult):
        return final.report
    reason = final.reason if isinstance(final, (messages.Error, messages.Unavailable)) else f"unexpected {final.kind!r}"
    if status == UNAVAILABLE:
        return {"status": parity.UNAVAILABLE, "message": reason, "checks": {}}
    return {"status": parity.FAIL, "message": f"{reason} (log: {log_path})", "checks": {}}


def check_targets(
    targets: list[BackendTarget],
    registry: Registry,
    request_base: dict[str, Any],
    train: TrainConfig,
    timeout_s: float | None,
    on_start: Callable[[BackendTarget], object] = lambda target: None,
) -> list[tuple[BackendTarget, dict[str, Any]]]:
    """The parity result of every target, in order (UNAVAILABLE rows for missing frameworks or model layers)."""
    spec = registry.spec(
        train.model, tuple(request_base["input_shape"]), int(request_base["num_classes"]), request_base["dropout"]
    )
    log_dir = Path(tempfile.mkdtemp(prefix="cnnbench-check-logs-"))
    env_base, _ = harness_environment(train, "auto")
    outcomes: list[tuple[BackendTarget, dict[str, Any]]] = []
    for target in targets:
        backend = registry.backend(target.name).item
        reason = backend.unavailable_reason() or model_unsupported_reason(backend, spec)
        if reason:
            outcomes.append((target, {"status": parity.UNAVAILABLE, "message": reason, "checks": {}}))
            continue
        on_start(target)
        configured = target.configure(train)  # the row's execution mode (-f torch:compile), as backend options
        env = {**os.environ, **env_base, **backend.process_environment(target.variant, configured)}
        request = {**request_base, "backend": target.name, "variant": target.variant, "train": asdict(configured)}
        result = run_check_process(request, env, timeout_s, log_dir / f"{target.id.replace(':', '-')}.log")
        result.setdefault("framework_version", backend.framework_version(target.variant))
        outcomes.append((target, result))
    return outcomes


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _ratio(check: dict[str, Any]) -> str:
    if check.get("ratio") is None:
        return "-" if check.get("passed") else "inf"
    return f"{check['ratio']:.2f}"


def _tolerance(check: dict[str, Any]) -> str:
    if check.get("tolerance") == 0:
        return "exact"
    return _number(check.get("tolerance"))


def result_table(target: BackendTarget, framework: str, result: dict[str, Any]) -> Table:
    """One backend's checks; names, versions and messages come from plugins and workers, so are shown literally."""
    status = result["status"]
    colour = {"PASS": "green", "FAIL": "red"}.get(status, "yellow")
    where = f" on {result['device']}" if result.get("device") else ""
    took = f", {result['elapsed_s']:.1f} s" if result.get("elapsed_s") is not None else ""
    version = result.get("framework_version", "")
    title = Text.assemble(literal(f"{target.id} ({framework} {version}){where}{took}: "), literal(status, colour))
    table = Table(title=title, title_justify="left", caption=literal(result.get("message", "")), caption_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("check", "left"),
        ("max abs diff", "right"),
        ("max rel diff", "right"),
        ("tolerance", "right"),
        ("diff/tol", "right"),
        ("result", "center"),
        ("note", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")
    for name, check in result.get("checks", {}).items():
        verdict = Text("PASS", style="green") if check["passed"] else Text("FAIL", style="red")
        table.add_row(
            literal(name),
            _number(check.get("max_abs")),
            _number(check.get("max_rel")),
            _tolerance(check),
            _ratio(check),
            verdict,
            literal(check.get("detail", "")),
        )
    return table


@click.command("check")
@click.option(
    "--frameworks",
    "-f",
    default="all",
    show_default=True,
    help="Comma list of backends (name or name:variant), or 'all'.",
)
@click.option(
    "--dataset",
    "-d",
    default="mnist",
    show_default=True,
    help="Dataset whose input shape and classes choose the model variant; its files are not read "
    "(seeded synthetic images of that shape are used).",
)
@model_option()
@click.option(
    "--dropout",
    type=float,
    default=None,
    help="Dropout of the variant (default: 0.2 for colour datasets). "
    "Training steps are always checked without dropout.",
)
@click.option(
    "--optimizer",
    type=click.Choice(("adam", "sgd", "both")),
    default="both",
    show_default=True,
    help="Optimizer(s) whose steps are checked.",
)
@click.option(
    "--adam-lr",
    type=float,
    default=parity.DEFAULT_LEARNING_RATES["adam"],
    show_default=True,
    help="Learning rate of the Adam steps.",
)
@click.option(
    "--sgd-lr",
    type=float,
    default=parity.DEFAULT_LEARNING_RATES["sgd"],
    show_default=True,
    help="Learning rate of the SGD steps.",
)
@click.option("--steps", type=int, default=parity.DEFAULT_STEPS, show_default=True, help="Optimizer steps compared.")
@click.option("--batch-size", type=int, default=parity.DEFAULT_BATCH, show_default=True, help="Images per batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and images.")
@click.option(
    "--init",
    type=click.Choice(("glorot-uniform", "normal")),
    default="glorot-uniform",
    show_default=True,
    help="Weight-init scheme of the shared weights.",
)
@click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Device.")
@click.option(
    "--backend-option",
    "backend_options",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="Backend switch, e.g. tf.xla=true (repeatable).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600,
    show_default=True,
    help="Seconds before a backend's check is killed.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results to this JSON file.",
)
def check(
    frameworks: str,
    dataset: str,
    model: str | None,
    dropout: float | None,
    optimizer: str,
    adam_lr: float,
    sgd_lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    init: str,
    threads: int | None,
    device: str,
    backend_options: tuple[str, ...],
    timeout_s: float,
    json_path: str | None,
) -> None:
    """Check that every backend computes the same function as a float64 NumPy reference.

    The same seeded weights and images go into each backend and the reference: logits, loss,
    gradients, evaluate, then a few Adam and SGD steps (dropout off); one table per backend.
    Exit status: 0 when every backend that ran passed, 3 when one failed, 2 on bad input.
    """
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    check_timeout(timeout_s)
    check_threads(threads, available_cores())
    learning_rates = _learning_rates(optimizer, adam_lr, sgd_lr)
    registry = load_registry()
    targets = parse_frameworks(frameworks, registry)
    data_source = registry.dataset(dataset).item
    chosen_options = parse_key_values(backend_options, "--backend-option")
    checked_options = checked_backend_options(chosen_options) if chosen_options else {}
    train = TrainConfig(
        model=model or DEFAULT_MODEL,
        seed=seed,
        init=init,
        dropout=dropout,
        threads=threads or os.cpu_count() or 1,
        device=device,
        backend_options=checked_options,
    ).validate()
    spec = registry.spec(train.model, data_source.input_shape, data_source.num_classes, dropout)
    request = {
        "train": asdict(train),
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "dropout": dropout,
        "learning_rates": learning_rates,
        "seed": seed,
        "steps": steps,
        "init": init,
        "batch": batch_size,
    }
    console.print(
        f"parity against the float64 reference: {spec.name} {'x'.join(map(str, spec.input_shape))} "
        f"({spec.num_classes} classes, "
        f"{spec.num_params:,} parameters), {init} weights and {batch_size} synthetic images from seed {seed}, "
        f"{steps} steps of {', '.join(f'{name} lr={rate:g}' for name, rate in learning_rates.items())}",
        highlight=False,
    )
    with console.status("") as status:
        outcomes = check_targets(
            targets,
            registry,
            request,
            train,
            timeout_s,
            on_start=lambda target: status.update(f"checking {escape(target.id)}..."),
        )
    for target, result in outcomes:
        framework = registry.backend(target.name).item.framework
        if result["status"] == parity.UNAVAILABLE:
            console.print(
                Text.assemble(
                    literal(f"{target.id} ({framework}): "), ("not checked", "yellow"), ": ", literal(result["message"])
                ),
                highlight=False,
            )
            continue
        console.print(result_table(target, framework, result))
    summary = ", ".join(f"{target.id} {result['status']}" for target, result in outcomes)
    console.print(literal(f"summary: {summary}"), highlight=False)
    if json_path:
        rows = [{"backend": target.id, **result} for target, result in outcomes]
        try:
            Path(json_path).write_text(json.dumps(rows, indent=1, default=str))
        except OSError as exc:
            raise UsageError(f"cannot write {json_path}: {exc.strerror or exc}") from None
    if any(result["status"] == parity.FAIL for _, result in outcomes):
        sys.exit(ExitCode.BACKEND_FAILED)


command: click.Command = check
