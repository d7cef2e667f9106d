"""The Keras backend: the conformance kit, then what is specific to it (engines, environment, settings).

Keras fixes its engine when it is first imported, so the kit runs on the tensorflow engine in this
process, and the jax and torch engines each go through ``cnnbench check`` (the same conformance
engine, in a worker started with the environment ``KerasBackend.process_environment`` gives).
The batch-norm / residual checks (``NEW_LAYER_CHECKS``) run here on tensorflow and, in a child
Python started on each other engine, on jax and torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench import reference
from cnnbench.backend import missing_module_reason, model_unsupported_reason
from cnnbench.cli import cli
from cnnbench.config import TrainConfig
from cnnbench.conformance.tolerances import GRAD_REL, LOGITS_REL, LOSS_REL, STATE_REL
from cnnbench.errors import BackendUnavailable, UsageError
from cnnbench.frameworks import TENSORFLOW
from cnnbench.initializers import initial_weights
from cnnbench.models import zoo
from cnnbench.spec import LAYER_TYPES, MNIST_LENET, BatchNorm, Conv2D, Dense, Dropout, Flatten, ModelSpec
from cnnbench.testing import BackendConformance
from cnnbench_keras.backend import ONEDNN_ENGINES, KerasBackend

BACKEND = KerasBackend()
CONFIG = TrainConfig(threads=2)

pytestmark = pytest.mark.skipif(BACKEND.unavailable_reason() is not None, reason=str(BACKEND.unavailable_reason()))


class TestKerasConformance(BackendConformance):
    backend = KerasBackend()
    variant = "tensorflow"


@pytest.fixture(scope="module")
def keras_tf():
    """keras on its tensorflow engine in this process (KERAS_BACKEND is read once, at import)."""
    if "keras" not in sys.modules:
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "tensorflow"
        try:
            import keras
        finally:
            if previous is None:
                del os.environ["KERAS_BACKEND"]
            else:
                os.environ["KERAS_BACKEND"] = previous
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"keras was imported on {keras.backend.backend()!r} before this module")
    return keras


@pytest.fixture
def session_for(keras_tf):
    sessions = []

    def make(spec, config=CONFIG):
        session = BACKEND.create_session(spec, config, "tensorflow")
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


# --- Without keras: selection of engines, environment, versions -------------------------------


def test_process_environment_selects_the_engine_and_its_threads():
    assert BACKEND.variants[0] == "tensorflow"
    for engine in BACKEND.variants:
        assert BACKEND.process_environment(engine, TrainConfig())["KERAS_BACKEND"] == engine
    assert BACKEND.process_environment(None, TrainConfig())["KERAS_BACKEND"] == "tensorflow"
    assert BACKEND.process_environment("jax", TrainConfig(threads=3))["PJRT_NPROC"] == "3"
    assert BACKEND.process_environment("torch", TrainConfig(device="cpu"))["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(UsageError, match="unknown Keras engine"):
        BACKEND.process_environment("numpy", TrainConfig())
    with pytest.raises(UsageError, match=r"keras\.jit_compile"):
        BACKEND.process_environment("tensorflow", TrainConfig(backend_options={"keras.jit_compile": "maybe"}))


def test_framework_version_names_keras_and_the_engine():
    for engine in BACKEND.variants:
        version = BACKEND.framework_version(engine)
        assert version.startswith(BACKEND.framework_version().split(" ")[0]) and f"({engine} " in version


# --- The tensorflow engine, in this process ---------------------------------------------------


def test_weights_round_trip_and_shape_errors(session_for):
    session = session_for(MNIST_LENET)
    weights = initial_weights(MNIST_LENET, "normal", seed=3)
    session.set_weights(weights)
    for name, value in session.get_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    weights["dense1/kernel"] = weights["dense1/kernel"].T
    with pytest.raises(ValueError, match="dense1/kernel"):
        session.set_weights(weights)


def test_settings_record_engine_threads_and_jit_compile(session_for):
    settings = session_for(MNIST_LENET).settings()
    assert settings["engine"] == "tensorflow" and settings["layout"] == "NHWC"
    assert settings["jit_compile"] is False and settings["mode"] == "graph (tf.function)"
    assert settings["intra_op_threads"] >= 1 and settings["precision"] == "float32"
    xla = session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "true"})).settings()
    assert xla["jit_compile"] is True and xla["mode"] == "graph + XLA" and xla["jit_compile_requested"] == "true"
    with pytest.raises(UsageError, match=r"keras\.jit_compile"):
        session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "fast"}))


def test_test_on_batch_evaluation_equals_model_evaluate_with_a_ragged_last_batch(session_for):
    rng = np.random.default_rng(5)
    x_test, y_test = rng.random((250, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 250)
    weights = initial_weights(MNIST_LENET, "glorot-uniform", seed=5)
    results = {}
    for how in ("test_on_batch", "evaluate"):
        session = session_for(MNIST_LENET, TrainConfig(threads=2, backend_options={"keras.evaluate": how}))
        session.set_weights(weights)
        session.load_data(x_test[:10], y_test[:10], x_test, y_test)
        results[how] = session.evaluate(64)  # 64, 64, 64, 58: the last batch weighs less
        assert session.settings()["eval_loop"].startswith("model." + how)
    (loss, accuracy), (keras_loss, keras_accuracy) = results["test_on_batch"], results["evaluate"]
    assert loss == pytest.approx(keras_loss, rel=1e-6) and accuracy == pytest.approx(keras_accuracy, abs=1e-7)
    logits = reference.forward(MNIST_LENET, weights, x_test)
    assert accuracy == pytest.approx(float(np.mean(logits.argmax(axis=1) == y_test)), abs=1e-7)


def test_cuda_request_without_a_gpu_is_unavailable(keras_tf):
    if TENSORFLOW.gpu_name() is not None:
        pytest.skip("a GPU is visible to TensorFlow")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        BACKEND.create_session(MNIST_LENET, TrainConfig(device="cuda"), "tensorflow")


# --- The jax and torch engines, each in its own worker ------------------------------------------


@pytest.mark.parametrize("engine", ["jax", "torch"])
def test_engine_passes_the_conformance_engine_in_its_own_worker(tmp_path, engine):
    if reason := missing_module_reason(engine, extra=engine):
        pytest.skip(reason)
    out = tmp_path / "check.json"
    result = CliRunner().invoke(
        cli,
        [
            "check",
            "-f",
            f"keras:{engine}",
            "--dataset",
            "cifar10",
            "--steps",
            "2",
            "--threads",
            "2",
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    (row,) = json.loads(out.read_text())
    assert result.exit_code == 0 and row["status"] == "PASS", row["message"]
    probes = {"adam hyper-parameters: update rule", "optimizer reset by set_weights", "dropout scaling"}
    assert probes <= set(row["checks"])
    settings = row["settings"]
    assert settings["engine"] == engine and settings["layout"] == "NHWC"
    assert settings["mode"] == {"jax": "jit (XLA)", "torch": "eager"}[engine]
    assert settings["intra_op_threads"] == 2


# --- Batch norm, residual blocks, stride-2 SAME convolutions, global pooling (issue 20) -----------
# Tiny models against the float64 reference with the conformance table's tolerances. The checks are
# plain functions of the engine keras runs on in the calling process: pytest runs them here on
# tensorflow, and a child Python runs them on jax and torch (KERAS_BACKEND is read once, at import).

TINY_RESNET = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))  # 8 -> 4 -> 2: uneven SAME pads
#: Batch norm before dropout: loss_and_gradients needs batch statistics with dropout off.
BN_DROPOUT = ModelSpec(
    "bn-dropout",
    (8, 8, 3),
    10,
    (
        Conv2D("conv", 4, 3, stride=2, activation=None, use_bias=False),
        BatchNorm("bn", activation="relu"),
        Dropout("dropout", 0.5),
        Flatten(),
        Dense("dense", 10, activation=None),
    ),
)
BATCH = 8


def drawn_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Glorot weights with batch norm away from the identity (gamma, beta and moving statistics drawn)."""
    weights = initial_weights(spec, "glorot-uniform", seed=seed)
    assert weights is not None
    rng = np.random.default_rng(seed + 100)
    for name, shape in spec.param_shapes().items():
        if name.endswith("/gamma"):
            weights[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith(("/beta", "/moving_mean", "/bias")):
            weights[name] = rng.normal(0.0, 0.2, shape).astype(np.float32)
        elif name.endswith("/moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return weights


def inputs(spec: ModelSpec, n: int = BATCH, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, (n, *spec.input_shape)).astype(np.float32)
    return x, rng.integers(0, spec.num_classes, n).astype(np.int64)


def drawn_session(engine: str, spec: ModelSpec, **config: Any) -> Any:
    session = KerasBackend().create_session(spec, TrainConfig(device="cpu", threads=2, **config), engine)
    session.set_weights(drawn_weights(spec))
    return session


def assert_scaled_close(actual: Any, expected: Any, rel: float, what: str) -> None:
    """|actual - expected| <= rel x max |expected| (the conformance table's scale-relative form)."""
    expected = np.asarray(expected, dtype=np.float64)
    bound = rel * max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=bound, err_msg=what)


def check_forward_and_gradients(engine: str) -> None:
    """Inference logits (moving statistics), then the training-mode loss and every trainable gradient."""
    for spec in (TINY_RESNET, BN_DROPOUT):
        session = drawn_session(engine, spec)
        x, y = inputs(spec)
        weights = session.get_weights()
        assert_scaled_close(session.predict(x), reference.forward(spec, weights, x), LOGITS_REL, f"{spec.name} logits")
        loss, grads = session.loss_and_gradients(x, y)
        ref_loss, ref_grads, _ = reference.loss_and_gradients(spec, weights, x, y)
        assert abs(loss - ref_loss) <= LOSS_REL * abs(ref_loss), (spec.name, loss, ref_loss)
        assert list(grads) == list(spec.trainable_shapes())
        for name, grad in grads.items():
            assert grad.shape == spec.trainable_shapes()[name], name
            assert_scaled_close(grad, ref_grads[name], GRAD_REL, f"{spec.name} {name}")
        session.close()


def check_moving_statistics(engine: str, **config: Any) -> None:
    """Momentum 0.9 and the biased batch variance, once per train_batches step, as the spec's update rule."""
    spec = TINY_RESNET
    session = drawn_session(engine, spec, optimizer="sgd", learning_rate=0.1, **config)
    x, y = inputs(spec, 2 * BATCH)
    session.load_data(x, y, x, y)
    for step in range(2):
        before = session.get_weights()
        rows = np.arange(step * BATCH, (step + 1) * BATCH, dtype=np.int64)
        expected = reference.moving_statistics(spec, before, x[rows])
        session.train_batches(rows[None])
        after = session.get_weights()
        assert set(expected) == set(spec.state_shapes())
        for name, value in expected.items():
            assert_scaled_close(after[name], value, STATE_REL, f"step {step + 1}: {name}")
            assert not np.array_equal(after[name], before[name]), name
    # Inference after training: the moving statistics the session now holds.
    after = session.get_weights()
    assert_scaled_close(session.predict(x), reference.forward(spec, after, x), LOGITS_REL, "logits after training")
    session.close()


def check_nothing_changes(engine: str) -> None:
    """loss_and_gradients and predict leave weights, moving statistics and dropout rates alone."""
    for spec in (TINY_RESNET, BN_DROPOUT):
        session = drawn_session(engine, spec)
        x, y = inputs(spec)
        before = session.get_weights()
        logits = session.predict(x)
        first = session.loss_and_gradients(x, y)
        again = session.loss_and_gradients(x, y)
        after = session.get_weights()
        for name in before:
            assert np.array_equal(before[name], after[name]), f"{spec.name}: {name} moved"
        assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
        np.testing.assert_array_equal(session.predict(x), logits)
        assert [layer.rate for layer in session.dropouts] == [0.5] * (spec is BN_DROPOUT)
        session.close()


def check_weights_round_trip(engine: str) -> None:
    spec = TINY_RESNET
    session = drawn_session(engine, spec)
    weights = drawn_weights(spec, seed=3)
    session.set_weights(weights)
    back = session.get_weights()
    assert list(back) == list(spec.param_shapes())
    for name, value in weights.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
    layer = session.weighted["bn"]
    assert np.array_equal(
        session.ops.convert_to_numpy(session.ops.copy(layer.moving_variance)), weights["bn/moving_variance"]
    )
    assert session.weighted["s2b1_conv1"].bias is None and session.weighted["s2b1_conv1"].strides == (2, 2)
    # oneDNN's strided 1x1 filter gradient is wrong on AVX2: on its engines the stride is a 1x1 max-pool first.
    names = [layer.name for layer in session.model.layers]
    projection = session.weighted["s2b1_proj"]
    if engine in ONEDNN_ENGINES:
        assert projection.strides == (1, 1) and "s2b1_proj_subsample" in names, names
        assert "1x1 MaxPooling2D" in session.settings()["strided_1x1_conv"]
    else:
        assert projection.strides == (2, 2) and "s2b1_proj_subsample" not in names, names
        assert "strided_1x1_conv" not in session.settings()
    back["bn/moving_mean"][:] = 99.0  # a copy, not a view of the variable
    assert not np.array_equal(session.get_weights()["bn/moving_mean"], back["bn/moving_mean"])
    session.close()


def check_framework_init_is_the_identity(engine: str) -> None:
    session = KerasBackend().create_session(TINY_RESNET, TrainConfig(device="cpu", init="framework"), engine)
    weights = session.get_weights()
    for name, start in {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}.items():
        assert np.all(weights[f"s2b1_bn1/{name}"] == start), name
    session.close()


NEW_LAYER_CHECKS = {
    "forward and gradients": check_forward_and_gradients,
    "moving statistics": check_moving_statistics,
    "nothing changes": check_nothing_changes,
    "weights round trip": check_weights_round_trip,
    "framework init": check_framework_init_is_the_identity,
}


def run_new_layer_checks(engine: str) -> None:
    """Every NEW_LAYER_CHECKS entry on ``engine`` (keras must run on it in this process); prints their times."""
    import keras

    assert keras.backend.backend() == engine, keras.backend.backend()
    for name, check in NEW_LAYER_CHECKS.items():
        start = time.perf_counter()
        check(engine)
        print(f"{engine}: {name} ok ({time.perf_counter() - start:.1f} s)", flush=True)


@pytest.mark.parametrize("check", list(NEW_LAYER_CHECKS))
def test_new_layers_on_the_tensorflow_engine(keras_tf, check):
    NEW_LAYER_CHECKS[check]("tensorflow")


def test_moving_statistics_with_xla_on_the_tensorflow_engine(keras_tf):
    check_moving_statistics("tensorflow", backend_options={"keras.jit_compile": "true"})


def run_on_engine(engine: str, call: str) -> str:
    """Run ``call`` (Python naming this module ``module``) in a child Python whose keras runs on ``engine``."""
    if reason := missing_module_reason(engine, extra=engine):
        pytest.skip(reason)
    env = {**os.environ, **BACKEND.process_environment(engine, TrainConfig(device="cpu", threads=2))}
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('keras_checks', {str(Path(__file__))!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"{call}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    return result.stdout


@pytest.mark.parametrize("engine", ["jax", "torch"])
def test_new_layers_on_engine_in_a_child_process(engine):
    """The same checks with keras imported on ``engine`` (jax: jit_compile on, its default; torch: eager)."""
    out = run_on_engine(engine, f"module.run_new_layer_checks({engine!r})")
    assert out.count(" ok (") == len(NEW_LAYER_CHECKS), out


@pytest.mark.slow  # torch.compile of Keras' per-layer graphs: about a minute on 2 cores
def test_moving_statistics_with_jit_compile_on_the_torch_engine():
    run_on_engine("torch", "module.check_moving_statistics('torch', backend_options={'keras.jit_compile': 'true'})")


def test_lenet_stays_a_sequential_and_resnet_is_functional(session_for):
    import keras

    assert type(session_for(MNIST_LENET).model) is keras.Sequential
    model = session_for(TINY_RESNET).model
    assert not isinstance(model, keras.Sequential)
    assert {"s2b1_add", "s2b1", "bn_relu", "global_pool"} <= {layer.name for layer in model.layers}


def test_batch_norm_with_several_devices_is_refused(keras_tf):
    with pytest.raises(BackendUnavailable, match="batch norm with --devices > 1"):
        BACKEND.create_session(TINY_RESNET, TrainConfig(device="cpu", devices=2), "tensorflow")


def test_backend_declares_every_layer():
    assert KerasBackend.layers == frozenset(LAYER_TYPES)
    assert model_unsupported_reason(BACKEND, zoo.resnet20((32, 32, 3), 10)) is None
