"""cnnbench compare: verdicts, noise awareness, thresholds and exit codes, on generated result files."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import resultgen
from cnnbench import compare
from cnnbench.cli import cli
from cnnbench.compare import (
    BETTER,
    FAILED,
    MISSING,
    SAME,
    WORSE,
    Threshold,
    compare_runs,
    mann_whitney_greater,
    metric_for,
    parse_fail_on,
)
from cnnbench.errors import UsageError
from cnnbench.results import FAILED as STATUS_FAILED
from cnnbench.results import SCHEMA_VERSION, UNAVAILABLE, BackendResult

TIGHT = (1000.0, 1003.0, 997.0)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["compare", *args], env={"COLUMNS": "220"})


def write_pair(tmp_path, baseline_backends, current_backends):
    base = resultgen.save(resultgen.run(baseline_backends, run_id="20250101T000000Z"), tmp_path)
    cur = resultgen.save(
        resultgen.run(current_backends, run_id="20250102T000000Z", created="2025-01-02T00:00:00+00:00"), tmp_path
    )
    return str(base), str(cur)


def row_of(comparison, backend, metric_key):
    return next(r for r in comparison.rows if r.backend == backend and r.metric.key == metric_key)


def lines_with(output: str, *words: str) -> list[str]:
    return [line for line in output.splitlines() if all(w in line for w in words)]


# --- the acceptance cases, through the CLI -------------------------------------------------------


def test_twenty_percent_throughput_drop_exits_1_and_marks_the_row(tmp_path):
    base, cur = write_pair(
        tmp_path,
        [resultgen.backend("torch", TIGHT), resultgen.backend("jax", TIGHT)],
        [resultgen.backend("torch", [t * 0.8 for t in TIGHT]), resultgen.backend("jax", TIGHT)],
    )
    result = invoke(base, cur)
    assert result.exit_code == 1, result.output
    marked = lines_with(result.output, "train throughput", "REGRESSION")
    assert len(marked) == 1 and "-20.0%" in marked[0] and "worse" in marked[0]
    assert "p=0.05 (Mann-Whitney, 3 vs 3)" in marked[0]
    assert "1 regression: torch train throughput" in result.output
    assert not lines_with(result.output, "eval throughput", "REGRESSION")


def test_two_percent_change_within_the_measured_spread_exits_0(tmp_path):
    noisy = (1000.0, 940.0, 1060.0)
    # Even with a threshold tighter than the change, overlapping repeats are not a regression.
    base, cur = write_pair(
        tmp_path, [resultgen.backend("torch", noisy)], [resultgen.backend("torch", [t * 0.98 for t in noisy])]
    )
    result = invoke(base, cur, "--fail-on", "train_throughput:-1%")
    assert result.exit_code == 0, result.output
    (line,) = lines_with(result.output, "train throughput")
    assert "same" in line and "within noise" in line and "-2.0%" in line
    assert "no regression" in result.output


def test_the_same_two_percent_with_a_tight_spread_is_caught(tmp_path):
    # The control for the test above: it is the noise, not the threshold, that saved it.
    base, cur = write_pair(
        tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", [t * 0.98 for t in TIGHT])]
    )
    assert invoke(base, cur, "--fail-on", "train_throughput:-1%").exit_code == 1
    assert invoke(base, cur).exit_code == 0  # and under the default -10% it is within the threshold


def test_malformed_file_exits_2_naming_the_file(tmp_path):
    base, _ = write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", TIGHT)])
    broken = tmp_path / "broken-run.json"
    broken.write_text('{"schema_version": 1, "run_id": ')
    result = invoke(base, str(broken))
    assert result.exit_code == 2
    assert "broken-run.json" in result.output and "not valid JSON" in result.output
    assert "Traceback" not in result.output


def test_structurally_wrong_file_exits_2_naming_the_file(tmp_path):
    base, _ = write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", TIGHT)])
    wrong = tmp_path / "wrong-shape.json"
    wrong.write_text(json.dumps({"schema_version": 1, "run_id": "x", "created": "now", "train": [1, 2], "data": {}}))
    result = invoke(base, str(wrong))
    assert result.exit_code == 2 and "wrong-shape.json" in result.output


def test_future_schema_exits_2_naming_the_file(tmp_path):
    base, cur = write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", TIGHT)])
    data = json.loads(Path(cur).read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    future = tmp_path / "from-the-future.json"
    future.write_text(json.dumps(data))
    result = invoke(str(future), base)
    assert result.exit_code == 2
    assert "from-the-future.json" in result.output and "schema version" in result.output


def test_missing_file_and_bad_options_exit_2(tmp_path):
    base, cur = write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", TIGHT)])
    assert invoke(base, str(tmp_path / "nope.json")).exit_code == 2
    bad = invoke(base, cur, "--fail-on", "train_throughput:+10%")
    assert bad.exit_code == 2 and "worse when it goes down" in bad.output
    assert invoke(base, cur, "--fail-on", "speed:-10%").exit_code == 2
    assert invoke(base, cur, "--metrics", "nonsense").exit_code == 2
    assert invoke(base, cur, "--alpha", "2").exit_code == 2


def test_store_names_latest_and_summary(tmp_path):
    write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", [t * 1.3 for t in TIGHT])])
    summary = tmp_path / "summary.md"
    summary.write_text("existing line\n")
    result = invoke("latest~1", "latest", "--results-dir", str(tmp_path), "--summary", str(summary))
    assert result.exit_code == 0, result.output
    (line,) = lines_with(result.output, "train throughput")
    assert "better" in line and "+30.0%" in line
    text = summary.read_text()
    assert text.startswith("existing line\n")  # appended, as $GITHUB_STEP_SUMMARY wants
    assert "No regression" in text and "✅ better" in text


# --- verdict logic -----------------------------------------------------------------------------


def test_each_metric_knows_its_good_direction(tmp_path):
    base = resultgen.run([resultgen.backend("torch", TIGHT, peak_rss_mb=600, first_epoch_s=2.0, accuracy=0.95)])
    cur = resultgen.run([resultgen.backend("torch", TIGHT, peak_rss_mb=780, first_epoch_s=1.2, accuracy=0.93)])
    comparison = compare_runs(base, cur)
    rss, first, acc = (row_of(comparison, "torch", k) for k in ("peak_rss_mb", "first_epoch_s", "test_accuracy"))
    assert rss.verdict == WORSE and rss.regression  # +30% memory, limit +20%
    assert first.verdict == BETTER and not first.regression  # faster first epoch
    assert acc.verdict == WORSE and acc.regression  # -2 pp, limit -1 pp
    assert math.isclose(acc.change, -0.02) and acc.metric.format_change(acc.change) == "-2.00 pp"


def test_accuracy_threshold_in_percentage_points():
    base = resultgen.run([resultgen.backend("torch", TIGHT, accuracy=0.950)])
    cur = resultgen.run([resultgen.backend("torch", TIGHT, accuracy=0.946)])
    assert not row_of(compare_runs(base, cur), "torch", "test_accuracy").regression  # -0.4 pp
    strict = parse_fail_on("accuracy:-0.3pp", compare.DEFAULT_THRESHOLDS)
    assert row_of(compare_runs(base, cur, strict), "torch", "test_accuracy").regression


def test_a_change_must_be_significantly_beyond_the_threshold_not_just_different():
    base = resultgen.run([resultgen.backend("torch", TIGHT)])
    # Every repeat is slower than every baseline repeat and the median is 11.5% down, but one
    # repeat is within 10% of the baseline: not convincingly beyond the -10% line.
    straddling = resultgen.run([resultgen.backend("torch", [870.0, 885.0, 905.0])])
    row = row_of(compare_runs(base, straddling), "torch", "train_throughput")
    assert row.relative_change == pytest.approx(-0.115) and row.verdict == SAME and not row.regression
    assert row.evidence == "within noise: p=0.35 (Mann-Whitney, 3 vs 3)"
    beyond = resultgen.run([resultgen.backend("torch", [870.0, 885.0, 895.0])])
    assert row_of(compare_runs(base, beyond), "torch", "train_throughput").regression


def test_single_runs_fall_back_to_the_threshold():
    base = resultgen.run([resultgen.backend("torch", [1000.0])])
    small, large = (resultgen.run([resultgen.backend("torch", [v])]) for v in (950.0, 850.0))
    assert row_of(compare_runs(base, small), "torch", "train_throughput").verdict == SAME
    row = row_of(compare_runs(base, large), "torch", "train_throughput")
    assert row.regression and row.evidence == "single values: threshold only"


def test_too_few_repeats_for_the_test_require_no_overlap():
    base = resultgen.run([resultgen.backend("torch", [1000.0, 1010.0])])
    separated = resultgen.run([resultgen.backend("torch", [800.0, 805.0])])
    overlapping = resultgen.run([resultgen.backend("torch", [700.0, 1020.0])])
    row = row_of(compare_runs(base, separated), "torch", "train_throughput")
    assert row.regression and "no overlap" in row.evidence
    row = row_of(compare_runs(base, overlapping), "torch", "train_throughput")
    assert row.verdict == SAME and "ranges overlap" in row.evidence


def test_off_shows_the_metric_but_never_fails():
    base = resultgen.run([resultgen.backend("torch", TIGHT, peak_rss_mb=600)])
    cur = resultgen.run([resultgen.backend("torch", TIGHT, peak_rss_mb=1200)])
    row = row_of(
        compare_runs(base, cur, parse_fail_on("peak_rss:off", compare.DEFAULT_THRESHOLDS)), "torch", "peak_rss_mb"
    )
    assert row.verdict == WORSE and not row.regression and row.threshold is None


def test_a_framework_that_now_fails_is_a_regression_and_a_missing_one_only_on_request():
    base = resultgen.run([resultgen.backend("torch", TIGHT), resultgen.backend("jax", TIGHT)])
    cur = resultgen.run(
        [
            resultgen.backend("torch", TIGHT[:2], status=STATUS_FAILED, reason="worker killed by SIGSEGV"),
            BackendResult(backend="jax", status=UNAVAILABLE, reason="jax is not installed"),
        ]
    )
    comparison = compare_runs(base, cur)
    torch_row, jax_row = row_of(comparison, "torch", "train_throughput"), row_of(comparison, "jax", "train_throughput")
    assert torch_row.verdict == FAILED and torch_row.regression and "SIGSEGV" in torch_row.evidence
    assert jax_row.verdict == MISSING and not jax_row.regression
    assert row_of(compare_runs(base, cur, fail_on_missing=True), "jax", "train_throughput").regression


def test_new_framework_is_listed_without_failing():
    comparison = compare_runs(
        resultgen.run([resultgen.backend("torch", TIGHT)]),
        resultgen.run([resultgen.backend("torch", TIGHT), resultgen.backend("tf", TIGHT)]),
    )
    assert row_of(comparison, "tf", "train_throughput").verdict == "new"
    assert not comparison.regressions


def test_differences_between_the_runs_are_warned_about():
    base = resultgen.run([resultgen.backend("torch", TIGHT)])
    cur = resultgen.run(
        [resultgen.backend("torch", TIGHT)], dataset="mnist", environment={**resultgen.ENVIRONMENT, "cores": 4}
    )
    warnings = compare_runs(base, cur).warnings
    assert any("data.dataset differs" in w for w in warnings)
    assert any("machine cores differs" in w for w in warnings)
    assert not compare_runs(base, base).warnings


def test_another_vector_extension_is_another_machine_unless_one_side_does_not_know():
    def on(extension):
        environment = {**resultgen.ENVIRONMENT, "cpu_vector_extension": extension}
        return resultgen.run([resultgen.backend("torch", TIGHT)], environment=environment)

    warnings = compare_runs(on("avx512f"), on("avx2")).warnings
    assert any("machine cpu_vector_extension differs: 'avx512f'" in w for w in warnings)
    assert not compare_runs(on(None), on("avx2")).warnings  # a file from before the field was recorded
    assert not compare_runs(on("avx2"), on("avx2")).warnings


# --- thresholds and the U test -------------------------------------------------------------------


def test_parse_fail_on():
    parsed = parse_fail_on("train_throughput:-10%,accuracy:-0.5pp,peak_rss:+20%, first_epoch:3")
    assert parsed == {
        "train_throughput": Threshold(10.0, "%"),
        "test_accuracy": Threshold(0.5, "pp"),
        "peak_rss_mb": Threshold(20.0, "%"),
        "first_epoch_s": Threshold(3.0, ""),
    }
    assert parse_fail_on("eval:5%", {"peak_rss_mb": None}) == {
        "peak_rss_mb": None,
        "eval_throughput": Threshold(5.0, "%"),
    }
    for bad in ("train_throughput", "train_throughput:fast", "peak_rss:-20%", "train_throughput:-1pp", "nope:1%"):
        with pytest.raises(UsageError):
            parse_fail_on(bad)


def test_threshold_is_strict_and_directional():
    metric = metric_for("train_throughput")
    ten = Threshold(10.0, "%")
    assert not ten.beyond(metric, 100.0, 90.0, toward_worse=True)
    assert ten.beyond(metric, 100.0, 89.9, toward_worse=True)
    assert not ten.beyond(metric, 100.0, 80.0, toward_worse=False)
    assert ten.describe(metric) == "-10%" and ten.describe(metric_for("peak_rss")) == "+10%"


def test_mann_whitney_exact_values():
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1.0)
    assert mann_whitney_greater([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(1 / 70)
    # U = 1 for 3 vs 3: two splits of 20 are at least as extreme.
    assert mann_whitney_greater([3, 5, 6], [1, 2, 4]) == pytest.approx(2 / 20)
    assert mann_whitney_greater([1, 1, 1], [1, 1, 1]) == pytest.approx(1.0)  # all ties: no evidence


def test_mann_whitney_agrees_with_scipy_when_it_is_there():
    scipy_stats = pytest.importorskip("scipy.stats")
    import random

    rng = random.Random(7)
    for n, m in ((3, 3), (4, 6), (7, 5), (25, 30)):
        a = [rng.gauss(1.0, 1.0) for _ in range(n)]
        b = [rng.gauss(0.0, 1.0) for _ in range(m)]
        method = "exact" if n + m < 20 else "asymptotic"
        expected = scipy_stats.mannwhitneyu(a, b, alternative="greater", method=method).pvalue
        assert mann_whitney_greater(a, b) == pytest.approx(expected, rel=1e-6)


def test_metric_lookup():
    assert metric_for("accuracy").key == "test_accuracy" and metric_for("peak_rss").key == "peak_rss_mb"
    generic = metric_for("total_s")
    assert generic.unit == "s" and not generic.bigger_is_better
    assert not metric_for("test_loss").bigger_is_better
    with pytest.raises(UsageError, match="unknown metric"):
        metric_for("speed")


# --- hostile input (issue 15, items 9 and 10) ------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.__setitem__("train", None), "train: expected an object, got null"),
        (
            lambda d: d["backends"][0]["repeats"].__setitem__(1, None),
            "backends[0].repeats[1]: expected an object, got null",
        ),
        (
            lambda d: d["backends"][0]["repeats"][0].__setitem__("eval_throughput", "8000"),
            "backends[0].repeats[0].eval_throughput: expected a number or null, got a string",
        ),
        (
            lambda d: d["backends"][0].__setitem__("settings", {"threads": json.loads("[" * 40 + "2" + "]" * 40)}),
            "nested more than 32 levels deep",
        ),
    ],
)
def test_wrongly_typed_result_files_exit_2_naming_the_file_and_the_field(tmp_path, mutate, field):
    base, cur = write_pair(tmp_path, [resultgen.backend("torch", TIGHT)], [resultgen.backend("torch", TIGHT)])
    data = json.loads(Path(cur).read_text())
    mutate(data)
    wrong = tmp_path / "wrong-types.json"
    wrong.write_text(json.dumps(data))
    for args in ((base, str(wrong)), (str(wrong), base)):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "wrong-types.json: " in result.output and field in result.output and "Traceback" not in result.output


def test_the_comparison_table_shows_hostile_names_and_reasons_literally():
    from rich.console import Console

    from cnnbench import report

    evil = resultgen.HOSTILE
    base = resultgen.run([resultgen.backend(evil, TIGHT)])
    slower = [t * 0.5 for t in TIGHT]
    cur = resultgen.run([resultgen.backend(evil, slower, status=STATUS_FAILED, reason=f"{evil} [bold]x[/bold]")])
    cur = replace(cur, environment={**cur.environment, "cpu": "[link=http://x]cpu[/link]"})
    comparison = compare_runs(base, cur, baseline_name="[/]base.json", current_name="cur\x1b[2J.json")
    renderables = [
        report.comparison_table(comparison),
        *report.comparison_warnings(comparison),
        report.comparison_outcome(comparison),
    ]
    plain = Console(file=io.StringIO(), width=600, color_system=None)
    plain.print(*renderables)
    text = plain.file.getvalue()
    assert "\x1b" not in text and "\u202e" not in text
    assert "cnnbench compare: [/]base.json -> cur\\x1b[2J.json" in text
    assert "[link=http://x]evil[/link] [/] \\x1b[31mred\\x1b[0m" in text and ":thumbs_up:" in text
    assert "[bold]x[/bold]" in text
    assert "warning: machine cpu differs: 'Test CPU' (baseline) vs '[link=http://x]cpu[/link]' (current)" in text
    assert f"regressions: {resultgen.HOSTILE[:31]}" in text
    terminal = Console(file=io.StringIO(), width=600, force_terminal=True, color_system="truecolor")
    terminal.print(*renderables)
    assert "\x1b]8;" not in terminal.file.getvalue()  # no OSC 8 hyperlink


def test_a_baseline_from_before_the_evaluation_warm_up_is_a_configuration_change() -> None:
    from cnnbench import results

    current = resultgen.full_run()
    document = json.loads(results.dumps(current))
    del document["train"]["eval_warmup"]  # a file written before the warm-up pass
    older = results.loads(json.dumps(document))
    changes = compare.config_changes(older, current)
    assert changes == ["train.eval_warmup differs: False (baseline) vs True (current)"]
