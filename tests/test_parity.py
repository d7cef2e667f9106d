"""``cnnbench check`` and the run's parity column: the engine passes correct backends and names each bug.

Developed on the NumPy example backend and its buggy variants (tests/kit_bad_backends.py); the
built-in backends are checked at the end (PyTorch in-process, the others each in their own process).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench import parity
from cnnbench.cli import cli
from cnnbench.config import TrainConfig
from cnnbench.conformance import check_backend, check_session, make_check_data, step_checks
from cnnbench.initializers import initial_weights
from cnnbench.spec import lenet

HERE = Path(__file__).resolve().parent
for _folder in (HERE.parent / "examples" / "cnnbench-numpy", HERE):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import kit_bad_backends as bad  # noqa: E402
from cnnbench_numpy.backend import NumpyBackend  # noqa: E402

MNIST = lenet((28, 28, 1))
CIFAR = lenet((32, 32, 3), dropout=0.2)
#: One thread: the machine is shared and small matrices gain nothing from a second one.
CONFIG = TrainConfig(threads=1)
GRADIENTS = [f"gradient {name}" for name in MNIST.param_shapes()]


def _strict_json(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(result, allow_nan=False))  # type: ignore[no-any-return]


def test_parity_is_the_conformance_engine():
    assert parity.check_backend is check_backend and parity.check_session is check_session
    assert parity.LOGITS_REL == 1e-5 and parity.GRAD_REL == 1e-4


@pytest.mark.parametrize("spec", [MNIST, CIFAR], ids=["mnist", "cifar10"])
def test_numpy_passes_every_check(spec):
    result = _strict_json(check_backend(NumpyBackend(), spec, CONFIG))
    assert result["status"] == "PASS", result["message"]
    names = set(result["checks"])
    expected = {
        "weight shapes",
        "export: native -> canonical",
        "weights round trip",
        "predict repeatable",
        "logits",
        "loss",
        "evaluate loss (whole)",
        "evaluate loss (partial last batch)",
        "evaluate accuracy (whole)",
        "adam: update rule",
        "adam: loss of each step",
        "sgd: loss of each step",
        "adam: 3 batches in one call, losses",
        "sgd: 3 batches in one call, weights",
        "optimizer reset by set_weights",
        "adam hyper-parameters: update rule",
    }
    expected |= set(GRADIENTS) | {
        f"{opt}: {name} after each step" for opt in ("adam", "sgd") for name in spec.param_shapes()
    }
    if spec.has_dropout:
        expected |= {"dropout rate", "dropout scaling", "dropout masks"}
    assert expected <= names, expected - names
    assert result["checks"]["logits"]["max_rel"] <= parity.LOGITS_REL
    assert "epsilon added to sqrt(v_hat)" in result["checks"]["adam hyper-parameters: update rule"]["detail"]


def test_check_session_keeps_the_contract_and_leaves_a_usable_session():
    backend = NumpyBackend()
    session = backend.create_session(MNIST, CONFIG)
    result = _strict_json(check_session(session, MNIST, "adam", 1e-3, seed=1, steps=2))
    assert result["status"] == "PASS", result["message"]
    assert {"max_abs", "max_rel", "tolerance", "passed"} <= set(result["checks"]["logits"])
    assert "adam: dense1/kernel after each step" in result["checks"]
    assert "optimizer reset" in result["skipped"][0] and "not checked" in result["message"]
    session.set_weights(initial_weights(MNIST, "glorot-uniform", 0))  # what the worker does after the check
    data = make_check_data(MNIST, steps=2)
    session.load_data(data.x_train, data.y_train, data.x_batch, data.y_batch)
    assert np.isfinite(session.train_batches(data.step_indices)).all()


def test_with_dropout_steps_and_probes_run_in_sessions_of_their_own_or_are_reported_skipped():
    backend = NumpyBackend()
    session = backend.create_session(CIFAR, CONFIG)
    without = check_session(session, CIFAR, "sgd", 0.01, steps=1)
    assert without["status"] == "PASS" and "sgd steps" in without["skipped"][0] and "not checked" in without["message"]
    assert not any(name.startswith("sgd:") for name in without["checks"])
    with_backend = check_session(session, CIFAR, "sgd", 0.01, steps=1, backend=backend, config=CONFIG)
    assert with_backend["status"] == "PASS", with_backend["message"]
    assert "skipped" not in with_backend
    assert {"sgd: conv1/kernel after each step", "optimizer reset by set_weights", "dropout scaling"} <= set(
        with_backend["checks"]
    )


@pytest.mark.parametrize(
    ("bug", "spec", "fragments"),
    [
        ("WrongFlattenBackend", MNIST, ["logits:", "(C, H, W) order"]),
        (
            "ValidPaddingBackend",
            MNIST,
            [
                "weight shapes:",
                "dense1/kernel is (1024, 1024), the spec says (3136, 1024)",
                "conv1 VALID instead of SAME",
            ],
        ),
        ("PredictDropoutBackend", CIFAR, ["predict repeatable:", "dropout"]),
        ("PadBeforeBackend", MNIST, ["logits:", "extra row/column before"]),
        ("SymmetricPaddingBackend", MNIST, ["predict raised ValueError", "symmetric padding"]),
        ("KerasEpsilonBackend", MNIST, ["adam hyper-parameters: update rule:", "1e-07 (Keras' default)"]),
        ("NoResetBackend", MNIST, ["set_weights did not reset the optimizer"]),
        ("UnscaledDropoutBackend", CIFAR, ["dropout scaling:", "not scaled by 1/(1 - rate)"]),
        ("EvaluateDropoutBackend", CIFAR, ["dropout is active in evaluate"]),
    ],
)
def test_each_buggy_backend_fails_naming_what_differs(bug, spec, fragments):
    backend = getattr(bad, bug)()
    session = backend.create_session(spec, CONFIG)
    result = _strict_json(check_session(session, spec, "adam", 1e-3, steps=1, backend=backend, config=CONFIG))
    assert result["status"] == "FAIL"
    for fragment in fragments:
        assert fragment in result["message"], result["message"]


def test_dropout_left_on_in_predict_is_invisible_without_dropout():
    backend = bad.PredictDropoutBackend()
    result = check_session(backend.create_session(MNIST, CONFIG), MNIST, "adam", 1e-3, steps=1)
    assert result["status"] == "PASS", result["message"]


class _ReversedBatches:
    """A session that runs the batches in reverse order: the weights after the steps must say so."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def train_batches(self, indices: np.ndarray) -> np.ndarray:
        return self.session.train_batches(indices[::-1].copy())[::-1]  # type: ignore[no-any-return]


@pytest.mark.parametrize("fault", ["learning rate 2% high", "batches in reverse order"])
def test_step_bounds_are_not_vacuous(fault):
    data = make_check_data(MNIST, seed=0, steps=2)
    weights = initial_weights(MNIST, "glorot-uniform", 0)
    assert weights is not None
    learning_rate = 1e-3 * (1.02 if fault.startswith("learning") else 1.0)
    session: Any = NumpyBackend().create_session(MNIST, replace(CONFIG, learning_rate=learning_rate))
    if fault.startswith("batches"):
        session = _ReversedBatches(session)
    checks = step_checks(session, MNIST, "adam", 1e-3, weights, data.x_train, data.y_train, data.step_indices)
    failed = [check.name for check in checks if not check.passed]
    if fault.startswith("learning"):
        assert "adam: conv1/kernel after each step" in failed and "adam: dense2/kernel after each step" in failed, (
            failed
        )
        rule = next(check for check in checks if check.name == "adam: update rule")
        assert "1.02 x lr" in rule.detail, rule.detail
    else:  # one batch per call cannot be reordered: the call with both batches must show it
        assert failed == ["adam: 2 batches in one call, losses", "adam: 2 batches in one call, weights"], failed


# --- through the CLI and the worker's check job ---------------------------------------------------


def test_cli_reports_buggy_backends_and_exits_1(fixture_plugins, numpy_backend):
    fixture_plugins("buggy_backends")
    result = CliRunner().invoke(
        cli,
        ["check", "-f", "bad-flatten,bad-adam-epsilon", "--optimizer", "adam", "--steps", "1", "--threads", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code in (1, 3), result.output
    output = " ".join(result.output.split())
    assert "(C, H, W) order" in output and "1e-07 (Keras' default)" in output, result.output
    assert "summary: bad-flatten FAIL, bad-adam-epsilon FAIL" in output


@pytest.mark.parametrize(
    ("args", "message"),
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


# --- the built-in backends --------------------------------------------------------------------------


def test_torch_passes_every_check():
    pytest.importorskip("torch")
    from cnnbench_torch.backend import TorchBackend

    for spec in (MNIST, CIFAR):
        result = check_backend(TorchBackend(), spec, CONFIG)
        assert result["status"] == "PASS", result["message"]


def test_torch_layout_conversions_both_ways():
    torch = pytest.importorskip("torch")
    from cnnbench import reference as ref
    from cnnbench_torch.backend import from_native, to_native

    rng = np.random.default_rng(0)
    for name, shape in MNIST.param_shapes().items():
        canonical = rng.normal(size=shape).astype(np.float32)
        native = to_native(name, canonical)
        if name.endswith("/kernel"):
            assert native.shape == (
                tuple(reversed(shape)) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
            )
        np.testing.assert_array_equal(from_native(name, native), canonical)
        np.testing.assert_array_equal(to_native(name, from_native(name, native)), native)
    # Meaning, not just invertibility: a canonical HWIO kernel in torch's conv equals the reference convolution.
    spec_layer = MNIST.layers[0]
    x = rng.random((2, 28, 28, 1))
    kernel, bias = rng.normal(size=(4, 4, 1, 32)), rng.normal(size=32)
    expected, _ = ref._conv_forward(spec_layer, kernel, bias, x, ref.CANONICAL)
    got = torch.nn.functional.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        torch.from_numpy(to_native("conv1/kernel", kernel)),
        torch.from_numpy(bias),
        padding="same",
    )
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-10, atol=1e-12)


def _available(name: str) -> str | None:
    from cnnbench.plugins import load_registry

    registry = load_registry()
    if name not in registry.backends:
        broken = [p.error for p in registry.plugins if p.name == name]
        return f"backend {name!r} not registered" + (f" ({broken[0]})" if broken else "")
    return registry.backends[name].item.unavailable_reason()


@pytest.mark.parametrize("name", ["tf", "keras", "jax"])
def test_backend_passes_parity_in_its_own_process(name, tmp_path):
    """Export (native -> canonical), round trip, gradients and the probes, each backend in its own worker."""
    reason = _available(name)
    if reason:
        pytest.skip(reason)
    out = tmp_path / "parity.json"
    result = CliRunner().invoke(
        cli,
        ["check", "-f", name, "--optimizer", "adam", "--steps", "1", "--threads", "1", "--json", str(out)],
        catch_exceptions=False,
    )
    (row,) = json.loads(out.read_text())
    assert result.exit_code == 0 and row["status"] == "PASS", row["message"]
    for check in [
        "export: native -> canonical",
        "weights round trip",
        *GRADIENTS,
        "adam: dense1/kernel after each step",
        "optimizer reset by set_weights",
        "adam hyper-parameters: update rule",
    ]:
        assert row["checks"][check]["passed"], check


@pytest.mark.parametrize(
    ("backend", "follows"),
    [(NumpyBackend(), "epsilon added to sqrt(v_hat)"), (bad.BadBackend(), "epsilon added to sqrt(v_hat)")],
    ids=["numpy", "bad-base"],
)
def test_a_runs_column_stops_at_the_first_epsilon_form_that_passes(backend: Any, follows: str) -> None:
    """The run's parity column asks PASS or FAIL; naming the form is 'cnnbench check''s (and costs a second form)."""
    told = check_backend(backend, MNIST, CONFIG, learning_rates={"adam": 1e-3}, probes=False)
    quick = check_backend(backend, MNIST, CONFIG, learning_rates={"adam": 1e-3}, probes=False, tell_forms_apart=False)
    assert told["status"] == quick["status"] == "PASS", quick["message"]
    assert told["checks"]["adam: update rule"]["detail"] == f"follows adam with {ref_form_text(follows)}"
    said = quick["checks"]["adam: update rule"]["detail"]
    assert said.startswith(f"within tolerance of adam with {ref_form_text(follows)}") and "not told apart" in said
    assert set(told["checks"]) == set(quick["checks"])


def test_the_keras_form_is_named_only_when_the_forms_are_told_apart() -> None:
    keras_form = bad.adam_session(keras_form=True)  # cnnbench's epsilon, written as Keras writes Adam

    class KerasFormBackend(bad.BadBackend):
        name = "keras-form-adam"
        session_class = keras_form

    told = check_backend(KerasFormBackend(), MNIST, CONFIG, learning_rates={"adam": 1e-3}, probes=False)
    assert told["status"] == "PASS" and "before bias correction" in told["checks"]["adam: update rule"]["detail"]
    quick = check_backend(
        KerasFormBackend(), MNIST, CONFIG, learning_rates={"adam": 1e-3}, probes=False, tell_forms_apart=False
    )
    assert quick["status"] == "PASS" and "not told apart" in quick["checks"]["adam: update rule"]["detail"]


def test_a_wrong_update_fails_the_runs_column_with_the_same_diagnosis() -> None:
    backend, rates = bad.NoBiasCorrectionBackend(), {"adam": 1e-3}
    told = check_backend(backend, MNIST, CONFIG, learning_rates=rates, probes=False)
    quick = check_backend(backend, MNIST, CONFIG, learning_rates=rates, probes=False, tell_forms_apart=False)
    assert told["status"] == quick["status"] == "FAIL"
    assert quick["checks"]["adam: update rule"] == told["checks"]["adam: update rule"]


def ref_form_text(fragment: str) -> str:
    """The reference's full description of the epsilon form that contains ``fragment``."""
    from cnnbench.reference import EPSILON_FORMS

    return next(text for text in EPSILON_FORMS.values() if fragment in text)
