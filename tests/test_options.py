"""Options are checked in the parent (issue 15, item 7): declared backend options, seed range, data sizes,
threads and timeout are one line and exit 2 before any worker starts. No framework is imported, no worker runs."""

from __future__ import annotations

import ast
import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cnnbench.backend import BackendOption
from cnnbench.backend_options import declared_options, validate_backend_options
from cnnbench.cli import cli
from cnnbench.commands import common
from cnnbench.config import SEED_LIMIT, DataConfig, TrainConfig, check_sizes, check_threads, check_timeout
from cnnbench.errors import ExitCode, UsageError
from cnnbench.frameworks import available_cores
from cnnbench.plugins import Registry, load_registry

#: The built-in backends' modules, whose ``config.option`` / ``config.flag`` calls must name declared options.
BUILTIN_BACKEND_MODULES = (
    "cnnbench_tf.backend",
    "cnnbench_tf.mirrored",
    "cnnbench_jax.backend",
    "cnnbench_jax.sharded",
    "cnnbench_keras.backend",
    "cnnbench_keras.data_parallel",
    "cnnbench_torch.backend",
    "cnnbench_torch.ddp",
)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(result: Result, *texts: str) -> str:
    """The single non-empty output line of a refused command (exit 2), checked to contain ``texts``."""
    assert result.exit_code == ExitCode.USAGE, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as starting backends."""

    def run_benchmark(*_: Any, **__: Any) -> None:
        raise AssertionError("run_benchmark was reached: the option was not checked in the parent")

    monkeypatch.setattr(common, "run_benchmark", run_benchmark)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


# --- declared backend options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "given", "canonical"),
    [
        (BackendOption("xla"), "YES", "true"),
        (BackendOption("xla"), " off ", "false"),
        (BackendOption("xla"), "1", "true"),
        (BackendOption("mode", ("auto", "true", "false")), "Auto", "auto"),
        (BackendOption("n", int), " 3 ", "3"),
        (BackendOption("x", float), "0.5", "0.5"),
        (BackendOption("name", str), " any text ", "any text"),
    ],
)
def test_a_declared_option_takes_its_values_in_canonical_form(
    option: BackendOption, given: str, canonical: str
) -> None:
    assert option.parse(given) == canonical


@pytest.mark.parametrize(
    ("option", "given", "expected"),
    [
        (BackendOption("xla"), "maybe", "true or false"),
        (BackendOption("mode", ("auto", "true", "false")), "fast", "one of auto, true, false"),
        (BackendOption("n", int), "3.5", "an integer"),
        (BackendOption("x", float), "nan", "a finite number"),
        (BackendOption("x", float), "inf", "a finite number"),
        (BackendOption("x", float), "abc", "a finite number"),
    ],
)
def test_a_bad_value_says_what_the_option_takes(option: BackendOption, given: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        option.parse(given)


@pytest.mark.parametrize(
    "build",
    [
        lambda: BackendOption(""),
        lambda: BackendOption("tf.xla"),
        lambda: BackendOption("a=b"),
        lambda: BackendOption("x", ()),
        lambda: BackendOption("x", ("ok", "")),
        lambda: BackendOption("x", list),  # type: ignore[arg-type]
        lambda: BackendOption("x", bool, None, 3),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_declaration_fails_when_the_plugin_is_imported(build: Any) -> None:
    with pytest.raises(TypeError, match="BackendOption"):
        build()


def test_the_builtin_backends_declare_their_options(registry: Registry) -> None:
    declared = {name: {o.key: o for o in declared_options(r.item)} for name, r in registry.backends.items()}
    assert set(declared["tf"]) == {"xla", "onednn"} and declared["tf"]["xla"].values is bool
    assert set(declared["jax"]) == {"scan", "matmul_precision", "pool", "conv"}
    assert declared["jax"]["conv"].values == ("auto", "im2col", "lax") and declared["jax"]["conv"].default == "auto"
    assert declared["jax"]["matmul_precision"].values == ("default", "high", "highest")
    assert declared["keras"]["jit_compile"].values == ("auto", "true", "false")
    assert set(declared["torch"]) == {"compile", "fused_optimizer"} and declared["torch"]["compile"].values is bool
    assert declared["torch"]["fused_optimizer"].default is True


def _option_reads(module_name: str) -> set[tuple[str, str]]:
    """(backend, key) of every ``config.option(...)`` / ``config.flag(...)`` call in a module's source."""
    module = importlib.import_module(module_name)
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("option", "flag")
            and len(node.args) >= 2
        ):
            continue
        values: list[object] = []
        for arg in node.args[:2]:
            if isinstance(arg, ast.Constant):
                values.append(arg.value)
            elif isinstance(arg, ast.Name):  # a module constant such as OPTION_SCAN
                values.append(getattr(module, arg.id))
        backend, key = [*values, None, None][:2]
        if isinstance(backend, str) and isinstance(key, str):
            found.add((backend, key))
    return found


def test_every_option_a_builtin_backend_reads_is_declared(registry: Registry) -> None:
    reads = set().union(*(_option_reads(name) for name in BUILTIN_BACKEND_MODULES))
    assert {
        ("tf", "xla"),
        ("tf", "onednn"),
        ("jax", "scan"),
        ("jax", "matmul_precision"),
        ("keras", "jit_compile"),
    } <= reads
    declared = {(name, o.key) for name, r in registry.backends.items() for o in declared_options(r.item)}
    assert reads <= declared, f"read but not declared in Backend.options: {sorted(reads - declared)}"


def test_options_are_validated_and_canonicalised_against_the_registry(registry: Registry) -> None:
    given = {"tf.xla": "On", "jax.matmul_precision": "HIGH", "keras.jit_compile": "auto"}
    assert validate_backend_options(given, registry) == {
        "tf.xla": "true",
        "jax.matmul_precision": "high",
        "keras.jit_compile": "auto",
    }


@pytest.mark.parametrize(
    ("option", "texts"),
    [
        ("tf.xla=maybe", ("tf.xla=maybe", "expected true or false")),
        ("torch.foo=bar", ("torch.foo", "torch has no option 'foo'", "valid: torch.compile")),
        ("tf.xlaa=true", ("tf has no option 'xlaa'", "valid: tf.onednn, tf.xla")),
        ("jax.matmul_precision=fp8", ("jax.matmul_precision=fp8", "one of default, high, highest")),
        ("nosuch.key=1", ("nosuch.key=1", "unknown framework 'nosuch'")),
        ("xla=true", ("expected NAME.KEY=VALUE",)),
    ],
)
def test_bad_backend_options_are_one_line_before_any_worker(
    option: str, texts: tuple[str, ...], no_worker: None
) -> None:
    one_error_line(invoke("run", "-f", "torch", "-d", "synthetic", "--backend-option", option), *texts)


def test_check_validates_backend_options_too() -> None:
    one_error_line(invoke("check", "-f", "torch", "--backend-option", "tf.xla=maybe"), "expected true or false")


def test_run_hands_workers_the_canonical_values() -> None:
    params = common.RunParams(backend_options=("tf.xla=YES", "keras.jit_compile=False"))
    train, _ = common.build_configs(params)
    assert train.backend_options == {"tf.xla": "true", "keras.jit_compile": "false"}


def test_flag_refuses_a_value_that_is_not_boolean() -> None:
    config = TrainConfig(backend_options={"tf.xla": "maybe", "tf.onednn": "off"})
    assert config.flag("tf", "onednn") is False and config.flag("jax", "scan", default=True) is True
    with pytest.raises(UsageError, match=r"tf\.xla=maybe: expected true or false"):
        config.flag("tf", "xla")


def test_list_and_plugins_show_the_declared_options() -> None:
    for command in ("list", "plugins"):
        result = invoke(command)
        assert result.exit_code == 0, result.output
        assert "Backend options" in result.output
        for text in ("tf.xla", "tf.onednn", "jax.matmul_precision", "default | high | highest", "keras.jit_compile"):
            assert text in result.output, (command, text)


def test_plugins_json_lists_options_per_backend() -> None:
    import json

    rows = json.loads(invoke("plugins", "--json").output)["plugins"]
    tf = next(row for row in rows if "tf" in row["backends"])
    assert {option["key"] for option in tf["options"]["tf"]} == {"xla", "onednn"}


# --- seed, data sizes, threads, timeout ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, SEED_LIMIT, 2**63])
def test_a_seed_out_of_range_is_refused(seed: int) -> None:
    with pytest.raises(UsageError, match=r"seed must be an integer in 0\.\.4294967295"):
        TrainConfig(seed=seed).validate()


def test_the_seed_range_ends_at_2_to_the_32() -> None:
    assert SEED_LIMIT == 2**32
    TrainConfig(seed=0).validate()
    TrainConfig(seed=SEED_LIMIT - 1).validate()


@pytest.mark.parametrize("command", ["run", "check"])
def test_the_cli_refuses_an_out_of_range_seed(command: str, no_worker: None) -> None:
    one_error_line(invoke(command, "-f", "torch", "--seed", str(2**32)), "seed must be")


@pytest.mark.parametrize(
    ("train", "data", "n_train", "replicas", "message"),
    [
        (TrainConfig(batch_size=100), DataConfig(), 50, 1, "batch size 100 is larger than the training set: 50 images"),
        (TrainConfig(batch_size=100), DataConfig(limit_train=60), 1000, 1, "60 images (--limit-train)"),
        (TrainConfig(batch_size=10), DataConfig(validation=95), 100, 1, "5 images after the hold-out of 95"),
        (TrainConfig(batch_size=30), DataConfig(), 100, 4, "batch size 30 x 4 replicas = 120"),
        (TrainConfig(), DataConfig(validation=100), 100, 1, "validation hold-out 100 leaves no training data"),
    ],
)
def test_sizes_the_training_set_cannot_give_are_refused(
    train: TrainConfig, data: DataConfig, n_train: int, replicas: int, message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_sizes(train, data, n_train, replicas)


def test_sizes_that_fit_pass() -> None:
    check_sizes(TrainConfig(batch_size=50), DataConfig(validation=50, limit_train=50), 100)
    check_sizes(TrainConfig(batch_size=25), DataConfig(), 100, replicas=4)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--dataset-option", "n_train=50", "-b", "100"), "batch size 100 is larger than the training set: 50"),
        (("--dataset-option", "n_train=50", "--validation", "50"), "validation hold-out 50 leaves no training data"),
        (("--limit-train", "20", "-b", "32"), "20 images (--limit-train)"),
    ],
)
def test_run_refuses_sizes_after_loading_the_dataset_and_before_any_worker(
    args: tuple[str, ...], text: str, no_worker: None
) -> None:
    one_error_line(invoke("run", "-f", "torch", "-d", "synthetic", *args), text)


def test_threads_above_the_usable_cores_are_refused() -> None:
    check_threads(None, 2)
    check_threads(2, 2)
    with pytest.raises(UsageError, match="threads 3 is more than the 2 cores this process may use; oversubscribed"):
        check_threads(3, 2)


@pytest.mark.parametrize("command", ["run", "check", "ceiling", "reproduce"])
def test_every_command_with_threads_refuses_oversubscription(command: str, no_worker: None) -> None:
    too_many = str(available_cores() + 1)
    one_error_line(invoke(command, "--threads", too_many), f"threads {too_many} is more than", "contention")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_a_timeout_is_positive_and_finite(value: float) -> None:
    with pytest.raises(UsageError, match="timeout must be positive and finite"):
        check_timeout(value)
    check_timeout(None)
    check_timeout(0.5)


@pytest.mark.parametrize("command", ["run", "check", "reproduce"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_the_cli_refuses_a_nan_or_infinite_timeout(command: str, value: str, no_worker: None) -> None:
    one_error_line(invoke(command, "--timeout", value), "timeout must be positive and finite")


def test_a_file_given_as_the_report_folder_is_refused_before_running(tmp_path: Path, no_worker: None) -> None:
    target = tmp_path / "report.html"
    target.write_text("")
    one_error_line(invoke("run", "-f", "torch", "-d", "synthetic", "--report", str(target)), "is a file")
