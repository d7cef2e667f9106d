"""Compare two runs metric by metric, and decide what is a regression without crying wolf.

A change is a regression only when it is *large* (its median passes the metric's threshold, in
the direction that is worse for that metric) and the repeats show it is *beyond the threshold,
not noise*: the current repeats are tested against the baseline repeats moved by the threshold
(e.g. 90% of each baseline throughput for -10%). With repeats on both sides that test is an
exact one-sided Mann-Whitney U test (each repeat is a fresh process, so repeats are
independent); when the sample sizes are too small for it ever to reach ``alpha`` (e.g. 2 vs 2)
the two sets must not overlap at all; with a single value on either side the threshold alone
decides. The test is written here in a few lines instead of depending on scipy.

Two runs of different configurations (dataset, epochs, batch size, learning rate...) measure
different things: ``config_changes`` lists those differences, and the ``compare`` command refuses
them (exit 2) unless told ``--allow-config-change``. Machine and version differences stay warnings.
A stored baseline is only a hint; the gate that measures both sides fresh is ``cnnbench ab``.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cnnbench import stats
from cnnbench.errors import ExitCode, UsageError
from cnnbench.results import OK, UNAVAILABLE, BackendResult, Measurement, Phases, RunResult

#: Significance level of the noise test.
DEFAULT_ALPHA = 0.05
#: Above this many splits the exact test gives way to the normal approximation.
EXACT_SPLITS_LIMIT = 200_000

BETTER, WORSE, SAME = "better", "worse", "same"
#: Backend-level verdicts: it ran in the baseline but failed now / is absent now / is new.
FAILED, MISSING, NEW, NOT_AVAILABLE = "failed", "missing", "new", "n/a"


@dataclass(frozen=True)
class Metric:
    """A quantity read from each repeat, and which direction is good."""

    key: str  # a Measurement or Phases field
    label: str
    unit: str
    bigger_is_better: bool
    aliases: tuple[str, ...] = ()
    #: A 0..1 fraction (accuracy): shown in percent, thresholds may be given in pp.
    fraction: bool = False
    digits: int = 0

    def format(self, value: float | None) -> str:
        if value is None or not stats.finite(value):
            return "-"
        if self.fraction:
            return f"{100 * value:.2f}%"
        return f"{value:,.{self.digits}f}"

    def format_change(self, delta: float | None) -> str:
        """An absolute change with its unit: ``+0.50 pp``, ``-215 samples/s``."""
        if delta is None or not stats.finite(delta):
            return "-"
        if self.fraction:
            return f"{100 * delta:+.2f} pp"
        return f"{delta:+,.{self.digits}f} {self.unit}"

    @property
    def direction(self) -> str:
        return "higher is better" if self.bigger_is_better else "lower is better"


METRICS: tuple[Metric, ...] = (
    Metric("train_throughput", "train throughput", "samples/s", True, ("train",)),
    Metric("eval_throughput", "eval throughput", "samples/s", True, ("eval",)),
    Metric("first_epoch_s", "first epoch", "s", False, ("first_epoch",), digits=2),
    Metric("test_accuracy", "test accuracy", "%", True, ("accuracy", "acc"), fraction=True),
    Metric("peak_rss_mb", "peak memory (RSS)", "MB", False, ("peak_rss", "rss", "memory")),
)

#: Any single-number field of a repeat can be compared or plotted, not only the five above.
_NUMERIC_FIELDS = {
    name
    for cls in (Measurement, Phases)
    for name, tp in typing.get_type_hints(cls).items()
    if tp in (float, float | None)
}


def metric_for(name: str) -> Metric:
    """A known metric by key or alias, or any other numeric Measurement/Phases field (e.g. ``total_s``)."""
    wanted = name.strip().lower()
    for metric in METRICS:
        if wanted == metric.key or wanted in metric.aliases:
            return metric
    if wanted in _NUMERIC_FIELDS:
        seconds = wanted.endswith("_s")
        unit = "s" if seconds else "MB" if wanted.endswith("_mb") else ""
        bigger = "throughput" in wanted or "accuracy" in wanted  # times, losses and memory: lower is better
        return Metric(wanted, wanted.replace("_", " "), unit, bigger, digits=2 if seconds or unit == "" else 0)
    known = sorted({m.key for m in METRICS} | {a for m in METRICS for a in m.aliases} | _NUMERIC_FIELDS)
    raise UsageError(f"unknown metric {name!r}; valid: {', '.join(known)}")


# --- thresholds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """How far a metric may move in its bad direction before it counts: ``10 %``, ``0.5 pp``, ``200`` (units)."""

    amount: float
    kind: str  # "%" relative, "pp" percentage points (fractions only), "" absolute in the metric's unit

    def describe(self, metric: Metric) -> str:
        sign = "-" if metric.bigger_is_better else "+"
        unit = self.kind or (f" {metric.unit}" if metric.unit else "")
        return f"{sign}{self.amount:g}{unit}"

    def beyond(self, metric: Metric, baseline: float, current: float, toward_worse: bool) -> bool:
        """Whether current moved from baseline by more than the threshold, toward worse (or better)."""
        bad_sign = -1.0 if metric.bigger_is_better else 1.0
        moved = (current - baseline) * (bad_sign if toward_worse else -bad_sign)
        if self.kind == "%":
            moved = moved / abs(baseline) * 100 if baseline else 0.0
        elif self.kind == "pp":
            moved *= 100
        return moved > self.amount + 1e-9 * max(1.0, self.amount)  # 0.96 - 0.95 is not "more than 1 pp"

    def shift(self, metric: Metric, value: float, toward_worse: bool) -> float:
        """``value`` moved by the threshold toward worse (or better): the line a change must clear."""
        step = {"%": abs(value) * self.amount / 100, "pp": self.amount / 100}.get(self.kind, self.amount)
        return value + step * _direction(metric, toward_worse)


def _direction(metric: Metric, toward_worse: bool) -> float:
    """+1 when worse (or better, if asked) means a larger value, else -1."""
    worse_is_larger = not metric.bigger_is_better
    return 1.0 if worse_is_larger == toward_worse else -1.0


DEFAULT_FAIL_ON = "train_throughput:-10%,eval_throughput:-10%,first_epoch:+25%,accuracy:-1pp,peak_rss:+20%"

_THRESHOLD = re.compile(r"^(?P<sign>[+-]?)(?P<amount>\d+(?:\.\d+)?|\.\d+)\s*(?P<kind>%|pp)?$")


def parse_fail_on(text: str, base: dict[str, Threshold | None] | None = None) -> dict[str, Threshold | None]:
    """``"train_throughput:-10%,accuracy:-0.5pp,peak_rss:+20%"`` -> thresholds per metric key.

    ``metric:off`` disables gating for that metric (it is still shown). The sign may be left out;
    given, it must point in the metric's bad direction (``-`` when higher is better).
    Metrics not named keep their entry in ``base``.
    """
    thresholds = dict(base or {})
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        if not sep or not value.strip():
            raise UsageError(f"--fail-on item {item!r} must look like METRIC:THRESHOLD, e.g. train_throughput:-10%")
        metric = metric_for(name)
        value = value.strip().lower()
        if value in ("off", "none"):
            thresholds[metric.key] = None
            continue
        match = _THRESHOLD.match(value)
        if not match:
            raise UsageError(
                f"--fail-on item {item!r}: threshold must be a number with %, pp or nothing (the metric's unit), "
                "or 'off'"
            )
        kind = match["kind"] or ""
        if kind == "pp" and not metric.fraction:
            raise UsageError(
                f"--fail-on item {item!r}: pp (percentage points) only applies to accuracy; "
                f"use % or {metric.unit or 'a plain number'}"
            )
        bad_sign = "-" if metric.bigger_is_better else "+"
        if match["sign"] and match["sign"] != bad_sign:
            way = "down" if bad_sign == "-" else "up"
            raise UsageError(
                f"--fail-on item {item!r}: {metric.key} is worse when it goes {way}, "
                f"so write {bad_sign}{match['amount']}{kind}"
            )
        thresholds[metric.key] = Threshold(float(match["amount"]), kind)
    return thresholds


DEFAULT_THRESHOLDS = parse_fail_on(DEFAULT_FAIL_ON)


# --- the noise test ---------------------------------------------------------------------------


def _midranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that values in ``a`` tend to be larger than those in ``b``.

    Exact (every split of the pooled values, ties by mid-ranks) while the splits are few
    enough; beyond that the normal approximation with tie correction and continuity correction.
    """
    n, m = len(a), len(b)
    if not n or not m:
        raise ValueError("both samples need at least one value")
    ranks = _midranks(list(a) + list(b))
    observed = sum(ranks[:n])
    splits = math.comb(n + m, n)
    if splits <= EXACT_SPLITS_LIMIT:
        at_least = sum(1 for chosen in itertools.combinations(ranks, n) if sum(chosen) >= observed - 1e-9)
        return at_least / splits
    u = observed - n * (n + 1) / 2
    mean = n * m / 2
    ties: dict[float, int] = {}
    for r in ranks:
        ties[r] = ties.get(r, 0) + 1
    total = n + m
    variance = n * m / 12 * ((total + 1) - sum(t**3 - t for t in ties.values()) / (total * (total - 1)))
    if variance <= 0:
        return 1.0
    z = (u - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p(n: int, m: int) -> float:
    """The smallest one-sided p-value the exact test can give for sample sizes n and m."""
    return 1 / math.comb(n + m, n)


@dataclass(frozen=True)
class Evidence:
    """Whether a change in one direction is beyond noise, and the words that say why."""

    significant: bool
    text: str
    p_value: float | None = None


def noise_test(current: Sequence[float], reference: Sequence[float], alpha: float) -> Evidence:
    """Are the ``current`` values really larger than the ``reference`` ones? (callers orient the values)."""
    n, m = len(current), len(reference)
    sizes = f"{n} vs {m}"
    if n == 1 and m == 1:
        return Evidence(current[0] > reference[0], "single values: threshold only")
    if smallest_p(n, m) <= alpha:
        p = mann_whitney_greater(current, reference)
        return Evidence(p <= alpha, f"p={p:.3g} (Mann-Whitney, {sizes})", p)
    separated = min(current) > max(reference)
    overlap = "no overlap" if separated else "ranges overlap"
    return Evidence(separated, f"{overlap} ({sizes}, too few repeats for a test)")


# --- comparing runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricComparison:
    """One framework and metric: both sides' values, the change and the verdict."""

    backend: str
    metric: Metric
    baseline: tuple[float, ...] = ()
    current: tuple[float, ...] = ()
    verdict: str = NOT_AVAILABLE
    regression: bool = False
    evidence: str = ""
    threshold: Threshold | None = None

    @property
    def baseline_median(self) -> float | None:
        return stats.median(self.baseline)

    @property
    def current_median(self) -> float | None:
        return stats.median(self.current)

    @property
    def change(self) -> float | None:
        if self.baseline_median is None or self.current_median is None:
            return None
        return self.current_median - self.baseline_median

    @property
    def relative_change(self) -> float | None:
        if self.change is None or not self.baseline_median:
            return None
        return self.change / abs(self.baseline_median)

    def format_relative(self) -> str:
        rel = self.relative_change
        return "-" if rel is None else f"{100 * rel:+.1f}%"

    def format_side(self, values: Sequence[float]) -> str:
        return format_spread(self.metric, values)


def format_spread(metric: Metric, values: Sequence[float]) -> str:
    """Median, with repeats ``± half IQR``, in the metric's display format."""
    median = stats.median(values)
    if median is None:
        return "-"
    if len(values) < 2:
        return metric.format(median)
    half = (stats.iqr(values) or 0.0) / 2
    spread = f"{100 * half:.2f}" if metric.fraction else f"{half:,.{metric.digits}f}"
    return f"{metric.format(median)} ± {spread}"


@dataclass(frozen=True)
class Comparison:
    baseline_name: str
    current_name: str
    rows: tuple[MetricComparison, ...]
    #: Differences that make the numbers less comparable (config, machine, versions).
    warnings: tuple[str, ...] = ()
    alpha: float = DEFAULT_ALPHA
    #: The warnings that are configuration differences (train and data settings): the runs measured different things.
    config_changes: tuple[str, ...] = ()

    @property
    def regressions(self) -> list[MetricComparison]:
        return [row for row in self.rows if row.regression]


class ConfigurationMismatch(UsageError):
    """Two runs of different configurations: a gate's verdict on them would compare different measurements."""

    exit_code = ExitCode.USAGE


def require_same_config(comparison: Comparison) -> None:
    """Raise ``ConfigurationMismatch`` naming every configuration difference, if there is one."""
    if comparison.config_changes:
        listed = "; ".join(comparison.config_changes)
        raise ConfigurationMismatch(
            f"{comparison.baseline_name} and {comparison.current_name} have different configurations ({listed}); "
            "compare runs of one configuration, or pass --allow-config-change to compare them anyway"
        )


def judge(
    backend: str,
    metric: Metric,
    baseline: Sequence[float],
    current: Sequence[float],
    threshold: Threshold | None,
    alpha: float = DEFAULT_ALPHA,
) -> MetricComparison:
    """The verdict for one metric of one framework; gated only when it has a threshold."""
    base, cur = tuple(baseline), tuple(current)
    row = MetricComparison(backend, metric, base, cur, threshold=threshold)
    if not base or not cur:
        side = "baseline" if not base else "current run"
        return replace(row, verdict=NOT_AVAILABLE, evidence=f"no value in the {side}")
    b, c = float(statistics.median(base)), float(statistics.median(cur))
    gate = threshold or Threshold(0.0, "")
    for toward_worse, verdict in ((True, WORSE), (False, BETTER)):
        if not gate.beyond(metric, b, c, toward_worse):
            continue
        # Test the current repeats against the baseline repeats moved by the threshold, values
        # oriented so that larger means further in the direction tested: the change must be
        # significantly *beyond the threshold*, not merely different from zero.
        sign = _direction(metric, toward_worse)
        line = [sign * gate.shift(metric, v, toward_worse) for v in base]
        evidence = noise_test([sign * v for v in cur], line, alpha)
        if evidence.significant:
            regression = toward_worse and threshold is not None
            return replace(row, verdict=verdict, regression=regression, evidence=evidence.text)
        return replace(row, verdict=SAME, evidence=f"within noise: {evidence.text}")
    limit = f"within {threshold.describe(metric)}" if threshold else "no change"
    return replace(row, verdict=SAME, evidence=limit)


def compare_runs(
    baseline: RunResult,
    current: RunResult,
    thresholds: dict[str, Threshold | None] | None = None,
    metrics: Iterable[Metric] = METRICS,
    alpha: float = DEFAULT_ALPHA,
    fail_on_missing: bool = False,
    baseline_name: str = "baseline",
    current_name: str = "current",
) -> Comparison:
    """Every metric of every framework of the baseline (plus frameworks new in the current run)."""
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be in (0, 1), got {alpha}")
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    metrics = tuple(metrics)
    rows: list[MetricComparison] = []
    names = [b.backend for b in baseline.backends]
    names += [b.backend for b in current.backends if baseline.backend(b.backend) is None]
    for name in names:
        before, after = baseline.backend(name), current.backend(name)
        status = _backend_status(before, after, fail_on_missing)
        for metric in metrics:
            threshold = thresholds.get(metric.key)
            if status is not None:
                verdict, regression, text = status
                old, new = _values(before, metric), _values(after, metric)
                rows.append(MetricComparison(name, metric, old, new, verdict, regression, text, threshold))
            else:
                rows.append(judge(name, metric, _values(before, metric), _values(after, metric), threshold, alpha))
    warnings = tuple(comparability_warnings(baseline, current))
    return Comparison(
        baseline_name,
        current_name,
        tuple(rows),
        warnings,
        alpha,
        config_changes=tuple(config_changes(baseline, current)),
    )


def _values(row: BackendResult | None, metric: Metric) -> tuple[float, ...]:
    return tuple(v for v in row.values(metric.key) if stats.finite(v)) if row else ()


def _backend_status(
    before: BackendResult | None,
    after: BackendResult | None,
    fail_on_missing: bool,
) -> tuple[str, bool, str] | None:
    """A verdict for the whole framework when it cannot be compared metric by metric; else None."""
    if before is None:
        if after and after.ok_repeats():
            return NEW, False, "not in the baseline"
        return NOT_AVAILABLE, False, f"not in the baseline; {after.status if after else 'absent'}"
    if not before.ok_repeats():
        return NOT_AVAILABLE, False, f"baseline {before.status}: {before.reason}".rstrip(": ")
    if after is None or after.status == UNAVAILABLE:
        why = "absent from the current run" if after is None else f"unavailable: {after.reason}"
        return MISSING, fail_on_missing, why
    if after.status != OK:
        failed = sum(1 for m in after.repeats if m.status != OK)
        return FAILED, True, f"{after.status} in {failed} of {len(after.repeats)} repeats: {after.reason}"
    return None


#: Configuration fields that say where the data lives or whether to download, not what is measured.
_NOT_MEASURED = ("data_dir", "offline")


#: What the two sides are called in the texts: ``compare``'s words; ``ab`` says base and head.
SIDE_NAMES = ("baseline", "current")


def config_changes(baseline: RunResult, current: RunResult, names: tuple[str, str] = SIDE_NAMES) -> list[str]:
    """The train and data settings that differ: with any of them the two runs measured different things."""
    old_name, new_name = names
    changes: list[str] = []
    for section, old, new in (("train", baseline.train, current.train), ("data", baseline.data, current.data)):
        for name in old.__dataclass_fields__:
            if name in _NOT_MEASURED:
                continue
            a, b = getattr(old, name), getattr(new, name)
            if a != b:
                changes.append(f"{section}.{name} differs: {a!r} ({old_name}) vs {b!r} ({new_name})")
    return changes


def comparability_warnings(baseline: RunResult, current: RunResult, names: tuple[str, str] = SIDE_NAMES) -> list[str]:
    """Everything that differs between the two runs: configuration (see ``config_changes``), machine, versions."""
    old_name, new_name = names
    warnings = config_changes(baseline, current, names)
    for key in ("cpu", "cores", "gpus", "cpu_vector_extension"):
        a, b = baseline.environment.get(key), current.environment.get(key)
        if a != b and (key != "cpu_vector_extension" or None not in (a, b)):  # older files do not record it
            warnings.append(
                f"machine {key} differs: {a!r} ({old_name}) vs {b!r} ({new_name}); speed comparisons are unreliable"
            )
    if baseline.repeat != current.repeat:
        warnings.append(f"repeats differ: {baseline.repeat} ({old_name}) vs {current.repeat} ({new_name})")
    for before in baseline.backends:
        after = current.backend(before.backend)
        if after is None:
            continue
        old_version, new_version = before.framework_version, after.framework_version
        if old_version and new_version and old_version != new_version:
            warnings.append(f"{before.backend}: framework version {old_version} -> {new_version}")
        for key in sorted(set(before.settings) | set(after.settings)):
            a, b = before.settings.get(key), after.settings.get(key)
            if a is not None and b is not None and a != b:
                warnings.append(f"{before.backend}: setting {key} differs: {a!r} ({old_name}) vs {b!r} ({new_name})")
    return warnings
