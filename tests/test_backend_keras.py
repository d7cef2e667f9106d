"""The Keras backend: the spec's model, canonical weights, parity with PyTorch, Keras-way training.

Keras fixes its engine when it is first imported, so the tensorflow engine is tested in this
process and the jax and torch engines each run one short script in a subprocess started with
the environment ``KerasBackend.process_environment`` gives the harness's workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnbench.backend import missing_module_reason
from cnnbench.config import TrainConfig
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendUnavailable, UsageError
from cnnbench.frameworks import TENSORFLOW
from cnnbench.initializers import initial_weights
from cnnbench.spec import CIFAR_LENET, MNIST_LENET
from cnnbench_keras.backend import KerasBackend

BACKEND = KerasBackend()
SPECS = {"mnist": MNIST_LENET, "cifar": CIFAR_LENET}
CONFIG = TrainConfig(threads=2)

pytestmark = pytest.mark.skipif(BACKEND.unavailable_reason() is not None, reason=str(BACKEND.unavailable_reason()))


def small_batch(spec, n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, *spec.input_shape), dtype=np.float32), rng.integers(0, spec.num_classes, n)


def synthetic(spec, n, seed=0, noise=0.3):
    x, y = make_synthetic(n, spec.input_shape, spec.num_classes, seed, noise=noise)
    return x.astype(np.float32) / 255, y


def torch_reference(spec, weights, x, y):
    """Logits, loss and gradients of the PyTorch backend for the same canonical weights."""
    torch_backend = pytest.importorskip("cnnbench_torch.backend")
    session = torch_backend.TorchBackend().create_session(spec, CONFIG)
    session.set_weights(weights)
    logits = session.predict(x)
    loss, grads = session.loss_and_gradients(x, y)
    session.close()
    return logits, loss, grads


def assert_matches_reference(logits, loss, grads, reference):
    ref_logits, ref_loss, ref_grads = reference
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def keras_tf():
    """keras on its tensorflow engine in this process (KERAS_BACKEND is read once, at import)."""
    if "keras" not in sys.modules:
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "tensorflow"
        try:
            import keras  # noqa: F401
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
    with pytest.raises(UsageError, match="keras.jit_compile"):
        BACKEND.process_environment("tensorflow", TrainConfig(backend_options={"keras.jit_compile": "maybe"}))


def test_framework_version_names_keras_and_the_engine():
    for engine in BACKEND.variants:
        version = BACKEND.framework_version(engine)
        assert version.startswith(BACKEND.framework_version().split(" ")[0]) and f"({engine} " in version


# --- The tensorflow engine, in this process ---------------------------------------------------


@pytest.mark.parametrize("variant", SPECS)
def test_model_matches_the_spec(session_for, variant):
    spec = SPECS[variant]
    session = session_for(spec)
    assert session.model.count_params() == spec.num_params
    weights = session.get_weights()
    assert {name: w.shape for name, w in weights.items()} == spec.param_shapes()
    assert sum(w.size for w in weights.values()) == spec.num_params


def test_weights_round_trip_and_shape_errors(session_for):
    session = session_for(MNIST_LENET)
    weights = initial_weights(MNIST_LENET, "normal", seed=3)
    session.set_weights(weights)
    for name, value in session.get_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    weights["dense1/kernel"] = weights["dense1/kernel"].T
    with pytest.raises(ValueError, match="dense1/kernel"):
        session.set_weights(weights)


@pytest.mark.parametrize("variant", SPECS)
def test_logits_loss_and_gradients_match_pytorch(session_for, variant):
    spec = SPECS[variant]
    weights = initial_weights(spec, "glorot-uniform", seed=0)
    x, y = small_batch(spec)
    session = session_for(spec)
    session.set_weights(weights)
    loss, grads = session.loss_and_gradients(x, y)
    assert_matches_reference(session.predict(x), loss, grads, torch_reference(spec, weights, x, y))
    for name, value in session.get_weights().items():  # weights unchanged
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_dropout_is_active_in_training_only(session_for):
    session = session_for(CIFAR_LENET)
    x, _ = small_batch(CIFAR_LENET)
    np.testing.assert_array_equal(session.predict(x), session.predict(x))
    first, second = (np.asarray(session.model(x, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(np.asarray(session.model(x, training=False)), session.predict(x), atol=1e-6)


def test_loss_decreases_on_synthetic_data(session_for):
    session = session_for(MNIST_LENET)
    x, y = synthetic(MNIST_LENET, 600)
    session.set_weights(initial_weights(MNIST_LENET, "glorot-uniform", seed=0))
    session.load_data(x, y, x[:100], y[:100])
    losses = session.train_batches(np.random.default_rng(0).permutation(600).reshape(30, 20))
    assert losses.shape == (30,) and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.75 * losses[:5].mean()  # measured: ~0.6


def test_batch_order_is_honoured_and_losses_are_per_batch(session_for):
    """Same order twice: same weights; another order: other weights; each loss is its batch's own."""
    spec = MNIST_LENET
    x, y = synthetic(spec, 120)
    weights = initial_weights(spec, "glorot-uniform", seed=0)
    order = np.random.default_rng(1).permutation(120).reshape(4, 30)
    session = session_for(spec)
    session.load_data(x, y, x[:30], y[:30])

    def train(indices):
        session.set_weights(weights)  # also resets the optimizer
        losses = session.train_batches(indices)
        return losses, session.get_weights()

    losses_a, weights_a = train(order)
    losses_again, weights_again = train(order)
    _, weights_b = train(order[::-1])
    np.testing.assert_array_equal(losses_a, losses_again)
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_again[name], err_msg=name)
    assert any(not np.allclose(weights_a[name], weights_b[name]) for name in weights_a)

    # One batch at a time, each loss taken before its step: the returned losses are per batch
    # (not Keras' running mean), and chunked calls continue the same optimizer.
    session.set_weights(weights)
    for row, expected in zip(order, losses_a):
        loss, _ = session.loss_and_gradients(x[row], y[row])
        assert loss == pytest.approx(expected, rel=1e-5)
        assert session.train_batches(row[None, :])[0] == pytest.approx(expected, rel=1e-5)


def test_evaluate_agrees_with_predict(session_for):
    spec = MNIST_LENET
    x, y = synthetic(spec, 50, seed=5)
    session = session_for(spec)
    session.load_data(x, y, x, y)
    logits = session.predict(x).astype(np.float64)
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    loss, accuracy = session.evaluate(batch_size=20)  # 20 does not divide 50
    assert loss == pytest.approx(-log_probs[np.arange(50), y].mean(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(axis=1) == y).mean())


def test_settings_record_engine_threads_and_jit_compile(session_for):
    settings = session_for(MNIST_LENET).settings()
    assert settings["engine"] == "tensorflow" and settings["layout"] == "NHWC"
    assert settings["jit_compile"] is False and settings["mode"] == "graph (tf.function)"
    assert settings["intra_op_threads"] >= 1 and settings["precision"] == "float32"
    xla = session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "true"})).settings()
    assert xla["jit_compile"] is True and xla["mode"] == "graph + XLA" and xla["jit_compile_requested"] == "true"
    with pytest.raises(UsageError, match="keras.jit_compile"):
        session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "fast"}))


def test_cuda_request_without_a_gpu_is_unavailable(keras_tf):
    if TENSORFLOW.gpu_name() is not None:
        pytest.skip("a GPU is visible to TensorFlow")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        BACKEND.create_session(MNIST_LENET, TrainConfig(device="cuda"), "tensorflow")


# --- The jax and torch engines, each in a subprocess -------------------------------------------

ENGINE_SCRIPT = """
import json, sys
import numpy as np
from cnnbench.config import TrainConfig
from cnnbench.spec import CIFAR_LENET, MNIST_LENET
from cnnbench_keras.backend import KerasBackend

inputs, outputs, engine = np.load(sys.argv[1]), {}, sys.argv[3]
for variant, spec in (("mnist", MNIST_LENET), ("cifar", CIFAR_LENET)):
    session = KerasBackend().create_session(spec, TrainConfig(threads=2), engine)
    session.set_weights({k.split(":", 2)[2]: v for k, v in inputs.items() if k.startswith(variant + ":w:")})
    x, y = inputs[variant + ":x"], inputs[variant + ":y"]
    outputs[variant + ":logits"] = session.predict(x)
    loss, grads = session.loss_and_gradients(x, y)
    outputs[variant + ":loss"] = np.float64(loss)
    outputs.update({f"{variant}:g:{name}": g for name, g in grads.items()})
    if variant == "mnist":
        session.load_data(x, y, x, y)
        outputs["mnist:train_losses"] = session.train_batches(inputs["mnist:order"])
        outputs["mnist:evaluate"] = np.array(session.evaluate(4))
        outputs["settings"] = np.array(json.dumps(session.settings()))
    session.close()
np.savez(sys.argv[2], **outputs)
"""


@pytest.mark.parametrize("engine", ["jax", "torch"])
def test_engine_in_subprocess_matches_pytorch_and_trains(tmp_path, engine):
    if reason := missing_module_reason(engine, extra=engine):
        pytest.skip(reason)
    inputs, references = {}, {}
    for variant, spec in SPECS.items():
        weights = initial_weights(spec, "glorot-uniform", seed=0)
        x, y = small_batch(spec)
        inputs.update({f"{variant}:w:{name}": w for name, w in weights.items()})
        inputs.update({f"{variant}:x": x, f"{variant}:y": y})
        references[variant] = torch_reference(spec, weights, x, y)
    inputs["mnist:order"] = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]])
    np.savez(tmp_path / "inputs.npz", **inputs)

    env = dict(os.environ, **BACKEND.process_environment(engine, CONFIG))
    command = [sys.executable, "-c", ENGINE_SCRIPT, str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz"), engine]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "outputs.npz")

    for variant in SPECS:
        grads = {key.split(":", 2)[2]: out[key] for key in out.files if key.startswith(variant + ":g:")}
        assert_matches_reference(out[variant + ":logits"], float(out[variant + ":loss"]), grads, references[variant])
    losses = out["mnist:train_losses"]
    x, y = inputs["mnist:x"], inputs["mnist:y"]
    mnist_torch = torch_reference(MNIST_LENET, initial_weights(MNIST_LENET, "glorot-uniform", seed=0), x[:4], y[:4])
    assert losses[0] == pytest.approx(mnist_torch[1], rel=1e-5)  # the first batch's own loss, before its step
    assert losses[2] < losses[0]  # the same batch again, after two Adam steps
    loss, accuracy = out["mnist:evaluate"]
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    settings = json.loads(str(out["settings"]))
    assert settings["engine"] == engine and settings["layout"] == "NHWC"
    assert settings["mode"] == {"jax": "jit (XLA)", "torch": "eager"}[engine]
    assert settings["intra_op_threads"] == 2
