"""Result files: the JSON round trip, validation on load (types, required fields, limits) and safe rendering."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import types
import typing
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import resultgen
from cnnbench import exporters, history, report, results
from cnnbench.compare import compare_runs, metric_for
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import ResultFileError, UsageError
from cnnbench.results import BackendResult, EpochRecord, Measurement, Phases, RunResult


def sample_result() -> RunResult:
    measurement = Measurement(
        epochs=(EpochRecord(1, 0.3, 12.5, 60000, 4800.0, 0.97), EpochRecord(2, 0.1, 10.0, 60000, 6000.0)),
        phases=Phases(import_s=1.2, build_s=0.3, first_epoch_s=12.5, train_s=22.5, eval_s=1.0, total_s=26.0),
        train_throughput=6000.0,
        train_throughput_samples=(6000.0,),
        eval_throughput=10000.0,
        test_accuracy=0.985,
        test_loss=0.05,
        peak_rss_mb=900.0,
    )
    row = BackendResult(
        "torch",
        "PyTorch",
        "2.13.0",
        "cnnbench",
        "cpu",
        3_255_914,
        settings={"threads": 2},
        repeats=(measurement, measurement),
    )
    return RunResult(
        "20261128T000000Z",
        "2026-11-28T00:00:00+00:00",
        TrainConfig(epochs=2, threads=2),
        DataConfig(dataset="mnist", options={"a": 1}),
        (row,),
        {"cpu": "x"},
    )


def test_round_trip_gives_equal_objects(tmp_path):
    original = sample_result()
    path = results.save(original, tmp_path)
    loaded = results.load(path)
    assert loaded == original
    assert isinstance(loaded.backends[0].repeats[0].epochs, tuple)
    assert loaded.backends[0].median("train_throughput") == 6000.0
    assert loaded.backends[0].median("first_epoch_s") == 12.5


def test_future_schema_and_malformed_files_are_usage_errors_naming_the_file(tmp_path):
    future = tmp_path / "future.json"
    data = json.loads(results.dumps(sample_result()))
    data["schema_version"] = results.SCHEMA_VERSION + 1
    future.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=r"future\.json: schema version"):
        results.load(future)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match=r"broken\.json: not valid JSON"):
        results.load(broken)
    with pytest.raises(UsageError, match=r"missing\.json"):
        results.load(tmp_path / "missing.json")


def test_save_is_atomic_and_resolve_finds_latest(tmp_path):
    first = results.save(sample_result(), tmp_path, "20260101T000000Z_a.json")
    second = results.save(sample_result(), tmp_path, "20260102T000000Z_a.json")
    assert not list(tmp_path.glob(".tmp-*"))
    assert results.resolve("latest", tmp_path) == second
    assert results.resolve("latest~1", tmp_path) == first
    assert results.resolve("20260101T000000Z_a", tmp_path) == first
    with pytest.raises(UsageError):
        results.resolve("latest~5", tmp_path)


# --- validation on load (issue 15, item 10) ------------------------------------------------------


def valid_document() -> dict:
    return json.loads(results.dumps(resultgen.full_run()))


def load_mutated(mutate, source: str = "results/x.json") -> RunResult:
    document = valid_document()
    mutate(document)
    return results.loads(json.dumps(document), source)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["backends"][0]["repeats"].__setitem__(1, None),
            "backends[0].repeats[1]: expected an object, got null",
        ),
        (lambda d: d.__setitem__("train", None), "train: expected an object, got null"),
        (
            lambda d: d["backends"][0]["repeats"][0].__setitem__("train_throughput", "2000"),
            "backends[0].repeats[0].train_throughput: expected a number or null, got a string",
        ),
        (lambda d: d["train"].__setitem__("epochs", 2.5), "train.epochs: expected an integer, got 2.5"),
        (lambda d: d["backends"][0].__setitem__("status", None), "backends[0].status: expected a string, got null"),
        (lambda d: d["backends"][0].pop("backend"), "backends[0].backend: required field is missing"),
        (lambda d: d.pop("run_id"), "run_id: required field is missing"),
        (
            lambda d: d["backends"][0]["repeats"][0]["epochs"][0].__setitem__("seconds", True),
            "backends[0].repeats[0].epochs[0].seconds: expected a number, got a boolean",
        ),
        (
            lambda d: d["backends"][0]["repeats"][2].__setitem__("eval_throughput", float("inf")),
            "backends[0].repeats[2].eval_throughput: expected a finite number, got Infinity",
        ),
        (lambda d: d["train"].__setitem__("batch_size", 0), "train.batch_size: must be at least 1, got 0"),
        (
            lambda d: d["backends"][0].__setitem__("parameters", 10**30),
            "backends[0].parameters: integer out of range (beyond +-2**53), got an integer of 31 digits",
        ),
        (
            lambda d: d["environment"].__setitem__("git_commit", ["abc"]),
            "environment.git_commit: expected a string or null, got a list",
        ),
        (
            lambda d: d["environment"]["matmul_ceiling"].__setitem__("gflops", "fast"),
            "environment.matmul_ceiling.gflops: expected a number or null, got a string",
        ),
        (
            lambda d: d["backends"][0]["settings"].__setitem__("hosts", "2"),
            "backends[0].settings.hosts: expected an integer, got a string",
        ),
        (
            lambda d: d["train"]["backend_options"].__setitem__("tf.xla", 1),
            'train.backend_options["tf.xla"]: expected a string, got 1',
        ),
        (lambda d: d.__setitem__("schema_version", True), "schema_version: expected an integer, got a boolean"),
    ],
)
def test_wrong_types_name_the_file_and_the_field(mutate, message):
    with pytest.raises(ResultFileError) as caught:
        load_mutated(mutate)
    assert str(caught.value) == f"results/x.json: {message}"
    assert caught.value.exit_code == 2 and isinstance(caught.value, UsageError)


def test_a_file_from_before_the_evaluation_warm_up_says_its_first_pass_was_timed():
    document = json.loads(results.dumps(sample_result()))
    assert document["train"]["eval_warmup"] is True  # what a run writes now
    del document["train"]["eval_warmup"]
    older = results.loads(json.dumps(document))
    assert older.train.eval_warmup is False
    assert results.loads(results.dumps(sample_result())).train.eval_warmup is True


def test_the_loss_of_a_diverged_run_may_be_nan():
    loaded = load_mutated(lambda d: d["backends"][0]["repeats"][0]["epochs"][0].__setitem__("train_loss", float("nan")))
    assert math.isnan(loaded.backends[0].repeats[0].epochs[0].train_loss)


def test_unknown_keys_are_ignored_and_a_full_run_round_trips():
    original = resultgen.full_run()
    document = json.loads(results.dumps(original))
    document["added_in_a_later_version"] = {"x": [1, 2]}
    document["backends"][0]["repeats"][0]["new_metric"] = 1.5
    assert results.loads(json.dumps(document)) == original


def test_nesting_size_and_encoding_limits(tmp_path):
    nested: object = 1
    for _ in range(results.MAX_DEPTH + 5):
        nested = [nested]
    deep = r"^results/x\.json: backends\[0\]\.settings\.threads(\[0\])+: nested more than 32"
    with pytest.raises(ResultFileError, match=deep):
        load_mutated(lambda d: d["backends"][0]["settings"].__setitem__("threads", nested))
    with pytest.raises(ResultFileError, match=r"^deep\.json: nested more than 32 levels deep$"):
        results.loads("[" * 200_000 + "]" * 200_000, "deep.json")
    with pytest.raises(ResultFileError, match=r"^big.json: not usable JSON \(Exceeds the limit"):
        results.loads('{"schema_version": 1, "run_id": ' + "7" * 5000 + "}", "big.json")
    with pytest.raises(ResultFileError, match=r"^huge.json: larger than 64 MiB"):
        results.loads(b" " * (results.MAX_FILE_BYTES + 1), "huge.json")
    with pytest.raises(ResultFileError, match=r"^x.json: run_id: a string holds an unpaired surrogate"):
        results.loads('{"schema_version": 1, "run_id": "\\ud800"}', "x.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"schema_version": 1, "run_id": "\xff\xfe"}')
    with pytest.raises(ResultFileError, match=r"binary.json: not UTF-8 text \(byte 0xff at offset 33\)"):
        results.load(binary)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + results.dumps(sample_result()).encode())
    assert results.load(bom) == sample_result()


def test_every_annotation_in_the_schema_is_one_the_loader_checks():
    """A new field type (an Enum, a set...) must get a check here, not slip through or crash on load."""

    def leaves(tp: typing.Any, seen: set) -> typing.Iterator[typing.Any]:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            yield from leaves(typing.get_args(tp)[0], seen)
        elif origin in (typing.Union, types.UnionType, tuple, list, dict):
            for arg in typing.get_args(tp):
                if arg is not Ellipsis and arg is not type(None):
                    yield from leaves(arg, seen)
        elif dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
            if tp not in seen:
                seen.add(tp)
                yield tp
                for name, hint in typing.get_type_hints(tp, include_extras=True).items():
                    yield from leaves(results.FIELD_TYPES.get((tp, name), hint), seen)
        else:
            yield tp

    found = list(leaves(RunResult, set()))
    assert DataConfig in found and TrainConfig in found and str in found
    for tp in found:
        if tp is typing.Any:
            continue
        with pytest.raises(results._Invalid):
            results._check(tp, object(), "probe")


# Values that have broken readers before: markup, escapes, formulas, odd numbers, unpaired surrogates.
TRICKY = st.sampled_from(
    [
        resultgen.HOSTILE,
        "[/]",
        "",
        "latest",
        "ok",
        "failed",
        "FAIL",
        "\ud800",
        "$\\frac$",
        0,
        -1,
        1,
        2**53 + 1,
        10**400,
        0.0,
        -0.0,
        1e308,
        -1e308,
        1e-320,
        float("nan"),
        float("inf"),
        float("-inf"),
    ]
)
KEYS = st.text(max_size=8) | TRICKY.filter(lambda value: isinstance(value, str))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | TRICKY,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
SLOW_OK = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])


def read_everything(result: RunResult) -> None:
    """What compare, export, history and run do with a loaded result: none of it may raise."""
    for fmt in exporters.FORMATS:
        for direction in exporters.DIRECTIONS:
            exporters.export(result, fmt, direction)
    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    report.print_result(result, console)
    for baseline in (result, resultgen.full_run()):
        comparison = compare_runs(baseline, result, baseline_name="base.json", current_name="cur.json")
        exporters.comparison_markdown(comparison)
        console.print(report.comparison_table(comparison))
        console.print(*report.comparison_warnings(comparison), report.comparison_outcome(comparison))
    runs = [history.StoredRun(Path("20250101T000000Z_x.json"), result)]
    for key in ("train_throughput", "accuracy", "total_s"):
        metric = metric_for(key)
        names, rows = history.history_rows(runs, metric)
        console.print(report.history_table(names, rows, metric, result.data.dataset))
        assert [run.label for run, _ in rows]


def paths_of(value, here=()):
    yield here
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, (*here, index))


@st.composite
def mutated_documents(draw) -> str:
    """A valid result file with one to three fields replaced, removed or added."""
    document = valid_document()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths_of(document))))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path:
            document = draw(JSON_VALUES) if action == "replace" else document
        elif action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "remove":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.text(max_size=8))] = draw(JSON_VALUES)
            elif isinstance(target, list):
                copied = copy.deepcopy(target[0]) if target else None  # e.g. one more repeat, then mutated later
                target.append(draw(JSON_VALUES) if draw(st.booleans()) else copied)
        if not isinstance(document, dict):
            break
    return json.dumps(document)


def load_or_error(text: str, source: str) -> RunResult | ResultFileError:
    """The loaded result, or the error: one line that starts with the file name (anything else raises)."""
    try:
        return results.loads(text, source)
    except ResultFileError as exc:
        message = str(exc)
        assert message.startswith(f"{source}: ") and "\n" not in message, message
        return exc


@SLOW_OK
@given(mutated_documents())
def test_mutated_result_files_give_the_clear_error_or_results_every_reader_handles(text):
    loaded = load_or_error(text, "mutated.json")
    if isinstance(loaded, RunResult):
        read_everything(loaded)


@SLOW_OK
@given(JSON_VALUES | st.dictionaries(st.text(max_size=10), JSON_VALUES).map(lambda d: {**d, "schema_version": 1}))
def test_random_json_gives_the_clear_error(value):
    loaded = load_or_error(json.dumps(value), "random.json")
    if isinstance(loaded, RunResult):
        read_everything(loaded)


@SLOW_OK
@given(st.binary(max_size=300) | st.binary(max_size=60).map(lambda b: b'{"schema_version": 1, "run_id": ' + b))
def test_random_bytes_give_the_clear_error(data):
    with pytest.raises(ResultFileError, match=r"^random\.json: "):
        results.loads(data, "random.json")


def test_a_hostile_backend_name_renders_literally_in_the_results_table():
    run = resultgen.full_run()
    hostile = replace(run, backends=(replace(run.backends[0], backend=resultgen.HOSTILE, reason=resultgen.HOSTILE),))
    closing = replace(run.backends[1], backend="[/]", reason="[/] \x1b[2J")
    hostile = replace(hostile, backends=(*hostile.backends, closing))
    plain = Console(file=io.StringIO(), width=400, color_system=None)
    report.print_result(hostile, plain)
    text = plain.file.getvalue()
    assert "[link=http://x]evil[/link] [/]" in text and "\\x1b[31mred" in text and "\\u202eabc" in text
    assert ":thumbs_up:" in text and "\x1b" not in text and "\u202e" not in text
    assert "[/] \\x1b[2J" in text
    terminal = Console(file=io.StringIO(), width=400, force_terminal=True, color_system="truecolor")
    report.print_result(hostile, terminal)
    assert "\x1b]8;" not in terminal.file.getvalue()  # no OSC 8 hyperlink reaches the terminal
