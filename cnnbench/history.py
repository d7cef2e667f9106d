"""One metric across the stored runs: table rows and a PNG with one line per framework and series.

Runs are ordered by their creation time. Only runs of one dataset are put side by side (a
metric on MNIST and on CIFAR-10 are different quantities), and within it runs form one *series*
per configuration and machine: a ``--threads 1`` run or another CPU is a new series, drawn as its
own line with the change marked, never joined to the old line where it would look like a code
speed-up or slow-down. A file that cannot be read is skipped with its reason instead of hiding
the rest of the history.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench import results, stats
from cnnbench.compare import Metric
from cnnbench.errors import UsageError

#: Configuration fields that say where data lives or whether to download: not part of what is measured.
NOT_MEASURED = ("data_dir", "offline")
#: Environment fields that make another machine: the same code is another speed there.
MACHINE_KEYS = ("cpu", "cores", "gpus")


@dataclass(frozen=True)
class StoredRun:
    path: Path
    result: results.RunResult

    @property
    def label(self) -> str:
        """``2025-01-31`` / ``14:02`` / short commit (when known), one per line."""
        date, _, time = self.result.created.partition("T")
        commit = (self.result.environment.get("git_commit") or "")[:8]
        return "\n".join(part for part in (date, time[:5], commit) if part)


@dataclass(frozen=True)
class Point:
    """One framework in one run: the median over repeats and the quartiles of the repeats."""

    median: float
    q1: float
    q3: float
    repeats: int


def store_files(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """Run files of the store (named by time, so they sort oldest first); baselines are not runs."""
    folder = results.results_dir(directory)
    return sorted(f for f in folder.glob("*.json") if f.name[:1].isdigit())


def load_runs(paths: Sequence[Path], strict: bool = False) -> tuple[list[StoredRun], list[str]]:
    """Load ``paths`` oldest first; unreadable files are skipped (or, with ``strict``, an error)."""
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(StoredRun(Path(path), results.load(path)))
        except UsageError as exc:
            if strict:
                raise
            skipped.append(str(exc))
    runs.sort(key=lambda run: (run.result.created, str(run.path)))
    return runs, skipped


def select_dataset(runs: list[StoredRun], dataset: str | None) -> tuple[list[StoredRun], str | None]:
    """Runs of ``dataset``, or of the newest run's dataset when none is given."""
    if not runs:
        return [], dataset
    chosen = dataset or runs[-1].result.data.dataset
    return [run for run in runs if run.result.data.dataset == chosen], chosen


def points(run: StoredRun, metric: Metric) -> dict[str, Point]:
    found: dict[str, Point] = {}
    for row in run.result.backends:
        values = [v for v in row.values(metric.key) if stats.finite(v)]
        if values:
            q1, q3 = (float(q) for q in np.percentile(values, [25, 75]))
            found[row.backend] = Point(float(np.median(values)), q1, q3, len(values))
    return found


def frameworks(runs: Sequence[StoredRun], metric: Metric) -> list[str]:
    """Every framework with a value in some run, in order of first appearance."""
    names: list[str] = []
    for run in runs:
        for name in points(run, metric):
            if name not in names:
                names.append(name)
    return names


def history_rows(
    runs: Sequence[StoredRun],
    metric: Metric,
) -> tuple[list[str], list[tuple[StoredRun, dict[str, Point]]]]:
    """(framework names, one (run, {framework: point}) per run)."""
    return frameworks(runs, metric), [(run, points(run, metric)) for run in runs]


# --- series: one per configuration and machine -----------------------------------------------------------------


SeriesKey = tuple[tuple[str, str], ...]


def series_key(result: results.RunResult) -> SeriesKey:
    """What two runs must share to be points of one line: every measured setting and the machine."""
    items: list[tuple[str, str]] = []
    for section, config in (("train", result.train), ("data", result.data)):
        for name in config.__dataclass_fields__:
            if name not in NOT_MEASURED:
                items.append((f"{section}.{name}", repr(getattr(config, name))))
    items += [(f"machine.{key}", repr(result.environment.get(key))) for key in MACHINE_KEYS]
    return tuple(items)


@dataclass(frozen=True)
class Series:
    """Runs of one configuration on one machine, oldest first; ``number`` counts from 1 by first appearance."""

    number: int
    key: SeriesKey
    runs: tuple[StoredRun, ...]
    #: ``name=value`` of the settings that differ between the series shown together (empty when alone).
    differences: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``series 2: train.threads=1``: what sets this line apart from the others."""
        return f"series {self.number}" + (f": {', '.join(self.differences)}" if self.differences else "")


def split_series(runs: Sequence[StoredRun]) -> list[Series]:
    """The runs grouped by ``series_key``, in order of each series' first run, each described by what varies."""
    keys: list[SeriesKey] = []
    members: dict[SeriesKey, list[StoredRun]] = {}
    for run in runs:
        key = series_key(run.result)
        if key not in members:
            keys.append(key)
            members[key] = []
        members[key].append(run)
    varying = [i for i in range(len(keys[0])) if len({key[i] for key in keys}) > 1] if keys else []
    return [
        Series(n, key, tuple(members[key]), tuple(f"{key[i][0]}={key[i][1]}" for i in varying))
        for n, key in enumerate(keys, start=1)
    ]


def select_series(series: list[Series], which: str) -> list[Series]:
    """``all``, ``latest`` (the newest run's series) or a series number; anything else is a UsageError."""
    choice = which.strip().lower()
    if choice == "all" or not series:
        return series
    if choice == "latest":
        newest = max((run for s in series for run in s.runs), key=lambda run: (run.result.created, str(run.path)))
        return [s for s in series if newest in s.runs]
    if choice.isdigit() and 1 <= int(choice) <= len(series):
        return [series[int(choice) - 1]]
    raise UsageError(f"--series {which!r}: give all, latest or a series number from 1 to {len(series)}")


def plot_history(
    runs: Sequence[StoredRun],
    metric: Metric,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """A line per framework and series over the runs, the repeats' IQR as a band; a new series is marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh)
    import matplotlib.pyplot as plt

    from cnnbench.plots import mpl_text

    names, rows = history_rows(runs, metric)
    if not names:
        raise UsageError(f"no run has a value for {metric.key}; nothing to plot")
    scale = 100.0 if metric.fraction else 1.0
    unit = "%" if metric.fraction else metric.unit
    x = list(range(len(rows)))
    series = split_series([run for run, _ in rows])
    fig, ax = plt.subplots(figsize=(max(8.0, min(16.0, 2.5 + 0.7 * len(rows))), 4.8), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, line in enumerate(series):
        style, marker = SERIES_STYLES[number % len(SERIES_STYLES)]
        members = {id(run) for run in line.runs}
        for index, name in enumerate(names):
            at = [i for i, (run, p) in enumerate(rows) if id(run) in members and name in p]
            if not at:
                continue
            colour = colours[index % len(colours)]
            med = [rows[i][1][name].median * scale for i in at]
            ax.plot(at, med, linestyle=style, marker=marker, markersize=5, linewidth=1.6, color=colour)
            low = [rows[i][1][name].q1 * scale for i in at]
            high = [rows[i][1][name].q3 * scale for i in at]
            ax.fill_between(at, low, high, color=colour, alpha=0.15, linewidth=0)
    _mark_series_changes(ax, rows, series)
    _legends(ax, names, series, colours, mpl_text)
    ax.set_xticks(x)
    crowded = len(rows) > 12
    labels = [mpl_text(run.label.replace("\n", " ") if crowded else run.label) for run, _ in rows]
    ax.set_xticklabels(labels, fontsize=7, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(f"{metric.label} ({unit}), {metric.direction}" if unit else f"{metric.label}, {metric.direction}")
    ax.set_xlabel("run (oldest left); band: inter-quartile range of the repeats")
    dataset = runs[0].result.data.dataset if runs else "?"
    runs_text = f"{len(rows)} run{'s' if len(rows) != 1 else ''}"
    ax.set_title(mpl_text(title or f"cnnbench {dataset}: {metric.label} across {runs_text}"))
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.05)
    fig.tight_layout()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as exc:
        raise UsageError(f"cannot write plot {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


#: (line style, marker) per series: a change of configuration is seen without colour.
SERIES_STYLES: tuple[tuple[Any, str], ...] = (
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "D"),
    ((0, (5, 1, 1, 1)), "v"),
    ((0, (1, 3)), "P"),
)


def _mark_series_changes(ax: Any, rows: Sequence[tuple[StoredRun, dict[str, Point]]], series: list[Series]) -> None:
    """A dotted vertical line and the series number wherever the next run belongs to another series."""
    number = {id(run): s.number for s in series for run in s.runs}
    for i in range(1, len(rows)):
        now = number[id(rows[i][0])]
        if now != number[id(rows[i - 1][0])]:
            ax.axvline(i - 0.5, color="0.35", linestyle=":", linewidth=1.2)
            ax.annotate(
                f"series {now}",
                (i - 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=7,
                color="0.25",
            )


def _legends(
    ax: Any,
    names: Sequence[str],
    series: list[Series],
    colours: Sequence[str],
    text: Callable[[object], str],
) -> None:
    """Colour says the framework, line style and marker say the series (with what sets it apart)."""
    from matplotlib.lines import Line2D

    frameworks_legend = ax.legend(
        [Line2D([], [], color=colours[i % len(colours)], linewidth=2.5) for i in range(len(names))],
        [text(name) for name in names],
        title="framework",
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
    )
    if len(series) > 1:
        ax.add_artist(frameworks_legend)
        handles = [
            Line2D(
                [],
                [],
                color="0.3",
                linestyle=SERIES_STYLES[i % len(SERIES_STYLES)][0],
                marker=SERIES_STYLES[i % len(SERIES_STYLES)][1],
            )
            for i in range(len(series))
        ]
        labels = [text(textwrap.shorten(s.label, 70, placeholder=" ...")) for s in series]
        ax.legend(
            handles,
            labels,
            title="series (configuration, machine)",
            fontsize=7,
            loc="lower left",
            bbox_to_anchor=(1.01, 0.0),
            borderaxespad=0,
        )
