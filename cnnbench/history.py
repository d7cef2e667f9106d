"""One metric across the stored runs: table rows and a PNG with one line per framework.

Runs are ordered by their creation time. Only runs of one dataset are put side by side (a
metric on MNIST and on CIFAR-10 are different quantities); a file that cannot be read is
skipped with its reason instead of hiding the rest of the history.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench import results, stats
from cnnbench.compare import Metric
from cnnbench.errors import UsageError


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


def history_rows(runs: Sequence[StoredRun], metric: Metric) -> tuple[list[str], list[tuple[StoredRun, dict[str, Point]]]]:
    """(framework names, one (run, {framework: point}) per run)."""
    return frameworks(runs, metric), [(run, points(run, metric)) for run in runs]


def plot_history(
    runs: Sequence[StoredRun], metric: Metric, path: str | os.PathLike[str], title: str | None = None,
) -> Path:
    """A line per framework over the runs, the repeats' inter-quartile range as a band."""
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
    fig, ax = plt.subplots(figsize=(max(8.0, min(16.0, 2.5 + 0.7 * len(rows))), 4.8), dpi=120)
    for name in names:
        med = [p[name].median * scale if name in p else math.nan for _, p in rows]
        low = [p[name].q1 * scale if name in p else math.nan for _, p in rows]
        high = [p[name].q3 * scale if name in p else math.nan for _, p in rows]
        (line,) = ax.plot(x, med, marker="o", markersize=4, linewidth=1.6, label=mpl_text(name))
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
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
    ax.legend(title="framework", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
