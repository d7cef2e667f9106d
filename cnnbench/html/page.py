"""The report page: HTML from the report's data, every string from a result file escaped on the way in.

Text goes through ``html.escape``; the chart data is JSON inside ``<script type="application/json">``
with ``<``, ``>``, ``&`` and the JavaScript line separators written as ``\\uXXXX`` escapes, so no
string can close the script element. The page's Content-Security-Policy allows only the page's own
inline scripts (by hash), inline styles and ``data:`` images: no request can leave it, and a
string that slipped past escaping still could not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

from cnnbench import __version__, report
from cnnbench.compare import Comparison
from cnnbench.html import charts, data
from cnnbench.results import RunResult, now_iso

#: Scripts inlined into every report, in load order (vega, then vega-lite, then vega-embed, then ours).
VENDOR_SCRIPTS = ("vendor/vega.min.js", "vendor/vega-lite.min.js", "vendor/vega-embed.min.js")
#: The page may run its own inline scripts (by hash) and nothing else, and load nothing from anywhere.
_CSP = (
    "default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "base-uri 'none'; form-action 'none'"
)


def esc(value: Any) -> str:
    return html.escape(data.text(value), quote=True)


def script_json(value: Any) -> str:
    """JSON that is safe between ``<script>`` tags: nothing in it can end the element or start a comment."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _clean(value: Any) -> Any:
    """Non-finite floats become null, tuples lists: what strict JSON can hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _asset(name: str) -> str:
    return resources.files("cnnbench.html").joinpath(name).read_text(encoding="utf-8")


def inline_script(code: str) -> str:
    """``code`` as an inline script; refuses code that would end the element early (a packaging bug)."""
    if "</script" in code.lower() or "<!--" in code:
        raise RuntimeError("an inlined script contains '</script' or '<!--'; it cannot be embedded safely")
    return f"<script>{code}</script>"


def _hash(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii") + "'"


@dataclass(frozen=True)
class NamedRun:
    """A run and the name it goes by in the report (its file name, or its run id)."""

    result: RunResult
    name: str


class Page:
    """Collects the charts' specifications while the body is written; each chart gets a generated id."""

    def __init__(self, runs: Sequence[NamedRun]):
        self.runs = runs
        self.colours = data.framework_colours(r.result for r in runs)
        self.specs: dict[str, dict[str, Any]] = {}

    def chart(self, spec: dict[str, Any] | None, label: str, caption: str = "") -> str:
        if spec is None:
            return ""
        key = f"c{len(self.specs) + 1}"
        self.specs[key] = spec
        note = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        box = f'<div class="chart" data-chart="{key}" role="img" aria-label="{esc(label)}"></div>'
        return f'<figure class="chart-box">{box}{note}</figure>'

    # --- tables --------------------------------------------------------------------------

    @staticmethod
    def table(
        headers: Sequence[str],
        rows: Sequence[Sequence[data.Cell | str]],
        css: str = "",
        numeric: Sequence[int] = (),
        sortable: bool = False,
    ) -> str:
        head = []
        for i, name in enumerate(headers):
            cls = ' class="num"' if i in numeric else ""
            label = f'<button type="button">{esc(name)}</button>' if sortable else esc(name)
            sort = ' aria-sort="none"' if sortable else ""
            head.append(f'<th scope="col"{cls}{sort}>{label}</th>')
        body = []
        for row in rows:
            cells = []
            for i, cell in enumerate(row):
                cell = cell if isinstance(cell, data.Cell) else data.Cell(cell)
                classes = " ".join(c for c in ("num" if i in numeric else "", cell.css) if c)
                attrs = f' class="{esc(classes)}"' if classes else ""
                if sortable and i in numeric:
                    attrs += f' data-sort="{"" if cell.sort is None else repr(float(cell.sort))}"'
                cells.append(f"<td{attrs}>{esc(cell.text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        classes = " ".join(c for c in (css, "sortable" if sortable else "") if c)
        table = (
            f'<table class="{classes}"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        )
        return f'<div class="table-wrap">{table}</div>'

    # --- one run -------------------------------------------------------------------------

    def run_section(self, named: NamedRun, anchor: str, is_open: bool) -> str:
        run = named.result
        env = run.environment
        badges = []
        failed = [row.backend for row in run.backends if row.status not in ("ok", "unavailable", "unsupported")]
        if failed:
            badges.append(f'<span class="badge bad">{len(failed)} failed</span>')
        if any(report.parity_status(row) == "FAIL" for row in run.backends):
            badges.append('<span class="badge bad">parity FAIL</span>')
        if run.interrupted:
            badges.append('<span class="badge warn">interrupted</span>')
        if run.preset:
            badges.append(f'<span class="badge">{esc(run.preset)}</span>')
        name = f" · {named.name}" if named.name != run.run_id else ""
        host, commit = env.get("hostname", "?"), env.get("git_commit") or "-"
        sub = f"run {run.run_id}{name} · host {host} · commit {commit} · {len(run.backends)} frameworks"
        created = run.created.replace("T", " ")[:19]
        parts = [
            f'<details class="run" id="{anchor}"{" open" if is_open else ""}>',
            f"<summary>{esc(run.data.dataset)} · {esc(created)}{''.join(badges)}",
            f'<span class="sub">{esc(sub)}</span></summary>',
            f'<p class="sub">{esc(data.run_title(run))}</p>',
            "<h3>Accuracy and speed</h3>",
            self.table(data.COLUMNS, data.run_rows(run), css="results", numeric=range(3, 11), sortable=True),
            '<p class="note">Click a column to sort. Medians over the successful repeats, ± half the inter-quartile '
            "range, formatted as in the terminal table."
            + (
                " ! marks a framework that failed the parity check: its speed is not for a model equal to the others'."
                if any(report.parity_status(r) == "FAIL" for r in run.backends)
                else ""
            )
            + "</p>",
            self.run_charts(run),
            self.parity_section(run),
            self.settings_section(run),
            '<details class="more"><summary>Environment and configuration</summary>',
            self.table(("key", "value"), [(k, v) for k, v in data.environment_rows(run)], css="kv"),
            "</details>",
            "</details>",
        ]
        return "\n".join(parts)

    def run_charts(self, run: RunResult) -> str:
        epochs = data.epoch_points(run)
        repeats, summaries = data.throughput_points(run)
        efficiency, peak = data.efficiency_points(run)
        figures = [
            self.chart(
                charts.epoch_chart(
                    epochs, self.colours, "loss", "Training loss per epoch", "mean training loss", "loss_text"
                ),
                "training loss per epoch and framework",
            ),
            self.chart(
                charts.epoch_chart(
                    epochs, self.colours, "accuracy", "Test accuracy per epoch", "test accuracy (%)", "accuracy_text"
                ),
                "test accuracy per epoch and framework",
            ),
            self.chart(
                charts.throughput_chart(
                    repeats, summaries, self.colours, "train", "Training throughput (steady state)"
                ),
                "training throughput per framework, each repeat",
            ),
            self.chart(
                charts.throughput_chart(repeats, summaries, self.colours, "eval", "Evaluation throughput"),
                "evaluation throughput per framework, each repeat",
            ),
            self.chart(charts.phases_chart(data.phase_points(run)), "seconds per phase and framework"),
            self.chart(
                charts.efficiency_chart(efficiency, peak, self.colours), "achieved GFLOP/s against the matmul ceiling"
            ),
        ]
        notes = []
        if epochs and not any(p.get("accuracy") is not None for p in epochs):
            notes.append(
                "Test accuracy was measured after training only "
                "(per-epoch curves need `cnnbench run --plot` or `--target-accuracy`)."
            )
        if not efficiency:
            notes.append("No efficiency figure: the run records no FLOPs per sample or no steady-state throughput.")
        shown = [f for f in figures if f]
        if not shown:
            return '<p class="note">No successful repeat: nothing to chart.</p>'
        return f'<div class="charts">{"".join(shown)}</div>' + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)

    def parity_section(self, run: RunResult) -> str:
        rows, details = [], []
        for entry in data.parity_rows(run):
            failed = [c for c in entry["checks"] if not c["passed"]]
            worst = entry["checks"][0] if entry["checks"] else None
            worst_text = (
                f"{worst['name']} ({worst['ratio']:.3g} of its tolerance)"
                if worst and worst["ratio"] is not None
                else "-"
            )
            css = f"parity-{entry['status'].lower().replace(' ', '-')}"
            rows.append(
                (
                    entry["framework"],
                    data.Cell(entry["status"], css=css),
                    entry["message"] or "-",
                    f"{len(failed)} of {len(entry['checks'])}" if entry["checks"] else "-",
                    worst_text,
                )
            )
            if entry["checks"]:
                checks = [
                    (
                        c["name"],
                        data.Cell(
                            "pass" if c["passed"] else "FAIL", css="parity-pass" if c["passed"] else "parity-fail"
                        ),
                        "-" if c["ratio"] is None else f"{c['ratio']:.3g}",
                        c["rule"],
                        c["detail"] or "-",
                    )
                    for c in entry["checks"]
                ]
                details.append(
                    f'<details class="more"><summary>{esc(entry["framework"])}: {len(checks)} checks</summary>'
                    + self.table(("check", "result", "share of tolerance", "rule", "detail"), checks, numeric=(2,))
                    + "</details>"
                )
        return (
            "<h3>Parity with the float64 reference</h3>"
            + self.table(("framework", "parity", "message", "checks failed", "closest to its tolerance"), rows)
            + "".join(details)
        )

    def settings_section(self, run: RunResult) -> str:
        differing = report.differing_settings(run)
        out = ["<h3>Settings that differ between frameworks</h3>"]
        if differing:
            backends = sorted({b for values in differing.values() for b in values})
            rows = [[key, *[data.text(values.get(b, "-")) for b in backends]] for key, values in differing.items()]
            out.append(self.table(("setting", *backends), rows, css="settings"))
        else:
            out.append('<p class="note">None: every framework that ran recorded the same settings.</p>')
        names, keys, values = data.all_settings(run)
        if keys:
            out.append('<details class="more"><summary>Every setting of every framework</summary>')
            every: list[list[data.Cell | str]] = [[key, *row] for key, row in zip(keys, values, strict=True)]
            out.append(self.table(("setting", *names), every, css="settings"))
            out.append("</details>")
        return "".join(out)

    # --- across runs ---------------------------------------------------------------------

    def history_section(self) -> str:
        out = ['<section id="history"><h2>History</h2>']
        datasets = list(
            dict.fromkeys(
                r.result.data.dataset for r in sorted(self.runs, key=lambda r: r.result.created, reverse=True)
            )
        )
        shown = False
        for dataset in datasets:
            runs = [r.result for r in self.runs if r.result.data.dataset == dataset]
            if len(runs) < 2:
                continue
            shown = True
            found = data.history(runs)
            out.append(f"<h3>{esc(dataset)}: {len(runs)} runs</h3>")
            out.append(
                '<p class="legend-note">One line per framework, configuration and machine; vertical bars: the '
                "repeats' inter-quartile range; ◇ the framework's version or settings changed since its previous "
                "run; ▼ a regression against the previous run of the same line (compare's default thresholds and "
                "noise test, as in the CI gate); dashed vertical line: the configuration changed. Hover a point for "
                "its commit, date, value and spread.</p>"
            )
            figures = [
                self.chart(charts.history_chart(h, self.colours), f"{h.metric.label} across runs") for h in found
            ]
            out.append(f'<div class="charts">{"".join(figures)}</div>')
        if not shown:
            out.append('<p class="note">A history needs at least two runs on one dataset.</p>')
        out.append("</section>")
        return "\n".join(out)

    def comparison_section(self, pair: tuple[NamedRun, NamedRun] | None) -> str:
        out = ['<section id="compare"><h2>Two runs compared</h2>']
        if pair is None:
            out.append(
                '<p class="note">Nothing to compare: the newest run has no earlier run on its dataset '
                "(or name one with --baseline).</p></section>"
            )
            return "\n".join(out)
        baseline, current = pair
        result: Comparison = data.comparison(baseline.result, current.result, baseline.name, current.name)
        out.append(
            f"<p>Baseline <code>{esc(baseline.name)}</code> ({esc(baseline.result.created)}) against current "
            f"<code>{esc(current.name)}</code> ({esc(current.result.created)}), as <code>cnnbench compare</code> "
            "judges them with its default thresholds.</p>"
        )
        regressions = result.regressions
        verdict = (
            f'<p class="verdict-regression">{len(regressions)} regression{"s" if len(regressions) != 1 else ""}: '
            + esc(", ".join(f"{r.backend} {r.metric.label}" for r in regressions))
            + "</p>"
            if regressions
            else '<p class="verdict-better">No regression.</p>'
        )
        out.append(verdict)
        rows: list[list[data.Cell | str]] = []
        for row in result.rows:
            name = "regression" if row.regression else row.verdict
            rows.append(
                [
                    row.backend,
                    row.metric.label,
                    row.format_side(row.baseline),
                    row.format_side(row.current),
                    row.metric.format_change(row.change),
                    row.format_relative(),
                    row.threshold.describe(row.metric) if row.threshold else "off",
                    data.Cell(f"{row.verdict} ✗ REGRESSION" if row.regression else row.verdict, css=f"verdict-{name}"),
                    row.evidence,
                ]
            )
        out.append(
            self.chart(
                charts.comparison_chart(data.comparison_points(result)),
                "relative change per framework and metric, coloured by verdict",
            )
        )
        out.append(
            self.table(
                ("framework", "metric", "baseline", "current", "change", "change %", "fails at", "verdict", "evidence"),
                rows,
                css="comparison",
                numeric=(2, 3, 4, 5, 6),
            )
        )
        if result.warnings:
            out.append(
                '<h3>Why the numbers may not be comparable</h3><ul class="warnings">'
                + "".join(f"<li>{esc(w)}</li>" for w in result.warnings)
                + "</ul>"
            )
        out.append("</section>")
        return "\n".join(out)

    # --- the whole page ------------------------------------------------------------------

    def body(self, pair: tuple[NamedRun, NamedRun] | None) -> str:
        newest_first = sorted(self.runs, key=lambda r: r.result.created, reverse=True)
        datasets = ", ".join(dict.fromkeys(r.result.data.dataset for r in newest_first))
        runs_nav = "".join(
            f'<a href="#run-{i}">{esc(r.result.data.dataset)} {esc(r.result.created[:10])}</a>'
            for i, r in enumerate(newest_first[:6], start=1)
        )
        header = (
            '<header class="top"><h1>cnnbench report</h1>'
            f'<p class="meta">{len(self.runs)} run{"s" if len(self.runs) != 1 else ""} on {esc(datasets)} · '
            f"generated {esc(now_iso())} by cnnbench {esc(__version__)} · self-contained: works offline, "
            "makes no network request</p>"
            '<nav><a href="#runs">Runs</a><a href="#history">History</a><a href="#compare">Comparison</a>'
            f"{runs_nav}</nav></header>"
        )
        sections = [self.run_section(r, f"run-{i}", i == 1) for i, r in enumerate(newest_first, start=1)]
        main = (
            '<main><section id="runs"><h2>Runs</h2><p class="note">Newest first; open a run for its table, '
            "curves, phases, parity, settings and environment.</p>"
            + "\n".join(sections)
            + "</section>"
            + self.comparison_section(pair)
            + self.history_section()
            + "</main>"
        )
        footer = (
            "<footer>Charts: Vega-Lite, Vega and vega-embed (BSD-3-Clause), inlined. Colours: the Okabe-Ito palette, "
            "readable with colour-vision deficiencies; every colour is also said in words or shapes.</footer>"
        )
        return header + main + footer


def render(runs: Sequence[NamedRun], baseline: NamedRun | None = None) -> str:
    """The whole report as one HTML document (scripts and styles inlined)."""
    page = Page(runs)
    pair = data.pick_pair([r.result for r in runs], baseline.result if baseline else None)
    named_pair = None
    if pair is not None:
        by_id = {id(r.result): r for r in runs}
        before = baseline if baseline is not None else by_id[id(pair[0])]
        named_pair = (before, by_id[id(pair[1])])
    body = page.body(named_pair)
    scripts = [_asset(name) for name in VENDOR_SCRIPTS] + [_asset("report.js")]
    blocks = "\n".join(inline_script(code) for code in scripts)
    csp = _CSP.format(hashes=" ".join(_hash(code) for code in scripts))
    template = Template(_asset("template.html"))
    datasets = ", ".join(dict.fromkeys(r.result.data.dataset for r in runs))
    return template.substitute(
        csp=esc(csp),
        version=esc(__version__),
        title=esc(f"cnnbench report: {datasets}"),
        css=_asset("report.css"),
        body=body,
        data=script_json(_clean({"charts": page.specs})),
        scripts=blocks,
    )
