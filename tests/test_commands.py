"""One way to add a command (a module in cnnbench/commands/ with ``command``, named in ``COMMANDS``) and the typed
``RunParams`` that run, scale and reproduce hand each other; no framework and no worker process is started."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import cnnbench.commands
from cnnbench import presets
from cnnbench.cli import cli
from cnnbench.commands import COMMANDS, common
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import ExitCode, UsageError
from cnnbench.results import BackendResult, RunResult
from cnnbench.runner import RunOptions

COMMANDS_DIR = Path(cnnbench.commands.__file__).parent
#: Modules of cnnbench/commands/ that are not commands.
NOT_COMMANDS = {"__init__", "common"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_module_is_registered_and_every_registered_one_exists() -> None:
    modules = {path.stem for path in COMMANDS_DIR.glob("*.py")} - NOT_COMMANDS
    assert modules == set(COMMANDS), "add the module's name to COMMANDS in cnnbench/commands/__init__.py"
    assert len(COMMANDS) == len(set(COMMANDS))


@pytest.mark.parametrize("name", COMMANDS)
def test_each_module_exposes_its_command_and_the_group_has_it(name: str) -> None:
    command = importlib.import_module(f"cnnbench.commands.{name}").command
    assert isinstance(command, click.Command)
    assert command.name is not None and cli.commands[command.name] is command


def test_the_group_has_exactly_the_registered_commands() -> None:
    names = [importlib.import_module(f"cnnbench.commands.{name}").command.name for name in COMMANDS]
    assert sorted(cli.commands) == sorted(names) and len(set(names)) == len(names)


def parsed(command: click.Command, *args: str) -> dict[str, Any]:
    """The keyword arguments click would pass the command's function."""
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


def _takes_anything(**_: Any) -> None:
    """A function for ``run_options`` to decorate."""


def run_option_names() -> set[str]:
    decorated = click.command("probe")(common.run_options(_takes_anything))
    return {param.name for param in decorated.params if param.name}


def test_run_params_has_a_field_for_every_run_option_and_their_defaults() -> None:
    fields = {field.name for field in dataclasses.fields(common.RunParams)}
    assert fields - run_option_names() == {"evaluate_each_epoch"}
    assert run_option_names() <= fields
    options = parsed(cli.commands["run"])
    assert options.pop("preset") is None
    assert common.RunParams.from_options(options) == common.RunParams()


def test_run_params_are_typed_as_click_parses_them() -> None:
    options = parsed(
        cli.commands["run"],
        "-f",
        "torch,jax",
        "-e",
        "3",
        "--lr",
        "0.01",
        "--backend-option",
        "tf.xla=true",
        "--backend-option",
        "jax.scan=false",
        "--no-standardize",
        "--timeout",
        "5",
        "--no-save",
    )
    del options["preset"]
    params = common.RunParams.from_options(options)
    assert (params.frameworks, params.epochs, params.learning_rate) == ("torch,jax", 3, 0.01)
    assert params.backend_options == ("tf.xla=true", "jax.scan=false")
    assert (params.standardize, params.timeout_s, params.no_save) == (False, 5.0, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.epochs = 4  # type: ignore[misc]


def test_build_configs_lets_flags_override_the_preset() -> None:
    preset = presets.get("mnist-sgd")
    params = common.RunParams(
        epochs=2,
        threads=1,
        backend_options=("tf.xla=true",),
        dataset_options=("n_train=500",),
        dataset="synthetic",
        offline=True,
    )
    train, data = common.build_configs(params, preset.train, preset.data)
    assert (train.optimizer, train.learning_rate) == (preset.train.optimizer, preset.train.learning_rate)
    assert (train.epochs, train.threads, train.backend_options["tf.xla"]) == (2, 1, "true")
    assert (data.dataset, data.offline, data.options["n_train"]) == ("synthetic", True, "500")
    assert common.build_configs(common.RunParams()) == (TrainConfig().validate(), DataConfig().validate())
    assert common.build_configs(common.RunParams(eval_warmup=False))[0].eval_warmup is False
    assert common.build_configs(common.RunParams())[0].eval_warmup is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"timeout_s": 0.0}, "timeout must be positive"),
        ({"repeat": 0}, "repeat must be at least 1"),
        ({"target_accuracy": 1.5}, "target accuracy must be in (0, 1]"),
        ({"backend_options": ("noequals",)}, "--backend-option must look like KEY=VALUE"),
    ],
)
def test_build_configs_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("]", r"\]")):
        common.build_configs(dataclasses.replace(common.RunParams(), **changes))


def fake_result(train: TrainConfig, data: DataConfig) -> RunResult:
    return RunResult(run_id="test", created="2025-01-01T00:00:00", train=train, data=data)


def test_reproduce_hands_execute_run_real_run_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[common.RunParams, TrainConfig, DataConfig, str | None]] = []

    def execute_run(
        params: common.RunParams,
        train: TrainConfig,
        data: DataConfig,
        preset: str | None = None,
        title: str | None = None,
        show: bool = True,
    ) -> tuple[RunResult, Path]:
        calls.append((params, train, data, preset))
        return fake_result(train, data), tmp_path / f"{preset}.json"

    monkeypatch.setattr("cnnbench.commands.reproduce.execute_run", execute_run)
    result = invoke(
        "reproduce",
        "-f",
        "torch",
        "--presets",
        "mnist-adam,mnist-sgd",
        "--quick",
        "--threads",
        "1",
        "--timeout",
        "5",
        "--offline",
        "--results-dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert [preset for *_, preset in calls] == ["mnist-adam", "mnist-sgd"]
    params, train, data, _ = calls[1]
    assert isinstance(params, common.RunParams)
    assert (params.frameworks, params.threads, params.timeout_s, params.offline) == ("torch", 1, 5.0, True)
    assert params.evaluate_each_epoch and not params.no_save and not params.skip_parity
    quick_train, quick_data = presets.get("mnist-sgd").configs(quick=True)
    assert train == dataclasses.replace(quick_train, threads=1)
    assert data == dataclasses.replace(quick_data, offline=True)
    assert "Reproducing the reference chapter" in result.output


@pytest.mark.parametrize(
    ("status", "saved", "code"),
    [("failed", True, 3), ("diverged", True, 3), ("ok", False, 4), ("failed", False, 4), ("unavailable", True, 0)],
)
def test_reproduce_exits_like_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: str, saved: bool, code: int
) -> None:
    def execute_run(
        params: common.RunParams,
        train: TrainConfig,
        data: DataConfig,
        preset: str | None = None,
        title: str | None = None,
        show: bool = True,
    ) -> tuple[RunResult, Path | None]:
        row = BackendResult(backend="torch", framework="PyTorch", framework_version="2", plugin="x", status=status)
        result = dataclasses.replace(fake_result(train, data), backends=(row,))
        return result, (tmp_path / "r.json" if saved else None)

    monkeypatch.setattr("cnnbench.commands.reproduce.execute_run", execute_run)
    result = invoke("reproduce", "-f", "torch", "--presets", "mnist-sgd", "--quick", "--results-dir", str(tmp_path))
    assert result.exit_code == code, result.output


def test_reproduce_rejects_a_bad_timeout_before_running() -> None:
    result = invoke("reproduce", "--presets", "mnist-adam", "--timeout", "0")
    assert result.exit_code == 2 and "timeout must be positive" in result.output


def test_run_with_devices_and_scale_hand_run_params_to_the_device_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, common.RunParams, TrainConfig, str | None]] = []

    def recorder(where: str) -> Any:
        def run_device_counts(
            params: common.RunParams,
            train: TrainConfig,
            data: DataConfig,
            preset: str | None = None,
            counts: list[int] | None = None,
        ) -> list[RunResult]:
            seen.append((where, params, train, preset))
            return []

        return run_device_counts

    monkeypatch.setattr("cnnbench.commands.run.run_device_counts", recorder("run"))
    monkeypatch.setattr("cnnbench.commands.scale.run_device_counts", recorder("scale"))
    assert invoke("run", "--preset", "mnist-sgd", "--devices", "2", "-f", "jax", "-e", "2").exit_code == 0
    assert invoke("scale", "-f", "torch", "--batch-size", "50").exit_code == 0
    (_, run_params, run_train, preset), (_, scale_params, scale_train, _) = seen
    assert (run_params.devices, run_params.frameworks, run_train.epochs, preset) == ("2", "jax", 2, "mnist-sgd")
    assert run_train.optimizer == presets.get("mnist-sgd").train.optimizer
    assert (scale_params.devices, scale_params.frameworks, scale_train.batch_size) == ("1,2", "torch", 50)


def test_execute_run_turns_run_params_into_run_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    captured: list[RunOptions] = []

    def run_benchmark(
        targets: list[Any], registry: Any, train: TrainConfig, data: DataConfig, options: RunOptions, observer: Any
    ) -> tuple[RunResult, None]:
        captured.append(options)
        assert [target.id for target in targets] == ["torch"]
        return fake_result(train, data), None

    monkeypatch.setattr(common, "run_benchmark", run_benchmark)
    params = common.RunParams(
        frameworks="torch",
        dataset="synthetic",
        repeat=3,
        timeout_s=9.0,
        no_save=True,
        skip_parity=True,
        allocator="system",
        results_dir=str(tmp_path),
        plot="curves.png",
    )
    train, data = common.build_configs(params)
    common.execute_run(params, train, data, preset="p", show=False)
    options = captured[0]
    assert (options.repeat, options.timeout_s, options.allocator, options.results_dir) == (
        3,
        9.0,
        "system",
        str(tmp_path),
    )
    assert (options.save, options.parity, options.evaluate_each_epoch, options.preset) == (False, False, True, "p")
    common.execute_run(dataclasses.replace(params, plot=None), train, data, show=False)
    assert captured[1].evaluate_each_epoch is False and captured[1].save is False


# --- exit codes: every command's error path ends with its ExitCode ---------------------------------------

#: One bad input per command (env, args): each must end with one line and ExitCode.USAGE.
USAGE_ERRORS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "run": ({}, ("run", "--epochs", "0")),
    "presets": ({}, ("presets", "unexpected")),
    "reproduce": ({}, ("reproduce", "--presets", "nosuch")),
    "list": ({"CNNBENCH_PLUGINS": "nosuchplugin"}, ("list",)),
    "plugins": ({"CNNBENCH_PLUGINS": "nosuchplugin"}, ("plugins",)),
    "scale": ({}, ("scale", "--devices", "0")),
    "check": ({}, ("check", "--steps", "0")),
    "datasets": ({}, ("datasets", "nosuch")),
    "compare": ({}, ("compare", "nosuch-baseline.json", "nosuch-current.json")),
    "export": ({}, ("export", "nosuch.json", "--format", "csv")),
    "history": ({}, ("history", "--last", "0")),
    "report": ({}, ("report", "--last", "0")),
    "ceiling": ({}, ("ceiling", "--threads", "0")),
    "ab": ({}, ("ab",)),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_ends_bad_input_with_the_usage_exit_code(name: str, tmp_path: Path) -> None:
    command = importlib.import_module(f"cnnbench.commands.{name}").command
    assert command.name in USAGE_ERRORS, f"add a bad input for '{command.name}' to USAGE_ERRORS"
    env, args = USAGE_ERRORS[command.name]
    result = CliRunner().invoke(cli, list(args), env={"CNNBENCH_RESULTS_DIR": str(tmp_path), **env})
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def test_compare_exits_with_regression_on_a_regression(tmp_path: Path) -> None:
    import resultgen

    base = resultgen.save(
        resultgen.run([resultgen.backend("torch", [1000.0, 1001.0, 999.0, 1000.5, 999.5])]), tmp_path, "base.json"
    )
    slower = resultgen.run([resultgen.backend("torch", [500.0, 501.0, 499.0, 500.5, 499.5])])
    current = resultgen.save(slower, tmp_path, "current.json")
    result = invoke("compare", str(base), str(current))
    assert result.exit_code == ExitCode.REGRESSION, result.output
    assert invoke("compare", str(base), str(base)).exit_code == ExitCode.OK


def test_check_exits_with_backend_failed_when_a_backend_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnbench import parity
    from cnnbench.runner import BackendTarget

    def check_targets(targets: list[BackendTarget], *_: Any, **__: Any) -> list[tuple[BackendTarget, dict[str, Any]]]:
        return [(target, {"status": parity.FAIL, "message": "logits differ", "checks": {}}) for target in targets]

    monkeypatch.setattr("cnnbench.commands.check.check_targets", check_targets)
    result = CliRunner().invoke(cli, ["check", "-f", "torch"])
    assert result.exit_code == ExitCode.BACKEND_FAILED, result.output
    assert "logits differ" in result.output


def test_a_scaling_run_with_a_failed_backend_exits_with_backend_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnbench.results import BackendResult

    def execute_run(
        params: common.RunParams,
        train: TrainConfig,
        data: DataConfig,
        preset: str | None = None,
        title: str | None = None,
        show: bool = True,
    ) -> tuple[RunResult, None]:
        row = BackendResult(backend="torch", framework="PyTorch", status="failed", reason="worker killed")
        return dataclasses.replace(fake_result(train, data), backends=(row,)), None

    monkeypatch.setattr(common, "execute_run", execute_run)
    monkeypatch.setattr(common, "targets_for_count", lambda *_: ["torch"])
    result = CliRunner().invoke(cli, ["scale", "-f", "torch", "--devices", "1", "-d", "synthetic", "--no-save"])
    assert result.exit_code == ExitCode.BACKEND_FAILED, result.output


# --- run --report DIR ------------------------------------------------------------------------------------


def test_run_report_writes_the_store_report_with_this_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import resultgen

    captured: list[RunOptions] = []
    latest = resultgen.run([resultgen.backend("torch", [1000.0, 1010.0])], run_id="20250202T000000Z")

    def run_benchmark(
        targets: list[Any], registry: Any, train: TrainConfig, data: DataConfig, options: RunOptions, observer: Any
    ) -> tuple[RunResult, None]:
        captured.append(options)
        return latest, None

    monkeypatch.setattr(common, "run_benchmark", run_benchmark)
    store = tmp_path / "results"
    resultgen.save(resultgen.run([resultgen.backend("jax", [900.0])], run_id="20240101T000000Z"), store)
    out = tmp_path / "site"
    result = invoke(
        "run", "-f", "torch", "-d", "synthetic", "--no-save", "--results-dir", str(store), "--report", str(out)
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert captured[0].evaluate_each_epoch, "--report draws accuracy curves: evaluate after every epoch"
    page = (out / "index.html").read_text()
    assert "20240101T000000Z" in page and "20250202T000000Z" in page  # the store's run and this unsaved one
    assert "report written to" in result.output and str(out / "index.html") in result.output.replace("\n", "")
