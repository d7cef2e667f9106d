"""What the HTML report shows, as plain data: built here so it is tested in Python, drawn by the page.

Every number is formatted here with the terminal table's functions (``cnnbench.report``,
``cnnbench.compare``), so the report and the table never disagree. Nothing in this module
writes HTML: strings from result files travel as data and are escaped where they are placed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnbench import report, stats
from cnnbench.ceiling import efficiency
from cnnbench.compare import DEFAULT_THRESHOLDS, METRICS, Comparison, Metric, compare_runs, format_spread, judge
from cnnbench.results import OK, BackendResult, RunResult

#: Okabe & Ito's palette, told apart with every common colour-vision deficiency; yellow last (faint on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
#: Verdict colours of the comparison: vermillion and bluish green stay apart for red-green deficiencies.
VERDICT_COLOURS = {
    "better": "#009E73",
    "same": "#999999",
    "worse": "#E69F00",
    "regression": "#D55E00",
    "failed": "#D55E00",
    "missing": "#CC79A7",
    "new": "#56B4E9",
    "n/a": "#BBBBBB",
}

#: The run's phases in the order they happen; "steady state" is training after the first epoch.
PHASES = ("import", "build", "load data", "first epoch", "steady state", "eval", "other")
#: Run settings that do not change what is measured (where the files are, whether to download).
IGNORED_CONFIG = {"train.data_dir", "data.data_dir", "data.offline", "train.offline"}


def finite(value: float | None) -> float | None:
    """A number JSON and the charts can carry: NaN and infinities become null (a gap)."""
    return value if value is not None and math.isfinite(value) else None


def text(value: Any) -> str:
    """Any value from a result file as one display string (dicts and lists as compact JSON)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def framework_colours(runs: Iterable[RunResult]) -> dict[str, str]:
    """One colour per framework for the whole report (sorted names: the same colour in every report)."""
    names = sorted({row.backend for run in runs for row in run.backends})
    return {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}


# --- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A table cell: what is shown and, for sortable columns, the number it sorts by."""

    text: str
    sort: float | None = None
    css: str = ""


COLUMNS = (
    "framework",
    "version",
    "device",
    "params",
    "test acc",
    "train samples/s",
    "GFLOP/s (% peak)",
    "eval samples/s",
    "first epoch s",
    "total s",
    "peak RSS MB",
    "parity",
    "status",
)


def run_title(run: RunResult) -> str:
    """The terminal table's title line: dataset, optimizer, batch, epochs, threads, repeats."""
    train = run.train
    threads = f"{train.threads} threads" if train.threads else "all cores"
    repeats = f", median of {run.repeat} repeats (± half IQR)" if run.repeat > 1 else ""
    return (
        f"{run.data.dataset}, {train.optimizer} lr {train.learning_rate:g}, batch {train.batch_size}, "
        f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}, {threads}{repeats}"
    )


def run_rows(run: RunResult) -> list[list[Cell]]:
    """The results table, one row per framework, formatted as ``cnnbench.report.results_table``."""
    rows = []
    for row in run.backends:
        parity = report.parity_status(row)
        throughputs = row.values("train_throughput")
        achieved, _ = efficiency(
            run.model.get("flops_train_per_sample"), row.median("train_throughput"), ceiling_gflops(run)
        )
        status = row.status if row.status == OK else f"{row.status}: {row.reason}".rstrip(": ")
        rows.append(
            [
                Cell(row.backend),
                Cell(row.framework_version or "-"),
                Cell(row.device or "-"),
                Cell(
                    report.fmt_number(row.parameters),
                    finite(float(row.parameters)) if row.parameters is not None else None,
                ),
                Cell(report.fmt_percent(row.median("test_accuracy")), finite(row.median("test_accuracy"))),
                Cell(
                    report.fmt_spread(throughputs) + (" !" if parity == "FAIL" else ""),
                    finite(stats.median(throughputs)),
                ),
                Cell(efficiency_text(run, row), finite(achieved)),
                Cell(report.fmt_spread(row.values("eval_throughput")), finite(row.median("eval_throughput"))),
                Cell(report.fmt_spread(row.values("first_epoch_s"), 2), finite(row.median("first_epoch_s"))),
                Cell(report.fmt_spread(row.values("total_s"), 1), finite(row.median("total_s"))),
                Cell(report.fmt_spread(row.values("peak_rss_mb")), finite(row.median("peak_rss_mb"))),
                Cell(
                    parity if parity != "FAIL" else f"FAIL: {row.parity.get('message', '')}".rstrip(": "),
                    css=f"parity-{parity.lower().replace(' ', '-')}",
                ),
                Cell(status, css="status-ok" if row.status == OK else "status-bad"),
            ]
        )
    return rows


def _spread(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(median, first quartile, third quartile) of the finite values; Nones when there are none."""
    kept = [v for v in values if stats.finite(v)]
    if not kept:
        return None, None, None
    q1, q3 = (float(q) for q in np.percentile(kept, [25, 75]))
    return stats.median(kept), q1, q3


def epoch_points(run: RunResult) -> list[dict[str, Any]]:
    """Per framework and epoch: median loss and accuracy over the repeats, with their range."""
    points = []
    for row in run.backends:
        repeats = row.ok_repeats()
        epochs = sorted({e.epoch for m in repeats for e in m.epochs})
        for epoch in epochs:
            records = [e for m in repeats for e in m.epochs if e.epoch == epoch]
            losses = [e.train_loss for e in records if stats.finite(e.train_loss)]
            accuracies = [
                100 * e.test_accuracy for e in records if e.test_accuracy is not None and stats.finite(e.test_accuracy)
            ]
            loss = stats.median(losses)
            accuracy = stats.median(accuracies)
            points.append(
                {
                    "framework": row.backend,
                    "epoch": epoch,
                    "repeats": len(records),
                    "loss": finite(loss),
                    "loss_lo": finite(min(losses)) if losses else None,
                    "loss_hi": finite(max(losses)) if losses else None,
                    "loss_text": report.fmt_number(loss, 4),
                    "accuracy": finite(accuracy),
                    "accuracy_lo": min(accuracies) if accuracies else None,
                    "accuracy_hi": max(accuracies) if accuracies else None,
                    "accuracy_text": "-" if accuracy is None else f"{accuracy:.2f}%",
                }
            )
    return points


def throughput_points(run: RunResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one point per repeat, one summary per framework) for training and evaluation samples/s."""
    repeats, summaries = [], []
    for row in run.backends:
        for kind, metric in (("train", "train_throughput"), ("eval", "eval_throughput")):
            values = [v for v in row.values(metric) if stats.finite(v)]
            for i, value in enumerate(values, start=1):
                repeats.append(
                    {
                        "framework": row.backend,
                        "kind": kind,
                        "repeat": i,
                        "value": value,
                        "value_text": report.fmt_number(value),
                    }
                )
            median, q1, q3 = _spread(values)
            if median is not None:
                summaries.append(
                    {
                        "framework": row.backend,
                        "kind": kind,
                        "median": median,
                        "q1": q1,
                        "q3": q3,
                        "text": report.fmt_spread(values),
                        "repeats": len(values),
                    }
                )
    return repeats, summaries


def phase_points(run: RunResult) -> list[dict[str, Any]]:
    """Median seconds of each phase per framework; the segments add up to the median total."""
    points = []
    for row in run.backends:
        if not row.ok_repeats():
            continue
        first, train, total = row.median("first_epoch_s"), row.median("train_s"), row.median("total_s")
        seconds = {
            "import": row.median("import_s"),
            "build": row.median("build_s"),
            "load data": row.median("load_data_s"),
            "first epoch": first,
            "steady state": (train - first) if train is not None and first is not None else None,
            "eval": row.median("eval_s"),
        }
        known = sum(v for v in seconds.values() if v is not None and stats.finite(v))
        if total is not None and stats.finite(total) and total - known > 0.005 * total:
            seconds["other"] = total - known  # harness work between phases (parity check, sync, IPC)
        for order, phase in enumerate(PHASES):
            value = seconds.get(phase)
            if value is not None and stats.finite(value) and value > 0:
                points.append(
                    {
                        "framework": row.backend,
                        "phase": phase,
                        "order": order,
                        "seconds": value,
                        "text": report.fmt_number(value, 2) + " s",
                    }
                )
    return points


def ceiling_gflops(run: RunResult) -> float | None:
    """The machine's measured fp32 matmul ceiling (GFLOP/s) recorded with the run, if any."""
    ceiling = run.environment.get("matmul_ceiling")
    peak = ceiling.get("gflops") if isinstance(ceiling, dict) else None
    return float(peak) if isinstance(peak, (int, float)) and stats.finite(peak) and peak > 0 else None


def efficiency_text(run: RunResult, row: BackendResult) -> str:
    """The terminal table's efficiency cell; "-" when the file's ceiling record is malformed."""
    try:
        return report.fmt_efficiency(run, row)
    except (AttributeError, TypeError, ValueError):
        return "-"


def efficiency_points(run: RunResult) -> tuple[list[dict[str, Any]], float | None]:
    """(achieved training GFLOP/s per framework, the machine's matmul ceiling in GFLOP/s or None)."""
    peak = ceiling_gflops(run)
    points = []
    for row in run.backends:
        achieved, fraction = efficiency(run.model.get("flops_train_per_sample"), row.median("train_throughput"), peak)
        if achieved is not None and stats.finite(achieved):
            points.append(
                {
                    "framework": row.backend,
                    "gflops": achieved,
                    "fraction": finite(fraction),
                    "text": efficiency_text(run, row),
                }
            )
    return points, peak


def parity_rows(run: RunResult) -> list[dict[str, Any]]:
    """Per framework: the parity verdict, its message and each check (worst ratio first)."""
    rows = []
    for row in run.backends:
        found = row.parity.get("checks")
        checks: dict[str, Any] = found if isinstance(found, dict) else {}
        listed: list[dict[str, Any]] = []
        for name, check in checks.items():
            check = check if isinstance(check, dict) else {"detail": check}
            ratio = check.get("ratio")
            listed.append(
                {
                    "name": text(check.get("name", name)),
                    "passed": bool(check.get("passed")),
                    "ratio": finite(ratio) if isinstance(ratio, (int, float)) else None,
                    "rule": text(check.get("rule", "")),
                    "detail": text(check.get("detail", "")),
                }
            )
        listed.sort(key=lambda c: (c["passed"], -(c["ratio"] or 0.0)))
        rows.append(
            {
                "framework": row.backend,
                "status": report.parity_status(row),
                "message": text(row.parity.get("message", "")),
                "checks": listed,
            }
        )
    return rows


def configuration(run: RunResult) -> dict[str, str]:
    """The settings that define what a run measures (``train.*``, ``data.*``), each as display text."""
    found = {}
    for section, config in (("train", run.train), ("data", run.data)):
        for key, value in dataclasses.asdict(config).items():
            name = f"{section}.{key}"
            if name not in IGNORED_CONFIG:
                found[name] = text(value)
    return found


def environment_rows(run: RunResult) -> list[tuple[str, str]]:
    """The environment, configuration, preprocessing and model, flattened to (key, value) lines."""
    lines: list[tuple[str, str]] = [
        ("run id", run.run_id),
        ("created", run.created),
        ("preset", text(run.preset)),
        ("repeats", str(run.repeat)),
        ("interrupted", "yes: the file holds what finished" if run.interrupted else "no"),
    ]
    lines += list(configuration(run).items())
    for section, mapping in (
        ("environment", run.environment),
        ("preprocessing", run.preprocessing),
        ("model", run.model),
    ):
        lines += _flatten(section, mapping)
    return lines


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        return [line for key, item in value.items() for line in _flatten(f"{prefix}.{key}", item)]
    return [(prefix, text(value))]


def all_settings(run: RunResult) -> tuple[list[str], list[str], list[list[str]]]:
    """(frameworks, setting names, one row of values per setting) of every backend's manifest."""
    backends = [row for row in run.backends if row.settings]
    keys = sorted({key for row in backends for key in row.settings})
    return (
        [row.backend for row in backends],
        keys,
        [[text(row.settings.get(key, "-")) for row in backends] for key in keys],
    )


# --- across runs -----------------------------------------------------------------------------


def machine(run: RunResult) -> tuple[str, str]:
    """(key, label) of the machine a run was measured on: host, CPU, cores and GPUs."""
    env = run.environment
    gpus = env.get("gpus") or []
    gpu_names = (
        ", ".join(text(g.get("name", g)) if isinstance(g, dict) else text(g) for g in gpus)
        if isinstance(gpus, list)
        else text(gpus)
    )
    parts = [text(env.get("hostname") or "?"), text(env.get("cpu") or "?"), f"{text(env.get('cores') or '?')} cores"]
    if gpu_names:
        parts.append(gpu_names)
    label = f"{parts[0]} ({', '.join(parts[1:])})"
    return json.dumps(parts), label


def config_key(run: RunResult) -> str:
    return json.dumps(configuration(run), sort_keys=True)


def _varying(configs: Sequence[dict[str, str]]) -> list[str]:
    keys = sorted({key for config in configs for key in config})
    return [key for key in keys if len({config.get(key) for config in configs}) > 1]


def config_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [
        f"{key}: {before.get(key, '-')} -> {after.get(key, '-')}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def backend_changes(
    before: BackendResult, after: BackendResult, run_before: RunResult, run_after: RunResult
) -> list[str]:
    """What changed for one framework between two runs of one series: versions and settings."""
    changes = []
    if before.framework_version != after.framework_version:
        changes.append(f"version {before.framework_version or '-'} -> {after.framework_version or '-'}")
    for key in sorted(set(before.settings) | set(after.settings)):
        a, b = before.settings.get(key), after.settings.get(key)
        if a != b:
            changes.append(f"setting {key}: {text(a)} -> {text(b)}")
    a, b = run_before.environment.get("cnnbench"), run_after.environment.get("cnnbench")
    if a and b and a != b:
        changes.append(f"cnnbench {text(a)} -> {text(b)}")
    return changes


@dataclass(frozen=True)
class History:
    """One metric's points over the runs (one series per framework, configuration and machine)."""

    metric: Metric
    points: tuple[dict[str, Any], ...]
    #: Where a machine's configuration changed from its previous run: a vertical rule each.
    rules: tuple[dict[str, Any], ...]
    variants: tuple[str, ...]


def history(runs: Sequence[RunResult], metrics: Sequence[Metric] = METRICS) -> list[History]:
    """Each metric across ``runs`` (oldest first), regressions judged against the series' previous run."""
    ordered = sorted(runs, key=lambda r: r.created)
    configs = {config_key(r): configuration(r) for r in ordered}
    machines = {machine(r)[0]: machine(r)[1] for r in ordered}
    varying = _varying(list(configs.values()))

    def variant(run: RunResult) -> str:
        parts = []
        if len(configs) > 1:
            config = configuration(run)
            parts.append(", ".join(f"{key.split('.', 1)[1]}={config.get(key, '-')}" for key in varying))
        if len(machines) > 1:
            parts.append(machine(run)[1])
        return " · ".join(parts)

    rules = []
    previous: dict[str, RunResult] = {}
    for run in ordered:
        key = machine(run)[0]
        if key in previous and config_key(previous[key]) != config_key(run):
            changes = config_changes(configuration(previous[key]), configuration(run))
            where = f" on {machine(run)[1]}" if len(machines) > 1 else ""
            rules.append(
                {
                    "created": run.created,
                    "run": run.run_id,
                    "text": f"configuration changed{where}: " + "; ".join(changes),
                }
            )
        previous[key] = run
    found = []
    for metric in metrics:
        scale = 100.0 if metric.fraction else 1.0
        points = []
        last: dict[tuple[str, str], tuple[RunResult, BackendResult]] = {}
        for index, run in enumerate(ordered):
            for row in run.backends:
                values = [v for v in row.values(metric.key) if stats.finite(v)]
                if not values:
                    continue
                series_key = (row.backend, variant(run))
                median, q1, q3 = _spread(values)
                assert median is not None and q1 is not None and q3 is not None
                point = {
                    "series": row.backend + (f" · {series_key[1]}" if series_key[1] else ""),
                    "framework": row.backend,
                    "variant": series_key[1],
                    "index": index,
                    "created": run.created,
                    "run": run.run_id,
                    "date": run.created.replace("T", " ")[:16],
                    "commit": text(run.environment.get("git_commit") or "-"),
                    "value": median * scale,
                    "q1": q1 * scale,
                    "q3": q3 * scale,
                    "repeats": len(values),
                    "value_text": format_spread(metric, values),
                    "changed": "",
                    "regression": "",
                }
                if series_key in last:
                    run_before, row_before = last[series_key]
                    point["changed"] = "; ".join(backend_changes(row_before, row, run_before, run))
                    threshold = DEFAULT_THRESHOLDS.get(metric.key)
                    before = [v for v in row_before.values(metric.key) if stats.finite(v)]
                    verdict = judge(row.backend, metric, before, values, threshold)
                    if verdict.regression and threshold is not None:
                        limit = threshold.describe(metric)
                        point["regression"] = (
                            f"{verdict.format_relative()} vs {run_before.run_id} (fails at {limit}; {verdict.evidence})"
                        )
                last[series_key] = (run, row)
                points.append(point)
        if points:
            variants = tuple(dict.fromkeys(str(p["variant"]) for p in points if p["variant"]))
            found.append(History(metric, tuple(points), tuple(rules), variants))
    return found


# --- two runs --------------------------------------------------------------------------------


def pick_pair(runs: Sequence[RunResult], baseline: RunResult | None = None) -> tuple[RunResult, RunResult] | None:
    """(baseline, current): ``baseline`` or the previous run on the newest run's dataset, vs the newest."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r.created)
    current = ordered[-1]
    if baseline is not None:
        return baseline, current
    same = [r for r in ordered[:-1] if r.data.dataset == current.data.dataset]
    return (same[-1], current) if same else None


def comparison(baseline: RunResult, current: RunResult, baseline_name: str, current_name: str) -> Comparison:
    return compare_runs(baseline, current, baseline_name=baseline_name, current_name=current_name)


def comparison_points(result: Comparison) -> list[dict[str, Any]]:
    """Per framework and metric: the relative change, signed so that right (positive) is better."""
    points = []
    for row in result.rows:
        rel = row.relative_change
        if rel is None or not stats.finite(rel):
            continue
        better = 100 * rel * (1 if row.metric.bigger_is_better else -1)
        verdict = "regression" if row.regression else row.verdict
        points.append(
            {
                "label": f"{row.backend} · {row.metric.label}",
                "framework": row.backend,
                "metric": row.metric.label,
                "better_pct": better,
                "verdict": verdict,
                "change": row.format_relative(),
                "baseline": row.format_side(row.baseline),
                "current": row.format_side(row.current),
                "evidence": row.evidence,
            }
        )
    return points
