"""Exports: pytest-benchmark JSON (checked by pytest-benchmark's compare), github-action-benchmark, markdown, csv."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

import resultgen
from cnnbench import exporters
from cnnbench.cli import cli
from cnnbench.compare import compare_runs
from cnnbench.results import FAILED, UNAVAILABLE, BackendResult


def sample_run(scale: float = 1.0, run_id: str = "20250101T000000Z"):
    return resultgen.run(
        [
            resultgen.backend(
                "torch", [2000 * scale, 2050 * scale, 1980 * scale], eval_throughput=8000 * scale, accuracy=0.97
            ),
            resultgen.backend(
                "jax", [1100 * scale, 1150 * scale, 1120 * scale], eval_throughput=6000 * scale, accuracy=0.96
            ),
            BackendResult(
                backend="tf", framework="TensorFlow", status=UNAVAILABLE, reason="tensorflow is not installed"
            ),
        ],
        run_id=run_id,
    )


def test_pytest_benchmark_mapping():
    doc = exporters.to_pytest_benchmark(sample_run())
    names = sorted(b["name"] for b in doc["benchmarks"])
    assert names == sorted(
        f"{kind}[{fw}]" for kind in ("train_step", "eval_batch", "first_epoch") for fw in ("torch", "jax")
    )
    train = next(b for b in doc["benchmarks"] if b["name"] == "train_step[torch]")
    # One round per steady-state epoch (2 per repeat), in seconds per step of 100 samples.
    assert train["stats"]["rounds"] == 6 and train["stats"]["iterations"] == 30
    assert train["stats"]["median"] == pytest.approx(100 / 2000, rel=0.02)
    assert train["extra_info"]["train_samples_per_s"] == pytest.approx(2000)
    assert train["extra_info"]["test_accuracy"] == pytest.approx(0.97)
    eval_batch = next(b for b in doc["benchmarks"] if b["name"] == "eval_batch[jax]")
    assert eval_batch["stats"]["median"] == pytest.approx(1000 / 6000)
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(doc)


def test_pytest_benchmark_stats_are_computed_like_pytest_benchmark():
    pytest_benchmark = pytest.importorskip("pytest_benchmark")
    pb_stats = pytest.importorskip("pytest_benchmark.stats")
    version = tuple(int(part) for part in pytest_benchmark.__version__.split(".")[:3] if part.isdigit())
    for data in (
        [0.3],
        [0.5, 0.1],
        [0.2, 0.4, 0.9, 0.1, 0.25],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0],
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
    ):
        reference = pb_stats.Stats()
        for value in data:
            reference.update(value)
        ours = exporters.pytest_benchmark_stats(data)
        expected_stats = reference.as_dict()
        # hd15iqr is the highest datum within the upper Tukey fence. pytest-benchmark before 5.3.1 returned the
        # first datum above it (fixed in 5.3.1, its #320), so the older versions are not the reference for it.
        fence = expected_stats["q3"] + 1.5 * expected_stats["iqr"]
        assert ours["hd15iqr"] == max(v for v in data if v <= fence), data
        if version < (5, 3, 1):
            del expected_stats["hd15iqr"]
        for field, expected in expected_stats.items():
            assert ours[field] == pytest.approx(expected), (data, field)


def test_pytest_benchmark_compare_accepts_the_export(tmp_path):
    """pytest-benchmark's own compare command, in a subprocess, on two exported runs."""
    pytest.importorskip("pytest_benchmark")
    runner = CliRunner()
    for name, scale in (("0001_base.json", 1.0), ("0002_head.json", 0.8)):
        stored = resultgen.save(sample_run(scale), tmp_path / "store", name=f"cnnbench-{name}")
        result = runner.invoke(cli, ["export", str(stored), "--format", "pytest-benchmark", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_benchmark",
            "compare",
            "0001_base.json",
            "0002_head.json",
            "--columns=median,iqr,ops,rounds",
            "--group-by=name",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Failed to load" not in output  # pytest-benchmark only warns on files it cannot read
    for name in ("train_step[torch]", "eval_batch[jax]", "first_epoch[torch]"):
        assert f"{name} (0001_base)" in output and f"{name} (0002_head)" in output, output
    # The slower run shows as slower: its row carries the larger median relative to the best.
    slower = next(line for line in output.splitlines() if line.startswith("train_step[torch] (0002_head)"))
    assert "(1.25)" in slower


def test_github_action_benchmark_pytest_tool_fields():
    """What the action's ``pytest`` extractor reads: fullname, stats.ops/stddev/mean/rounds."""
    for bench in exporters.to_pytest_benchmark(sample_run())["benchmarks"]:
        assert isinstance(bench["fullname"], str) and "::" in bench["fullname"]
        stats = bench["stats"]
        assert stats["ops"] == pytest.approx(1 / stats["mean"])
        assert all(isinstance(stats[k], (int, float)) for k in ("ops", "stddev", "mean", "rounds"))


def test_github_action_benchmark_custom_formats():
    bigger = exporters.to_github_action_benchmark(sample_run(), "bigger")
    smaller = exporters.to_github_action_benchmark(sample_run(), "smaller")
    assert {e["name"] for e in bigger} == {
        f"{fw} {m}" for fw in ("torch", "jax") for m in ("train_throughput", "eval_throughput", "test_accuracy")
    }
    assert {e["name"] for e in smaller} == {
        f"{fw} {m}" for fw in ("torch", "jax") for m in ("first_epoch_s", "peak_rss_mb")
    }
    for entry in bigger + smaller:
        assert set(entry) == {"name", "unit", "value", "range", "extra"}
        assert isinstance(entry["value"], float) and entry["unit"]
    accuracy = next(e for e in bigger if e["name"] == "torch test_accuracy")
    assert accuracy["value"] == pytest.approx(97.0) and accuracy["unit"] == "%"
    json.dumps(bigger)  # serialisable as the action reads it
    with pytest.raises(Exception, match="direction"):
        exporters.to_github_action_benchmark(sample_run(), "sideways")


def test_markdown_run_summary():
    failed = resultgen.backend("keras", [900.0], status=FAILED, reason="worker killed | by SIGKILL")
    text = exporters.run_markdown(resultgen.run([*sample_run().backends, failed]))
    assert text.startswith("### cnnbench run `20250101T000000Z`")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 4  # header, separator, four frameworks
    assert any(line.startswith("| torch | 1.0 | 2,000 ± 18 | 8,000 ± 0 |") for line in table), table
    assert "unavailable: tensorflow is not installed" in text
    assert "killed \\| by SIGKILL" in text  # a pipe in a reason must not break the table


def test_comparison_markdown_leads_with_the_outcome():
    comparison = compare_runs(sample_run(), sample_run(scale=0.8), baseline_name="base.json", current_name="cur.json")
    text = exporters.comparison_markdown(comparison)
    lines = text.splitlines()
    assert lines[0] == "### cnnbench compare: `base.json` → `cur.json`"
    assert lines[2].startswith("**4 regressions**: torch train throughput, torch eval throughput")
    assert (
        "| torch | train throughput | 2,000 ± 18 | 1,600 ± 14 | -400 samples/s | -20.0% | -10% | **❌ worse** |" in text
    )
    clean = exporters.comparison_markdown(compare_runs(sample_run(), sample_run()))
    assert "**No regression.**" in clean and "WARNING" not in clean


def test_csv_has_one_row_per_framework_and_repeat():
    rows = list(csv.DictReader(io.StringIO(exporters.to_csv(sample_run()))))
    assert len(rows) == 3 + 3 + 1
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    assert [r["repeat"] for r in torch_rows] == ["1", "2", "3"]
    assert float(torch_rows[1]["train_throughput"]) == pytest.approx(2050)
    assert float(torch_rows[0]["first_epoch_s"]) == pytest.approx(2.0)
    tf_row = next(r for r in rows if r["backend"] == "tf")
    assert tf_row["status"] == UNAVAILABLE and tf_row["train_throughput"] == ""


def test_export_command(tmp_path):
    path = resultgen.save(sample_run(), tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "latest", "--results-dir", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 0 and result.output.startswith("run_id,created,dataset,backend")
    result = runner.invoke(cli, ["export", str(path), "-F", "github-action-benchmark", "--direction", "smaller"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["unit"] in ("s", "MB")
    assert runner.invoke(cli, ["export", str(path), "--format", "yaml"]).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = runner.invoke(cli, ["export", str(bad), "--format", "csv"])
    assert result.exit_code == 2 and "bad.json" in result.output


#: resultgen.HOSTILE as exports write it: the escape sequences and the bidi override removed, the rest kept.
STRIPPED = "[link=http://x]evil[/link] [/] red osc abc [md](http://x) $\\frac$ :thumbs_up:"


def hostile_run():
    """The sample run with a backend, a reason and machine strings an attacker chose."""
    run = sample_run()
    evil = replace(
        run.backends[0],
        backend=resultgen.HOSTILE,
        framework=resultgen.HOSTILE,
        framework_version="1.0\x1b[2J",
        device="cpu\u202e",
        status=FAILED,
        reason=resultgen.HOSTILE,
    )
    return replace(
        run,
        backends=(evil, *run.backends[1:]),
        data=replace(run.data, dataset="mnist\x1b]0;title\x07"),
        environment={**run.environment, "cpu": "\x9b31mCPU", "git_commit": "abc`def\x1b[0m"},
    )


def no_control_characters(text: str) -> bool:
    return not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2066" for c in text)


def json_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def test_exports_strip_escape_sequences_and_control_characters():
    run = hostile_run()
    for fmt in ("pytest-benchmark", "github-action-benchmark"):
        for direction in exporters.DIRECTIONS:
            document = json.loads(exporters.export(run, fmt, direction))
            strings = list(json_strings(document))
            assert [text for text in strings if not no_control_characters(text)] == []
            assert not any("31m" in text or "title" in text for text in strings)  # whole sequences go, not just ESC
    names = {b["name"] for b in json.loads(exporters.export(run, "pytest-benchmark"))["benchmarks"]}
    assert f"train_step[{STRIPPED}]" in names
    text = exporters.export(run, "csv")
    assert no_control_characters(text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["backend"] == STRIPPED and rows[0]["dataset"] == "mnist"
    assert rows[0]["framework_version"] == "1.0" and rows[0]["device"] == "cpu"
    markdown = exporters.export(run, "markdown")
    assert no_control_characters(markdown)
    assert "\\[link=http://x\\]evil\\[/link\\] \\[/\\] red osc abc \\[md\\](http://x)" in markdown  # no markdown link
    assert "### cnnbench run `20250101T000000Z`" in markdown and "commit ``abc`def``" in markdown


def test_comparison_markdown_escapes_names_reasons_and_warnings():
    base, cur = sample_run(), hostile_run()
    comparison = compare_runs(base, cur, baseline_name="a`b.json", current_name="\x1b[31mc.json")
    text = exporters.comparison_markdown(comparison)
    assert no_control_characters(text)
    assert text.splitlines()[0] == "### cnnbench compare: ``a`b.json`` → `c.json`"
    assert "\\[link=http://x\\]evil" in text and "[link=http://x]" not in text.replace("\\[link", "")
