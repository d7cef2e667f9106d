"""cnnbench report: the HTML's content, its escaping of hostile strings, its data, and the command."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import resultgen
from cnnbench import report
from cnnbench.commands.report import command
from cnnbench.compare import compare_runs, metric_for
from cnnbench.errors import UsageError
from cnnbench.html import charts, data, page, write_report, write_store_report
from cnnbench.results import BackendResult, EpochRecord, Measurement, RunResult

HOSTILE = "</script><img src=x onerror=alert(1)>"
#: Other ways out of a script element or an attribute: a comment opener, upper case, quotes, line separators.
SNEAKY = "<!--<SCRIPT>\"'&amp;\u2028\u2029</SCRIPT >"


def run_at(day: int, backends: list[BackendResult], **kwargs: Any) -> RunResult:
    return resultgen.run(backends, run_id=f"2025010{day}T120000Z", created=f"2025-01-0{day}T12:00:00+00:00", **kwargs)


def with_accuracy(row: BackendResult) -> BackendResult:
    """Per-epoch test accuracy on every repeat, as ``run --plot`` records it."""
    repeats = tuple(
        dataclasses.replace(m, epochs=tuple(dataclasses.replace(e, test_accuracy=0.5 + e.epoch / 10) for e in m.epochs))
        for m in row.repeats
    )
    return dataclasses.replace(row, repeats=repeats)


def hostile_run() -> RunResult:
    """Every string a result file or a plugin controls, set to something that tries to break out."""
    row = resultgen.backend("torch", [2000.0, 2100.0, 1900.0])
    evil = dataclasses.replace(
        row,
        backend=f"evil{HOSTILE}",
        framework=HOSTILE,
        framework_version=SNEAKY,
        plugin=f"plugin {HOSTILE}",
        device=HOSTILE,
        settings={HOSTILE: SNEAKY, "threads": HOSTILE},
        parity={
            "status": "FAIL",
            "message": HOSTILE,
            "checks": {HOSTILE: {"name": HOSTILE, "passed": False, "ratio": 2.0, "rule": SNEAKY, "detail": HOSTILE}},
        },
    )
    failed = resultgen.backend("jax", [1000.0], status="failed", reason=HOSTILE)
    environment = {
        **resultgen.ENVIRONMENT,
        "cpu": HOSTILE,
        "hostname": SNEAKY,
        "git_commit": HOSTILE,
        HOSTILE: {"nested": SNEAKY},
    }
    result = run_at(1, [evil, failed], environment=environment, dataset=HOSTILE)
    return dataclasses.replace(result, preset=HOSTILE, run_id=f"20250101T120000Z{HOSTILE}", model={"name": SNEAKY})


def script_data(document: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', document, re.S)
    assert match, "the chart data block is missing"
    return json.loads(match.group(1))


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each inline script."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, text: str) -> None:
        if self._in_script:
            self.scripts[-1] += text


def parse(document: str) -> Tags:
    tags = Tags()
    tags.feed(document)
    return tags


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def rendered(runs: list[RunResult], tmp_path: Path, **kwargs: Any) -> str:
    return write_report(runs, tmp_path / "report", **kwargs).read_text(encoding="utf-8")


# --- escaping --------------------------------------------------------------------------------


def hostile_store() -> list[RunResult]:
    """The hostile run, then a run whose frameworks are named to break out, for the history and comparison."""
    torch = resultgen.backend("torch", [2100.0, 2000.0])
    names = [f"evil{HOSTILE}", f"sneaky{SNEAKY}"]
    return [hostile_run(), run_at(2, [dataclasses.replace(torch, backend=name) for name in names])]


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    document = rendered(hostile_store(), tmp_path)
    ours = re.sub(r"<script>.*?</script>", "", document, flags=re.S)  # the page without the vendored code
    assert HOSTILE not in document and "<img" not in ours.lower()
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in ours  # shown as text, not dropped
    tags = parse(document)
    names = {tag for tag, _ in tags.tags}
    assert "img" not in names
    assert not [(tag, a) for tag, attrs in tags.tags for a in attrs if a.startswith("on")], (
        "no inline event handler may appear"
    )
    # one data block and four scripts (vega, vega-lite, vega-embed, the report's): nothing injected
    assert [attrs.get("type") for tag, attrs in tags.tags if tag == "script"] == [
        "application/json",
        None,
        None,
        None,
        None,
    ]


def test_json_in_the_script_cannot_close_it_and_round_trips(tmp_path):
    document = rendered(hostile_store(), tmp_path)
    block = re.search(r'id="report-data">(.*?)</script>', document, re.S)
    assert block is not None
    raw = block.group(1)
    assert "<" not in raw and ">" not in raw and "&" not in raw and "\u2028" not in raw and "\u2029" not in raw
    values = strings(script_data(document))
    assert f"evil{HOSTILE}" in values  # the framework name travels intact as data, for the charts' labels
    assert f"sneaky{SNEAKY}" in values


def test_script_json_escapes_every_way_out():
    text = page.script_json({"a": HOSTILE, SNEAKY: [SNEAKY]})
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == {"a": HOSTILE, SNEAKY: [SNEAKY]}


def test_csp_allows_exactly_the_inline_scripts(tmp_path):
    document = rendered([run_at(1, [resultgen.backend("torch", [2000.0])])], tmp_path)
    tags = parse(document)
    csp = next(
        attrs["content"]
        for tag, attrs in tags.tags
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"
    )
    assert (
        csp is not None
        and "default-src 'none'" in csp
        and "unsafe-inline" not in csp.split("style-src")[0]
        and "unsafe-eval" not in csp
    )
    for code in tags.scripts[1:]:  # the first is data, not code
        digest = base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii")
        assert f"'sha256-{digest}'" in csp


def test_nothing_is_loaded_from_outside(tmp_path):
    document = rendered(hostile_store(), tmp_path)
    for tag, attrs in parse(document).tags:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), f"<{tag} {name}={value!r}> would load something"
    ours = re.sub(r"<script>.*?</script>", "", document, flags=re.S)  # the vendored code builds no URL from data
    assert "@import" not in ours and "url(" not in ours


def test_an_inlined_script_that_could_end_the_element_is_refused():
    with pytest.raises(RuntimeError):
        page.inline_script("var s = '</SCRIPT>';")
    for name in page.VENDOR_SCRIPTS:  # what we ship passes the same check
        page.inline_script(page._asset(name))


def test_vendored_versions_match_their_readme():
    readme = (Path(page.__file__).parent / "vendor" / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([\w-]+)\.min\.js` \| ([\d.]+) \|", readme, re.M))
    assert set(listed) == {"vega", "vega-lite", "vega-embed"}
    for name, version in listed.items():
        code = page._asset(f"vendor/{name}.min.js")
        assert f'"{version}"' in code, f"{name}.min.js is not version {version}"


# --- content ---------------------------------------------------------------------------------


def store_runs() -> list[RunResult]:
    """Three runs: torch and jax each time, tf failing, torch and jax 40% slower in the last one."""
    runs = []
    for day, factor in ((1, 1.0), (2, 1.05), (3, 0.6)):
        backends = [
            with_accuracy(resultgen.backend("torch", [2000 * factor * f for f in (0.98, 1.0, 1.02)])),
            with_accuracy(resultgen.backend("jax", [1100 * factor * f for f in (0.97, 1.0, 1.01)])),
            resultgen.backend("tf", [], status="failed", reason="worker died"),
        ]
        env = {**resultgen.ENVIRONMENT, "git_commit": f"c0ffee{day}", "matmul_ceiling": {"gflops": 50.0}}
        runs.append(dataclasses.replace(run_at(day, backends, environment=env), model={"flops_train_per_sample": 6e6}))
    return runs


def results_tables(document: str) -> list[list[list[str]]]:
    """The cell texts of each run's results table."""
    tables = re.findall(r'<table class="results sortable">.*?<tbody>(.*?)</tbody>', document, re.S)
    return [[re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)] for body in tables]


def test_run_table_has_one_row_per_framework_formatted_as_the_terminal(tmp_path):
    runs = store_runs()
    document = rendered(runs, tmp_path)
    tables = results_tables(document)
    assert len(tables) == 3 and all(len(t) == 3 for t in tables)
    newest = tables[0]  # newest first
    torch = runs[2].backend("torch")
    assert torch is not None
    row = newest[0]
    assert row[0] == "torch"
    assert row[4] == report.fmt_percent(torch.median("test_accuracy"))
    assert row[5] == report.fmt_spread(torch.values("train_throughput"))
    assert row[6] == report.fmt_efficiency(runs[2], torch)
    assert newest[2][0] == "tf" and newest[2][-1] == "failed: worker died"
    sort = re.search(r'<td class="num" data-sort="([^"]*)">' + re.escape(row[5]), document)
    assert sort and float(sort.group(1)) == pytest.approx(torch.median("train_throughput"))


def test_every_chart_has_a_spec_whose_fields_exist_in_its_data(tmp_path):
    runs = store_runs()
    document = rendered(runs, tmp_path)
    specs = script_data(document)["charts"]
    keys = re.findall(r'data-chart="(c\d+)"', document)
    assert keys and sorted(keys) == sorted(specs)
    # per run: loss, accuracy, train and eval throughput, phases, efficiency; one comparison; five history metrics
    assert len(keys) == 3 * 6 + 1 + 5
    for key, spec in specs.items():
        assert spec["width"] == "container"
        layers = spec.get("layer", [spec])
        for layer in layers:
            values = (layer.get("data") or spec.get("data"))["values"]
            assert values, f"{key}: a layer without data"
            for channel, encoding in layer["encoding"].items():
                fields = [t["field"] for t in encoding] if isinstance(encoding, list) else [encoding.get("field")]
                for field in filter(None, fields):
                    assert field in values[0], f"{key}: {channel} reads {field!r}, absent from its data"


def test_per_run_data_epochs_phases_efficiency():
    run = store_runs()[0]
    epochs = data.epoch_points(run)
    torch = [p for p in epochs if p["framework"] == "torch"]
    assert (
        [p["epoch"] for p in torch] == [1, 2, 3]
        and torch[0]["accuracy"] == pytest.approx(60.0)
        and torch[0]["loss"] == 1.0
    )
    assert not [p for p in epochs if p["framework"] == "tf"]  # no successful repeat: no curve
    phases = data.phase_points(run)
    row = run.backend("torch")
    assert row is not None
    torch_phases = {p["phase"]: p["seconds"] for p in phases if p["framework"] == "torch"}
    assert list(torch_phases) == [p for p in data.PHASES if p in torch_phases]
    assert sum(torch_phases.values()) == pytest.approx(row.median("total_s"))
    assert torch_phases["steady state"] == pytest.approx(row.median("train_s") - row.median("first_epoch_s"))
    points, peak = data.efficiency_points(run)
    assert peak == 50.0
    torch_gflops = next(p for p in points if p["framework"] == "torch")
    assert torch_gflops["gflops"] == pytest.approx(6e6 * row.median("train_throughput") / 1e9)
    repeats, summaries = data.throughput_points(run)
    assert len([r for r in repeats if r["framework"] == "torch" and r["kind"] == "train"]) == 3
    summary = next(s for s in summaries if s["framework"] == "torch" and s["kind"] == "train")
    assert summary["q1"] <= summary["median"] <= summary["q3"] and summary["text"] == report.fmt_spread(
        row.values("train_throughput")
    )


def test_history_series_per_configuration_and_machine_with_changes_and_regressions():
    other = {**resultgen.ENVIRONMENT, "hostname": "otherhost", "cpu": "Other CPU"}
    fast = [2000.0, 2010.0, 1990.0]
    runs = [
        run_at(1, [resultgen.backend("torch", fast)]),
        run_at(2, [resultgen.backend("torch", fast)], environment=other),
        run_at(3, [dataclasses.replace(resultgen.backend("torch", fast), framework_version="2.0")]),
        run_at(4, [resultgen.backend("torch", [v * 0.5 for v in fast])]),  # half the speed: a regression
    ]
    runs.append(
        dataclasses.replace(
            run_at(5, [resultgen.backend("torch", fast)]), train=dataclasses.replace(runs[0].train, batch_size=128)
        )
    )
    found = {h.metric.key: h for h in data.history(runs)}
    throughput = found["train_throughput"]
    series = {p["series"] for p in throughput.points}
    assert len(series) == 3  # (testhost, batch 100), (otherhost, batch 100), (testhost, batch 128)
    assert any("batch_size=128" in s and "testhost" in s for s in series) and any("otherhost" in s for s in series)
    by_run = {p["run"]: p for p in throughput.points}
    assert by_run["20250103T120000Z"]["changed"] == "version 1.0 -> 2.0"
    assert by_run["20250104T120000Z"]["regression"].startswith("-50.0% vs 20250103T120000Z")
    assert [p["run"] for p in throughput.points if p["regression"]] == ["20250104T120000Z"]
    assert (
        by_run["20250101T120000Z"]["commit"] == "abc123def456"
        and by_run["20250101T120000Z"]["value_text"] == "2,000 ± 5"
    )
    rules = throughput.rules
    assert (
        len(rules) == 1 and rules[0]["run"] == "20250105T120000Z" and "train.batch_size: 100 -> 128" in rules[0]["text"]
    )
    accuracy = found["test_accuracy"]
    assert accuracy.points[0]["value"] == pytest.approx(95.0)  # fractions are drawn in percent
    spec = charts.history_chart(throughput, data.framework_colours(runs))
    assert spec["layer"][-1]["mark"]["shape"] == "triangle-down"  # the regression marker layer exists


def test_history_of_one_machine_and_configuration_has_one_series_per_framework():
    runs = store_runs()
    throughput = next(h for h in data.history(runs) if h.metric.key == "train_throughput")
    assert (
        {p["series"] for p in throughput.points} == {"torch", "jax"}
        and throughput.variants == ()
        and throughput.rules == ()
    )
    assert "strokeDash" not in charts.history_chart(throughput, data.framework_colours(runs))["layer"][1]["encoding"]


def test_comparison_shows_compares_verdicts(tmp_path):
    runs = store_runs()
    document = rendered(runs, tmp_path)
    expected = compare_runs(runs[1], runs[2])
    section = document.split('<section id="compare">')[1].split("</section>")[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", section)][
        1:
    ]  # after the header
    assert len(rows) == len(expected.rows)
    for cells, row in zip(rows, expected.rows, strict=True):
        assert cells[0] == row.backend and cells[1] == row.metric.label
        assert cells[7] == (f"{row.verdict} ✗ REGRESSION" if row.regression else row.verdict)
    assert "regressions: torch train throughput, jax train throughput" in section
    points = data.comparison_points(expected)
    torch_train = next(p for p in points if p["framework"] == "torch" and p["metric"] == "train throughput")
    assert (
        torch_train["better_pct"] == pytest.approx(-100 * (1 - 0.6 / 1.05)) and torch_train["verdict"] == "regression"
    )
    first_epoch = metric_for("first_epoch")
    assert all(p["better_pct"] == pytest.approx(0.0) for p in points if p["metric"] == first_epoch.label)


def test_baseline_is_compared_against_the_newest_run(tmp_path):
    runs = store_runs()
    baseline = run_at(9, [resultgen.backend("torch", [4000.0, 4100.0, 3900.0])])
    document = rendered(runs, tmp_path, baseline=baseline, baseline_name="baseline-cpu.json")
    section = document.split('<section id="compare">')[1]
    assert (
        "Baseline <code>baseline-cpu.json</code>" in section
        and "against current <code>20250103T120000Z</code>" in section
    )


def test_non_finite_numbers_and_empty_backends_render(tmp_path):
    nan_epoch = EpochRecord(1, math.nan, 1.0, 100, math.inf)
    broken = BackendResult(
        backend="torch", repeats=(Measurement(epochs=(nan_epoch,), train_throughput=math.inf, test_accuracy=math.nan),)
    )
    unavailable = BackendResult(backend="jax", status="unavailable", reason="jax is not installed")
    document = rendered([run_at(1, [broken, unavailable])], tmp_path)
    script_data(document)  # strict JSON: json.loads refuses NaN only when asked, so check the text too
    assert "NaN" not in document.split('id="report-data">')[1].split("</script>")[0]
    assert "Infinity" not in document.split('id="report-data">')[1].split("</script>")[0]
    assert "unavailable: jax is not installed" in document


def test_single_run_explains_what_is_missing(tmp_path):
    document = rendered([run_at(1, [resultgen.backend("torch", [2000.0])])], tmp_path)
    assert "A history needs at least two runs on one dataset." in document
    assert "Nothing to compare" in document
    assert "per-epoch curves need" in document


def test_write_report_errors(tmp_path):
    with pytest.raises(UsageError, match="no runs"):
        write_report([], tmp_path / "out")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write the report"):
        write_report([run_at(1, [resultgen.backend("torch", [1.0])])], blocker / "sub")


def test_store_report_adds_an_unsaved_latest_run_once(results_dir, tmp_path):
    saved = store_runs()[:2]
    for run in saved:
        resultgen.save(run, results_dir)
    unsaved = run_at(3, [resultgen.backend("torch", [900.0])])
    document = write_store_report(tmp_path / "a", results_dir, latest=unsaved).read_text()
    assert len(results_tables(document)) == 3
    document = write_store_report(tmp_path / "b", results_dir, latest=saved[-1]).read_text()
    assert len(results_tables(document)) == 2  # already in the store: not twice


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def store(results_dir):
    for run in store_runs():
        resultgen.save(run, results_dir)
    return results_dir


def invoke(*args: str):
    return CliRunner().invoke(command, list(args))


def test_command_writes_the_whole_store(store, tmp_path):
    out = tmp_path / "site"
    result = invoke("-o", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "(3 runs," in result.output and "file://" in result.output
    document = (out / "index.html").read_text()
    assert len(results_tables(document)) == 3 and "20250103T120000Z_testhost.json" in document


def test_command_with_named_runs_baseline_and_last(store, tmp_path):
    out = tmp_path / "site"
    result = invoke("latest", "latest~1", "--baseline", "20250101T120000Z_testhost.json", "-o", str(out), "--last", "1")
    assert result.exit_code == 0, result.output
    document = (out / "index.html").read_text()
    assert len(results_tables(document)) == 1
    assert "Baseline <code>20250101T120000Z_testhost.json</code>" in document


def test_command_skips_unreadable_store_files(store, tmp_path):
    (store / "20250104T000000Z_broken.json").write_text("{not json")
    result = invoke("-o", str(tmp_path / "site"))
    assert result.exit_code == 0
    assert "skipped" in result.output and "not valid JSON" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchrun"], "no such result file"),
        (["--dataset", "cifar99"], "no readable run on dataset 'cifar99'"),
        (["--last", "0"], "--last must be at least 1"),
        (["--baseline", "nope"], "nope: no such result file"),
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(store, tmp_path, args, message):
    result = invoke(*args, "-o", str(tmp_path / "site"))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_command_on_an_empty_store_or_a_file_as_output(results_dir, tmp_path):
    result = invoke("-o", str(tmp_path / "site"))
    assert result.exit_code == 2 and "no runs in" in result.output
    resultgen.save(store_runs()[0], results_dir)
    target = tmp_path / "afile"
    target.write_text("")
    result = invoke("-o", str(target))
    assert result.exit_code == 2 and "is a file" in result.output
