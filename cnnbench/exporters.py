"""A run (or a comparison) in other tools' formats, so cnnbench plugs into existing CI dashboards.

- ``pytest-benchmark``: the JSON ``pytest --benchmark-json`` writes, readable by
  ``pytest-benchmark compare`` and by github-action-benchmark's ``pytest`` tool. Each framework
  gives three benchmarks measured in seconds (lower is better, as pytest-benchmark assumes):
  a steady-state training step (one round per steady-state epoch and repeat, ``iterations`` =
  steps per epoch), an evaluation batch (one round per repeat) and the first epoch (compile and
  warm-up included, one round per repeat). Accuracy and memory ride along in ``extra_info``.
- ``github-action-benchmark``: its ``customBiggerIsBetter`` or ``customSmallerIsBetter`` JSON
  (one file per direction, as the action takes one tool per step).
- ``markdown``: a table for a CI job summary; ``csv``: one row per framework and repeat.

Text from plugins and result files (names, versions, reasons, machine strings) is written without
terminal escape sequences or control characters in every format; in markdown it is also
backslash-escaped, so a backend name cannot become a link, an image or a broken table.
JSON output holds no NaN or Infinity (not JSON; JavaScript readers such as the action reject it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from cnnbench import stats
from cnnbench.compare import BETTER, FAILED, METRICS, MISSING, WORSE, Comparison, format_spread
from cnnbench.errors import UsageError
from cnnbench.report import strip_controls
from cnnbench.results import OK, BackendResult, Measurement, Phases, RunResult, metric_value

FORMATS = ("pytest-benchmark", "github-action-benchmark", "markdown", "csv")
DIRECTIONS = ("bigger", "smaller")
#: The pytest-benchmark JSON layout these files follow (unchanged since 3.1 added ``ops``).
PYTEST_BENCHMARK_FORMAT = "4.0.0"


def export(result: RunResult, fmt: str, direction: str = "bigger") -> str:
    """The text of ``result`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "pytest-benchmark":
        return json.dumps(clean_json(to_pytest_benchmark(result)), indent=2, allow_nan=False)
    if fmt == "github-action-benchmark":
        return json.dumps(clean_json(to_github_action_benchmark(result, direction)), indent=2, allow_nan=False)
    if fmt == "markdown":
        return run_markdown(result)
    if fmt == "csv":
        return to_csv(result)
    raise UsageError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")


def clean_json(value: Any) -> Any:
    """A JSON document with control characters stripped from every string and NaN/Infinity as null."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean_json(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(item) for item in value]
    return value


# --- pytest-benchmark -----------------------------------------------------------------------------


def pytest_benchmark_stats(data: Sequence[float], iterations: int = 1) -> dict[str, Any]:
    """The ``stats`` block pytest-benchmark writes, computed its way (quartile method included)."""
    values = sorted(data)
    rounds = len(values)
    mean = statistics.mean(values)
    stddev = statistics.stdev(values) if rounds > 1 else 0.0
    q1, q3 = _quartiles(values)
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    total = sum(values)
    iqr_outliers = sum(1 for v in values if v < low or v > high)
    stddev_outliers = sum(1 for v in values if v < mean - stddev or v > mean + stddev)
    return {
        "min": values[0],
        "max": values[-1],
        "mean": mean,
        "stddev": stddev,
        "rounds": rounds,
        "median": statistics.median(values),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": values[0] if rounds == 1 else values[bisect_left(values, low)],
        "hd15iqr": values[0] if rounds == 1 else values[bisect_right(values, high) - 1],
        "ops": rounds / total if total else 0,
        "total": total,
        "data": list(data),
        "iterations": iterations,
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    """pytest-benchmark's quartiles: Wikipedia's method 3 for odd counts, method 2 for even."""
    n = len(values)
    if n == 1:
        return values[0], values[0]
    if n % 2:
        k, r = n // 4, n % 4
        if r == 1:
            return 0.25 * values[k - 1] + 0.75 * values[k], 0.75 * values[3 * k] + 0.25 * values[3 * k + 1]
        return 0.75 * values[k] + 0.25 * values[k + 1], 0.25 * values[3 * k + 1] + 0.75 * values[3 * k + 2]
    return statistics.median(values[: n // 2]), statistics.median(values[n // 2 :])


def _benchmark(
    result: RunResult, row: BackendResult, kind: str, data: list[float], iterations: int, extra: dict[str, Any]
) -> dict[str, Any]:
    dataset = result.data.dataset
    name = f"{kind}[{row.backend}]"
    return {
        "group": f"cnnbench {dataset}: {kind.replace('_', ' ')}",
        "name": name,
        "fullname": f"cnnbench/{dataset}::{name}",
        "params": {"framework": row.backend},
        "param": row.backend,
        "extra_info": {
            "framework": row.framework,
            "framework_version": row.framework_version,
            "device": row.device,
            "run_id": result.run_id,
            "repeats": len(row.ok_repeats()),
            **extra,
        },
        "options": {
            "disable_gc": False,
            "timer": "perf_counter",
            "min_rounds": len(data),
            "max_time": 0,
            "min_time": 0,
            "warmup": kind != "first_epoch",
        },
        "stats": pytest_benchmark_stats(data, iterations),
    }


def _steady_epoch_rates(measurement: Measurement) -> list[float]:
    return [
        r
        for r in (
            measurement.train_throughput_samples
            or ((measurement.train_throughput,) if measurement.train_throughput else ())
        )
        if r and r > 0
    ]


def to_pytest_benchmark(result: RunResult) -> dict[str, Any]:
    """The run as a pytest-benchmark JSON document (see the module docstring for the mapping)."""
    batch, eval_batch = result.train.batch_size, result.train.eval_batch_size
    n_train = result.preprocessing.get("n_train")
    n_test = result.preprocessing.get("n_test")
    benchmarks: list[dict[str, Any]] = []
    for row in result.backends:
        repeats = row.ok_repeats()
        if not repeats:
            continue
        extra = {
            "train_samples_per_s": row.median("train_throughput"),
            "eval_samples_per_s": row.median("eval_throughput"),
            "test_accuracy": row.median("test_accuracy"),
            "peak_rss_mb": row.median("peak_rss_mb"),
        }
        step_seconds = [batch / rate for m in repeats for rate in _steady_epoch_rates(m)]
        if step_seconds:
            steps = n_train // batch if n_train else 1
            benchmarks.append(
                _benchmark(result, row, "train_step", step_seconds, steps, {**extra, "batch_size": batch})
            )
        eval_seconds = [min(eval_batch, n_test or eval_batch) / m.eval_throughput for m in repeats if m.eval_throughput]
        if eval_seconds:
            batches = math.ceil(n_test / eval_batch) if n_test else 1
            benchmarks.append(
                _benchmark(result, row, "eval_batch", eval_seconds, batches, {**extra, "eval_batch_size": eval_batch})
            )
        first = [m.phases.first_epoch_s for m in repeats if m.phases.first_epoch_s]
        if first:
            benchmarks.append(_benchmark(result, row, "first_epoch", first, 1, extra))
    env = result.environment
    commit = env.get("git_commit") or ""
    return {
        "machine_info": {
            "node": env.get("hostname", ""),
            "processor": env.get("machine", ""),
            "machine": env.get("machine", ""),
            "python_implementation": "CPython",
            "python_version": env.get("python", ""),
            "system": (env.get("os") or " ").split(" ")[0],
            "release": (env.get("os") or " ").partition(" ")[2],
            "cpu": {"brand_raw": env.get("cpu", ""), "count": env.get("cores")},
        },
        "commit_info": {
            "id": commit.removesuffix("-dirty") or None,
            "dirty": commit.endswith("-dirty"),
            "project": "cnnbench",
            "branch": None,
            "time": None,
        },
        "benchmarks": benchmarks,
        "datetime": result.created,
        "version": PYTEST_BENCHMARK_FORMAT,
        "cnnbench": {
            "run_id": result.run_id,
            "dataset": result.data.dataset,
            "epochs": result.train.epochs,
            "repeat": result.repeat,
        },
    }


# --- github-action-benchmark ----------------------------------------------------------------------


def to_github_action_benchmark(result: RunResult, direction: str = "bigger") -> list[dict[str, Any]]:
    """Entries for ``tool: customBiggerIsBetter`` (throughput, accuracy) or ``customSmallerIsBetter``."""
    if direction not in DIRECTIONS:
        raise UsageError(f"unknown direction {direction!r}; choose from: {', '.join(DIRECTIONS)}")
    wanted = [m for m in METRICS if m.bigger_is_better == (direction == "bigger")]
    entries = []
    for row in result.backends:
        for metric in wanted:
            values = [v for v in row.values(metric.key) if stats.finite(v)]
            if not values:
                continue
            scale = 100.0 if metric.fraction else 1.0
            half_iqr = (stats.iqr(values) or 0.0) / 2 * scale
            entries.append(
                {
                    "name": f"{row.backend} {metric.key}",
                    "unit": metric.unit,
                    "value": round(statistics.median(values) * scale, 6),
                    "range": f"± {half_iqr:.6g}",
                    "extra": (
                        f"median of {len(values)} repeat(s), ± half IQR;"
                        f" {row.framework} {row.framework_version}; run {result.run_id}"
                    ),
                }
            )
    return entries


# --- markdown -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


#: Characters that could start markdown or HTML from data (links, images, emphasis, code, tags, entities).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>~&!#])")


def md(text: object) -> str:
    """Data as literal markdown text: no control characters, one line, punctuation backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", strip_controls(text).replace("\t", " ").replace("\n", " "))


def md_code(text: object) -> str:
    """Data as a markdown code span, fenced with more backticks than it holds."""
    body = strip_controls(text).replace("\t", " ").replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall("`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: range | Sequence[int] = ()) -> str:
    """A GitHub markdown table; columns in ``right`` (numbers) are right-aligned."""
    aligns = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def describe_run(result: RunResult) -> str:
    t, d = result.train, result.data
    limits = "".join(
        f", {name} {value}" for name, value in (("limit-train", d.limit_train), ("limit-test", d.limit_test)) if value
    )
    return (
        f"{md(d.dataset)}{limits}, {t.epochs} epoch{'s' if t.epochs != 1 else ''}, batch {t.batch_size}, "
        f"{md(t.optimizer)} lr {t.learning_rate:g}, {t.threads} threads, "
        f"{result.repeat} repeat{'s' if result.repeat != 1 else ''}"
    )


def run_markdown(result: RunResult) -> str:
    """A run as a markdown section: configuration, machine and one row per framework."""
    env = result.environment
    header = ["framework", "version", *[f"{m.label} ({m.unit})" for m in METRICS], "status"]
    rows = []
    for row in result.backends:
        status = md(row.status if row.status == OK else f"{row.status}: {row.reason}")
        spreads = [format_spread(m, [v for v in row.values(m.key) if stats.finite(v)]) for m in METRICS]
        rows.append([md(row.backend), md(row.framework_version or "-"), *spreads, status])
    commit = md_code(env.get("git_commit") or "?")
    machine = f"Machine: {md(env.get('cpu') or '?')}, {md(env.get('cores') or '?')} cores; commit {commit}."
    lines = [
        f"### cnnbench run {md_code(result.run_id)}",
        "",
        f"{describe_run(result)}. {machine}",
        "Values are medians over repeats (each a fresh process), ± half the inter-quartile range.",
        "",
        _table(header, rows, right=range(2, 2 + len(METRICS))),
        "",
    ]
    return "\n".join(lines)


VERDICT_MARK = {WORSE: "❌ worse", BETTER: "✅ better", FAILED: "❌ failed", MISSING: "⚠️ missing"}


def comparison_markdown(comparison: Comparison) -> str:
    """A comparison for ``$GITHUB_STEP_SUMMARY``: the outcome first, then every row, then caveats."""
    regressions = comparison.regressions
    outcome = (
        f"**{len(regressions)} regression{'s' if len(regressions) != 1 else ''}**: "
        + ", ".join(f"{md(r.backend)} {r.metric.label}" for r in regressions)
        if regressions
        else "**No regression.**"
    )
    rows = []
    for r in comparison.rows:
        verdict = VERDICT_MARK.get(r.verdict, r.verdict)
        if r.regression and r.verdict == MISSING:
            verdict = "❌ missing"
        rows.append(
            [
                md(r.backend),
                r.metric.label,
                r.format_side(r.baseline),
                r.format_side(r.current),
                r.metric.format_change(r.change),
                r.format_relative(),
                r.threshold.describe(r.metric) if r.threshold else "off",
                f"**{verdict}**" if r.regression else verdict,
                md(r.evidence),
            ]
        )
    header = ["framework", "metric", "baseline", "current", "change", "change %", "fails at", "verdict", "evidence"]
    lines = [
        f"### cnnbench compare: {md_code(comparison.baseline_name)} → {md_code(comparison.current_name)}",
        "",
        outcome,
        "",
        _table(header, rows, right=range(2, 7)),
        "",
        "Medians over repeats ± half IQR. A row is a regression when its change passes the threshold"
        " in the bad direction and the repeats put it beyond the threshold, not within noise"
        f" (one-sided Mann-Whitney U against the baseline moved by the threshold, alpha {comparison.alpha:g};"
        " with too few repeats for the test: no overlap).",
    ]
    if comparison.warnings:
        lines += ["", "> [!WARNING]", "> These runs differ in more than the code:"]
        lines += [f"> - {md(w)}" for w in comparison.warnings]
    return "\n".join(lines) + "\n"


# --- csv ------------------------------------------------------------------------------------------

CSV_METRICS = (
    "train_throughput",
    "eval_throughput",
    "test_accuracy",
    "test_loss",
    "peak_rss_mb",
    "peak_device_memory_mb",
    "time_to_accuracy_s",
    *Phases.__dataclass_fields__,
)


def to_csv(result: RunResult) -> str:
    """One row per framework and repeat (a framework that never ran gets one row with its status)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "run_id",
            "created",
            "dataset",
            "backend",
            "framework",
            "framework_version",
            "device",
            "repeat",
            "status",
            "reason",
            *CSV_METRICS,
        ]
    )
    for row in result.backends:
        texts = (result.run_id, result.created, result.data.dataset, row.backend, row.framework, row.framework_version)
        base = [strip_controls(text) for text in (*texts, row.device)]
        if not row.repeats:
            writer.writerow([*base, "", *map(strip_controls, (row.status, row.reason)), *[""] * len(CSV_METRICS)])
        for index, measurement in enumerate(row.repeats, start=1):
            values = [_csv_value(measurement, name) for name in CSV_METRICS]
            writer.writerow([*base, index, *map(strip_controls, (measurement.status, measurement.reason)), *values])
    return out.getvalue()


def _csv_value(measurement: Measurement, name: str) -> str:
    value = metric_value(measurement, name)
    return "" if value is None else repr(float(value))
