"""cnnbench history: a metric across stored runs, as a table and a PNG."""

from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

import resultgen
from cnnbench import history
from cnnbench.cli import cli
from cnnbench.compare import metric_for
from cnnbench.errors import UsageError
from cnnbench.results import SCHEMA_VERSION

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def store(tmp_path):
    """Five MNIST-like runs saved out of order, jax missing from one, plus one CIFAR run."""
    folder = tmp_path / "results"
    torch = [2000, 2100, 1900, 2150, 2200]
    jax = [1100, 1150, None, 1200, 1190]
    for day in (3, 1, 5, 2, 4):
        i = day - 1
        backends = [resultgen.backend("torch", [torch[i] * f for f in (0.98, 1.0, 1.03)], accuracy=0.95 + i / 100)]
        if jax[i]:
            backends.append(resultgen.backend("jax", [jax[i] * f for f in (0.97, 1.0, 1.01)], accuracy=0.94 + i / 100))
        env = {**resultgen.ENVIRONMENT, "git_commit": f"c0ffee{day}0000"}
        run = resultgen.run(
            backends, run_id=f"2025010{day}T120000Z", created=f"2025-01-0{day}T12:00:00+00:00", environment=env
        )
        resultgen.save(run, folder)
    cifar = resultgen.run(
        [resultgen.backend("torch", [500.0])],
        run_id="20250106T120000Z",
        created="2025-01-06T12:00:00+00:00",
        dataset="synthetic-cifar",
    )
    resultgen.save(cifar, folder)
    return folder


def invoke(*args):
    return CliRunner().invoke(cli, ["history", *args])


def test_rows_are_ordered_by_time_and_filtered_to_one_dataset(store):
    runs, skipped = history.load_runs(history.store_files(store))
    assert not skipped and len(runs) == 6
    runs, dataset = history.select_dataset(runs, "synthetic")
    names, rows = history.history_rows(runs, metric_for("train_throughput"))
    assert dataset == "synthetic" and names == ["torch", "jax"]
    assert [run.result.run_id for run, _ in rows] == [f"2025010{d}T120000Z" for d in range(1, 6)]
    assert [round(points["torch"].median) for _, points in rows] == [2000, 2100, 1900, 2150, 2200]
    assert "jax" not in rows[2][1]
    assert rows[0][1]["torch"].q1 < rows[0][1]["torch"].median < rows[0][1]["torch"].q3


def test_history_command_table_and_plot(store, tmp_path):
    plot = tmp_path / "plots" / "train.png"
    result = invoke("--results-dir", str(store), "--dataset", "synthetic", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "T120000Z" in line]
    assert len(lines) == 5 and "20250101T120000Z" in lines[0] and "2,000" in lines[0]
    assert "c0ffee1" in lines[0] and "-" in lines[2].split("│")[-2]  # jax absent on day 3
    width, height = png_size(plot)
    assert width >= 800 and height >= 500


def test_newest_dataset_is_the_default_and_last_limits(store):
    result = invoke("--results-dir", str(store))
    assert result.exit_code == 0 and "synthetic-cifar" in result.output and "20250106T120000Z" in result.output
    assert "20250101T120000Z" not in result.output
    result = invoke("--results-dir", str(store), "--dataset", "synthetic", "--last", "2")
    assert "20250105T120000Z" in result.output and "20250103T120000Z" not in result.output


def test_accuracy_history_in_percent(store, tmp_path):
    result = invoke(
        "--results-dir",
        str(store),
        "--dataset",
        "synthetic",
        "--metric",
        "accuracy",
        "--plot",
        str(tmp_path / "acc.png"),
    )
    assert result.exit_code == 0, result.output
    assert "95.00%" in result.output and "99.00%" in result.output
    assert png_size(tmp_path / "acc.png")[0] > 0


def test_unreadable_files_in_the_store_are_skipped_with_the_reason(store):
    (store / "20250107T120000Z_broken.json").write_text("{not json")
    future = store / "20250108T120000Z_future.json"
    future.write_text(f'{{"schema_version": {SCHEMA_VERSION + 1}}}')
    result = invoke("--results-dir", str(store), "--dataset", "synthetic")
    assert result.exit_code == 0
    assert "20250107T120000Z_broken.json: not valid JSON" in result.output
    assert "20250108T120000Z_future.json: schema version" in result.output


def test_bad_input_exits_2(store, tmp_path):
    bad = tmp_path / "named.json"
    bad.write_text("{}")
    result = invoke(str(bad))
    assert result.exit_code == 2 and "named.json" in result.output
    assert invoke("--results-dir", str(tmp_path / "empty")).exit_code == 2
    assert invoke("--results-dir", str(store), "--metric", "speed").exit_code == 2
    assert invoke("--results-dir", str(store), "--dataset", "imagenet").exit_code == 2
    assert invoke("--results-dir", str(store), "--last", "0").exit_code == 2


def test_explicit_runs(store):
    files = sorted(store.glob("2025010[12]*.json"))
    result = invoke(*map(str, files), "--metric", "peak_rss")
    assert result.exit_code == 0 and "peak memory" in result.output
    assert "20250101T120000Z" in result.output and "20250103T120000Z" not in result.output


# --- hostile input (issue 15, items 9 and 10) ------------------------------------------------------


def hostile_store(folder):
    evil = resultgen.HOSTILE
    env = {**resultgen.ENVIRONMENT, "git_commit": "[link=http://x]c0ffee[/link]\x1b[31m"}
    for day in (1, 2):
        run = resultgen.run(
            [resultgen.backend(evil, [1000.0 * day, 1010.0 * day]), resultgen.backend("$x$", [900.0])],
            run_id=f"2025010{day}T120000Z",
            created=f"2025-01-0{day}T12:00:00+00:00",
            environment=env,
            dataset="synthetic[/]",
        )
        resultgen.save(run, folder, name=f"2025010{day}T120000Z_[red]host[link=x].json")
    return folder


def test_the_history_table_and_plot_show_hostile_names_literally(tmp_path):
    import io

    from rich.console import Console

    from cnnbench import report

    store = hostile_store(tmp_path / "results")
    runs, skipped = history.load_runs(history.store_files(store))
    assert not skipped
    metric = metric_for("train_throughput")
    names, rows = history.history_rows(runs, metric)
    plain = Console(file=io.StringIO(), width=600, color_system=None)
    plain.print(report.history_table(names, rows, metric, "synthetic[/]"))
    text = plain.file.getvalue()
    assert "\x1b" not in text and "\u202e" not in text
    assert "on synthetic[/]: median" in text and "[link=http://x]evil[/link] [/] \\x1b[31mred" in text
    assert "20250101T120000Z_[red]host[link=x].json" in text and "[link=http://x]c0ffee[/link]\\x1b[31m" in text
    terminal = Console(file=io.StringIO(), width=600, force_terminal=True)
    terminal.print(report.history_table(names, rows, metric, "synthetic[/]"))
    assert "\x1b]8;" not in terminal.file.getvalue()
    # In a plot a name is matplotlib text: '$\frac$' would be a formula that cannot be drawn.
    assert png_size(history.plot_history(runs, metric, tmp_path / "history.png"))[0] > 0


def test_plots_of_runs_take_hostile_names(tmp_path):
    from cnnbench.plots import plot_runs

    run = resultgen.full_run(resultgen.HOSTILE)
    assert png_size(plot_runs([("$\\frac$ [/]", run)], tmp_path / "runs.png"))[0] > 0


def test_a_wrongly_typed_file_is_skipped_naming_the_field_or_exits_2_when_named(store):
    good = sorted(store.glob("20250101*.json"))[0]
    data = json.loads(good.read_text())
    data["backends"][0]["repeats"][1] = None
    wrong = store / "20250107T120000Z_wrong.json"
    wrong.write_text(json.dumps(data))
    result = invoke("--results-dir", str(store), "--dataset", "synthetic")
    assert result.exit_code == 0, result.output
    assert "20250107T120000Z_wrong.json: backends[0].repeats[1]: expected an object, got null" in result.output
    named = invoke(str(wrong))
    assert named.exit_code == 2 and "backends[0].repeats[1]: expected an object, got null" in named.output
    assert "Traceback" not in named.output


# --- one series per configuration and machine (issue 17) ------------------------------------------


@pytest.fixture
def mixed_store(tmp_path):
    """Six runs: threads 2, 2, then 1 (a --threads 1 run), 2 again, then two on a 4-core machine."""
    from dataclasses import replace

    folder = tmp_path / "mixed"
    for day in range(1, 7):
        run = resultgen.run(
            [resultgen.backend("torch", [1000.0 + day, 1010.0, 990.0])],
            run_id=f"2025010{day}T120000Z",
            created=f"2025-01-0{day}T12:00:00+00:00",
            environment={**resultgen.ENVIRONMENT, "cores": 4 if day >= 5 else 2},
        )
        if day == 3:
            run = replace(run, train=replace(run.train, threads=1))
        resultgen.save(run, folder)
    return folder


def test_runs_split_into_series_by_configuration_and_machine(mixed_store):
    runs, _ = history.load_runs(history.store_files(mixed_store))
    series = history.split_series(runs)
    assert [[r.result.run_id[7] for r in s.runs] for s in series] == [["1", "2", "4"], ["3"], ["5", "6"]]
    assert [s.label for s in series] == [
        "series 1: train.threads=2, machine.cores=2",
        "series 2: train.threads=1, machine.cores=2",
        "series 3: train.threads=2, machine.cores=4",
    ]
    assert history.select_series(series, "latest") == [series[2]]
    assert history.select_series(series, "2") == [series[1]]
    with pytest.raises(UsageError, match="from 1 to 3"):
        history.select_series(series, "4")
    alone = history.split_series(runs[:2])
    assert len(alone) == 1 and alone[0].label == "series 1"


def test_history_command_shows_each_series_apart_and_plots_them(mixed_store, tmp_path):
    plot = tmp_path / "series.png"
    result = invoke("--results-dir", str(mixed_store), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    out = result.output
    first, second = out.index("series 1: train.threads=2"), out.index("series 2: train.threads=1")
    assert first < out.index("20250104T120000Z") < second
    assert out.index("series 2: train.threads=1") < out.index("20250103T120000Z") < out.index("series 3:")
    assert "3 series in all" in out and png_size(plot)[0] >= 800
    latest = invoke("--results-dir", str(mixed_store), "--series", "latest")
    assert latest.exit_code == 0 and "20250106T120000Z" in latest.output and "20250103T120000Z" not in latest.output
    bad = invoke("--results-dir", str(mixed_store), "--series", "nine")
    assert bad.exit_code == 2 and "--series 'nine'" in bad.output
