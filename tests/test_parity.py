"""The parity check: real backends pass, deliberately buggy ones fail naming the fault, layouts convert both ways."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench import parity
from cnnbench.cli import cli
from cnnbench.config import TrainConfig
from cnnbench.initializers import initial_weights
from cnnbench.spec import lenet

torch = pytest.importorskip("torch")
from cnnbench_torch.backend import TorchBackend, from_native, to_native  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixture_plugins"))
from buggy_backends import BuggyBackend  # noqa: E402

MNIST = lenet((28, 28, 1))
CIFAR = lenet((32, 32, 3), dropout=0.2)
#: One thread: the machine is shared and small matrices gain nothing from a second one.
CONFIG = TrainConfig(threads=1)
GRADIENTS = [f"gradient {name}" for name in MNIST.param_shapes()]


def _strict_json(result: dict) -> dict:
    return json.loads(json.dumps(result, allow_nan=False))


@pytest.mark.parametrize("spec", [MNIST, CIFAR], ids=["mnist", "cifar10"])
def test_torch_passes_every_check(spec):
    result = parity.check_backend(TorchBackend(), spec, CONFIG)
    assert result["status"] == "PASS", result["message"]
    names = set(result["checks"])
    expected = {"weight shapes", "export: native -> canonical", "weights round trip", "predict repeatable", "logits", "loss",
                "evaluate loss", "evaluate accuracy", "adam: loss of each step", "sgd: loss of each step",
                "adam: 3 batches in one call, losses", "sgd: 3 batches in one call, weights"}
    expected |= set(GRADIENTS) | {f"{opt}: {name} after each step" for opt in ("adam", "sgd") for name in spec.param_shapes()}
    assert expected <= names
    assert _strict_json(result)["checks"]["logits"]["max_rel"] <= parity.LOGITS_REL


def test_check_session_keeps_the_contract_and_leaves_a_usable_session():
    backend = TorchBackend()
    session = backend.create_session(MNIST, CONFIG)
    result = _strict_json(parity.check_session(session, MNIST, "adam", 1e-3, seed=1, steps=2))
    assert result["status"] == "PASS", result["message"]
    assert {"max_abs", "max_rel", "tolerance", "passed"} <= set(result["checks"]["logits"])
    assert "adam: dense1/kernel after each step" in result["checks"] and "skipped" not in result
    session.set_weights(initial_weights(MNIST, "glorot-uniform", 0))  # what the worker does after the check
    data = parity.make_check_data(MNIST, steps=2)
    session.load_data(data.x_train, data.y_train, data.x_batch, data.y_batch)
    assert np.isfinite(session.train_batches(data.step_indices)).all()


def test_with_dropout_steps_run_in_a_dropout_free_session_or_are_reported_skipped():
    backend = TorchBackend()
    session = backend.create_session(CIFAR, CONFIG)
    without = parity.check_session(session, CIFAR, "sgd", 0.01, steps=1)
    assert without["status"] == "PASS" and "sgd steps" in without["skipped"][0] and "not checked" in without["message"]
    assert not any(name.startswith("sgd:") for name in without["checks"])
    with_backend = parity.check_session(session, CIFAR, "sgd", 0.01, steps=1, backend=backend, config=CONFIG)
    assert with_backend["status"] == "PASS", with_backend["message"]
    assert "sgd: conv1/kernel after each step" in with_backend["checks"] and "skipped" not in with_backend


@pytest.mark.parametrize(
    "bug, spec, fragments",
    [
        ("flatten", MNIST, ["logits:", "(C, H, W) order"]),
        ("valid", MNIST, ["weight shapes:", "dense1/kernel is (1024, 1024), the spec says (3136, 1024)", "conv1 VALID instead of SAME"]),
        ("eval-dropout", CIFAR, ["predict repeatable:", "dropout"]),
        ("pad-before", MNIST, ["logits:", "extra row/column before"]),
    ],
)
def test_each_buggy_backend_fails_naming_what_differs(bug, spec, fragments):
    backend = BuggyBackend(bug)
    result = _strict_json(parity.check_session(backend.create_session(spec, CONFIG), spec, "adam", 1e-3, steps=1, backend=backend, config=CONFIG))
    assert result["status"] == "FAIL"
    for fragment in fragments:
        assert fragment in result["message"], result["message"]


def test_dropout_left_on_in_eval_is_invisible_without_dropout():
    backend = BuggyBackend("eval-dropout")
    result = parity.check_session(backend.create_session(MNIST, CONFIG), MNIST, "adam", 1e-3, steps=1)
    assert result["status"] == "PASS", result["message"]


class _ReversedBatches:
    """A session that runs the batches in reverse order: the weights after the steps must say so."""

    def __init__(self, session):
        self.session = session

    def __getattr__(self, name):
        return getattr(self.session, name)

    def train_batches(self, indices):
        return self.session.train_batches(indices[::-1].copy())[::-1]


@pytest.mark.parametrize("fault", ["learning rate 2% high", "batches in reverse order"])
def test_step_bounds_are_not_vacuous(fault):
    data = parity.make_check_data(MNIST, seed=0, steps=2)
    weights = initial_weights(MNIST, "glorot-uniform", 0)
    learning_rate = 1e-3 * (1.02 if fault.startswith("learning") else 1.0)
    session = TorchBackend().create_session(MNIST, replace(CONFIG, learning_rate=learning_rate))
    if fault.startswith("batches"):
        session = _ReversedBatches(session)
    checks = parity.step_checks(session, MNIST, "adam", 1e-3, weights, data)
    failed = [check.name for check in checks if not check.passed]
    if fault.startswith("learning"):
        assert "adam: conv1/kernel after each step" in failed and "adam: dense2/kernel after each step" in failed, failed
    else:  # one batch per call cannot be reordered: the call with both batches must show it
        assert failed == ["adam: 2 batches in one call, losses", "adam: 2 batches in one call, weights"], failed


def test_torch_layout_conversions_both_ways():
    rng = np.random.default_rng(0)
    for name, shape in MNIST.param_shapes().items():
        canonical = rng.normal(size=shape).astype(np.float32)
        native = to_native(name, canonical)
        if name.endswith("/kernel"):
            assert native.shape == (tuple(reversed(shape)) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1]))
        np.testing.assert_array_equal(from_native(name, native), canonical)
        np.testing.assert_array_equal(to_native(name, from_native(name, native)), native)
    # Meaning, not just invertibility: a canonical HWIO kernel in torch's conv equals the reference convolution.
    from cnnbench import reference as ref

    spec_layer = MNIST.layers[0]
    x = rng.random((2, 28, 28, 1))
    kernel, bias = rng.normal(size=(4, 4, 1, 32)), rng.normal(size=32)
    expected, _ = ref._conv_forward(spec_layer, kernel, bias, x, ref.CANONICAL)
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(to_native("conv1/kernel", kernel)), torch.from_numpy(bias), padding="same")
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-10, atol=1e-12)


# --- every backend present, each in its own process (layouts both ways, through the CLI) ---------


def _available(name: str) -> str | None:
    from cnnbench.plugins import load_registry

    registry = load_registry()
    if name not in registry.backends:
        broken = [p.error for p in registry.plugins if p.name == name]
        return f"backend {name!r} not registered" + (f" ({broken[0]})" if broken else "")
    return registry.backends[name].item.unavailable_reason()


@pytest.mark.parametrize("name", ["tf", "keras", "jax"])
def test_backend_passes_parity_in_its_own_process(name, tmp_path):
    """Export (native -> canonical), round trip and gradients cover each backend's layout conversion both ways.

    PyTorch is checked in this process above; the others each need their own (Keras' engine is per process).
    """
    reason = _available(name)
    if reason:
        pytest.skip(reason)
    out = tmp_path / "parity.json"
    result = CliRunner().invoke(cli, ["check", "-f", name, "--optimizer", "adam", "--steps", "1", "--threads", "1", "--json", str(out)], catch_exceptions=False)
    (row,) = json.loads(out.read_text())
    assert result.exit_code == 0 and row["status"] == "PASS", row["message"]
    for check in ["export: native -> canonical", "weights round trip", *GRADIENTS, "adam: dense1/kernel after each step"]:
        assert row["checks"][check]["passed"], check


def test_cli_reports_a_buggy_backend_and_exits_3(fixture_plugins, tmp_path):
    fixture_plugins("buggy_backends")
    result = CliRunner().invoke(cli, ["check", "-f", "buggy-flatten", "--optimizer", "sgd", "--steps", "1", "--threads", "1"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # ExitCode.BACKEND_FAILED
    assert "FAIL" in result.output and "(C, H, W) order" in result.output and "summary: buggy-flatten FAIL" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "steps must be at least 1"),
        (["--adam-lr", "-1"], "learning rate must be"),
        (["-f", "nosuch"], "unknown framework 'nosuch'"),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["--backend-option", "novalue"], "KEY=VALUE"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(args, message):
    result = CliRunner().invoke(cli, ["check", *args], catch_exceptions=False)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_check_job_reports_an_unknown_backend_as_a_failure(tmp_path):
    from cnnbench import messages
    from cnnbench.runner import run_worker

    request = messages.CheckRequest("nosuch", None, CONFIG, (28, 28, 1), 10, None, {}, 0, 1, "glorot-uniform", 4)
    status, final = run_worker(request, dict(os.environ), 60, None, tmp_path / "worker.log")
    assert status == "failed" and isinstance(final, messages.Error) and "unknown framework 'nosuch'" in final.reason
