"""The HTML report: one self-contained page (charts, data and styles inlined) that works from ``file://``.

``data`` turns results into plain rows and series, ``charts`` into Vega-Lite specifications, ``page``
into HTML; the chart libraries are vendored in ``vendor/`` (see docs/report.md for why Vega-Lite).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cnnbench.errors import UsageError
from cnnbench.html.page import NamedRun, render
from cnnbench.results import RunResult

__all__ = ["INDEX", "NamedRun", "render", "store_runs", "write_report", "write_store_report"]

INDEX = "index.html"


def write_report(
    results: list[RunResult],
    out_dir: Path,
    names: Sequence[str] | None = None,
    baseline: RunResult | None = None,
    baseline_name: str = "baseline",
) -> Path:
    """Write ``out_dir/index.html`` for ``results`` (``names``: how each run is called, default its run id).

    The comparison is the newest run against ``baseline`` or, without one, against the previous
    run on its dataset. Written atomically, so a browser never sees half a report.
    """
    if not results:
        raise UsageError("no runs to report")
    if names is not None and len(names) != len(results):
        raise ValueError("names must give one name per result")
    runs = [NamedRun(r, n) for r, n in zip(results, names or [r.run_id for r in results], strict=True)]
    document = render(runs, NamedRun(baseline, baseline_name) if baseline is not None else None)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".html", dir=out)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for sharing
        os.replace(tmp, out / INDEX)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out / INDEX


def store_runs(results_dir: str | os.PathLike[str] | None = None) -> tuple[list[RunResult], list[str], list[str]]:
    """(runs, their file names, reasons for skipped files) of every readable run in the store."""
    from cnnbench import history

    stored, skipped = history.load_runs(history.store_files(results_dir))
    return [s.result for s in stored], [s.path.name for s in stored], skipped


def write_store_report(
    out_dir: Path, results_dir: str | os.PathLike[str] | None = None, latest: RunResult | None = None
) -> Path:
    """The report of the whole store, plus ``latest`` when it was not saved there (``run --no-save``)."""
    runs, names, _ = store_runs(results_dir)
    if latest is not None and all(r.run_id != latest.run_id for r in runs):
        runs, names = [*runs, latest], [*names, latest.run_id]
    return write_report(runs, out_dir, names=names)
