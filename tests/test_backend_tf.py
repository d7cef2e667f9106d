"""The TensorFlow raw-ops backend: spec conformance, parity with PyTorch, optimizer and dropout behaviour."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig  # noqa: E402
from cnnbench.datasets.synthetic import make_synthetic  # noqa: E402
from cnnbench.errors import BackendError, BackendUnavailable  # noqa: E402
from cnnbench.initializers import initial_weights  # noqa: E402
from cnnbench.spec import CIFAR_LENET, MNIST_LENET  # noqa: E402
from cnnbench_tf.backend import TFRawBackend  # noqa: E402

SPECS = {"mnist": MNIST_LENET, "cifar": CIFAR_LENET}


def make_session(spec, **config):
    config.setdefault("threads", 2)
    session = TFRawBackend().create_session(spec, TrainConfig(**config))
    session.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
    return session


def synthetic(spec, n, seed=0):
    """Scaled synthetic images; noise 0.3 so that a LeNet visibly learns within 30 steps."""
    x, y = make_synthetic(n, spec.input_shape, spec.num_classes, seed, noise=0.3)
    return (x / np.float32(255)).astype(np.float32), y


def load_synthetic(session, spec, n_train=256, n_test=64):
    x_train, y_train = synthetic(spec, n_train, seed=0)
    x_test, y_test = synthetic(spec, n_test, seed=1)
    session.load_data(x_train, y_train, x_test, y_test)
    return x_test, y_test


@pytest.fixture(scope="module", params=sorted(SPECS))
def variant(request):
    """(spec, a session with the harness's glorot-uniform weights) per variant, shared by read-only tests."""
    spec = SPECS[request.param]
    return spec, make_session(spec)


def test_parameter_count_and_canonical_shapes(variant):
    spec, session = variant
    weights = session.get_weights()
    assert {name: w.shape for name, w in weights.items()} == spec.param_shapes()
    assert sum(w.size for w in weights.values()) == spec.num_params
    assert all(w.dtype == np.float32 for w in weights.values())


def test_framework_init_is_seeded_and_not_the_harness_weights():
    first = TFRawBackend().create_session(MNIST_LENET, TrainConfig(threads=2, seed=3, init="framework")).get_weights()
    again = TFRawBackend().create_session(MNIST_LENET, TrainConfig(threads=2, seed=3, init="framework")).get_weights()
    other = TFRawBackend().create_session(MNIST_LENET, TrainConfig(threads=2, seed=4, init="framework")).get_weights()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["conv1/kernel"], other["conv1/kernel"])
    assert np.all(first["dense1/bias"] == 0) and first["dense1/kernel"].std() > 0


def test_set_get_weights_round_trip_and_shape_check():
    spec = MNIST_LENET
    session = make_session(spec)
    weights = initial_weights(spec, "normal", seed=7)
    session.set_weights(weights)
    assert all(np.array_equal(session.get_weights()[k], weights[k]) for k in weights)
    bad = dict(weights, **{"dense1/kernel": weights["dense1/kernel"].T})
    with pytest.raises(BackendError, match="dense1/kernel"):
        session.set_weights(bad)


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    from cnnbench_torch.backend import TorchBackend

    return TorchBackend()


def test_logits_loss_and_gradients_match_pytorch(variant, torch_backend):
    """Same canonical weights, same inputs: a layout, padding or flatten-order bug shows up here."""
    spec, session = variant
    reference = torch_backend.create_session(spec, TrainConfig(threads=2))
    reference.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
    x, y = synthetic(spec, 8, seed=5)
    np.testing.assert_allclose(session.predict(x), reference.predict(x), atol=1e-4, rtol=0)
    loss, grads = session.loss_and_gradients(x, y)
    ref_loss, ref_grads = reference.loss_and_gradients(x, y)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(grads[name], ref_grads[name], atol=1e-4 * max(scale, 1e-3), rtol=0, err_msg=name)


def test_loss_and_gradients_leave_weights_alone(variant):
    spec, session = variant
    before = session.get_weights()
    x, y = synthetic(spec, 4, seed=6)
    first = session.loss_and_gradients(x, y)
    second = session.loss_and_gradients(x, y)
    assert first[0] == second[0]  # dropout inactive: deterministic
    assert all(np.array_equal(before[k], session.get_weights()[k]) for k in before)


def test_one_adam_step_is_pytorch_form_adam():
    """The first step from zero moments, computed by hand with the harness's hyper-parameters."""
    spec = MNIST_LENET
    session = make_session(spec, optimizer="adam", learning_rate=1e-3)
    load_synthetic(session, spec, n_train=16)
    before = session.get_weights()
    _, grads = session.loss_and_gradients(*synthetic(spec, 16, seed=0))
    session.train_batches(np.arange(16, dtype=np.int64).reshape(1, 16))
    after = session.get_weights()
    for name, g in grads.items():
        g = g.astype(np.float64)
        m_hat = (1 - ADAM_BETA1) * g / (1 - ADAM_BETA1)
        v_hat = (1 - ADAM_BETA2) * g**2 / (1 - ADAM_BETA2)
        expected = before[name] - 1e-3 * m_hat / (np.sqrt(v_hat) + ADAM_EPSILON)
        np.testing.assert_allclose(after[name], expected, atol=2e-7, rtol=0, err_msg=name)


def test_sgd_step_is_plain_gradient_descent_and_set_weights_resets_adam():
    spec = MNIST_LENET
    session = make_session(spec, optimizer="sgd", learning_rate=0.05)
    load_synthetic(session, spec, n_train=16)
    before = session.get_weights()
    _, grads = session.loss_and_gradients(*synthetic(spec, 16, seed=0))
    session.train_batches(np.arange(16, dtype=np.int64).reshape(1, 16))
    after = session.get_weights()
    for name in grads:
        np.testing.assert_allclose(after[name], before[name] - 0.05 * grads[name], atol=1e-6, rtol=0, err_msg=name)

    adam = make_session(spec, optimizer="adam")
    load_synthetic(adam, spec, n_train=16)
    rows = np.arange(16, dtype=np.int64).reshape(1, 16)
    weights = adam.get_weights()
    adam.train_batches(rows)
    first = adam.get_weights()
    adam.set_weights(weights)  # resets moments and step: the same first step again
    adam.train_batches(rows)
    assert all(np.array_equal(first[k], adam.get_weights()[k]) for k in first)


def test_dropout_only_in_training():
    spec = CIFAR_LENET
    session = make_session(spec, seed=0)
    x_test, y_test = load_synthetic(session, spec, n_train=32)
    np.testing.assert_array_equal(session.predict(x_test), session.predict(x_test))
    weights = session.get_weights()
    eval_loss = session.loss_and_gradients(*synthetic(spec, 32, seed=0))[0]  # the training images
    rows = np.arange(32, dtype=np.int64).reshape(1, 32)
    first = session.train_batches(rows)  # the loss before the step: initial weights, dropout active
    session.set_weights(weights)
    second = session.train_batches(rows)  # same weights and batch, new dropout masks
    assert first[0] != second[0]
    assert eval_loss not in (first[0], second[0])


def test_dropout_follows_the_seed():
    spec = CIFAR_LENET
    rows = np.arange(32, dtype=np.int64).reshape(1, 32)
    losses = {}
    for name, seed in (("a", 0), ("a again", 0), ("b", 1)):
        session = make_session(spec, seed=seed)
        load_synthetic(session, spec, n_train=32)
        losses[name] = session.train_batches(rows)[0]
    assert losses["a"] == losses["a again"]
    assert losses["a"] != losses["b"]


def test_loss_decreases_on_synthetic_data():
    spec = MNIST_LENET
    session = make_session(spec)
    load_synthetic(session, spec, n_train=960)
    rows = np.random.default_rng(0).permutation(960).reshape(30, 32)
    losses = session.train_batches(rows)
    assert losses.shape == (30,) and losses.dtype == np.float64
    assert losses[-5:].mean() < 0.7 * losses[:3].mean()
    loss, accuracy = session.evaluate(batch_size=25)  # 64 test images: a partial last batch
    assert 0.5 < accuracy <= 1.0 and loss < losses[0]


def test_evaluate_agrees_with_predict_and_loss():
    spec = MNIST_LENET
    session = make_session(spec)
    x_test, y_test = load_synthetic(session, spec)
    loss, accuracy = session.evaluate(batch_size=30)
    assert accuracy == pytest.approx(np.mean(session.predict(x_test).argmax(axis=1) == y_test))
    assert loss == pytest.approx(session.loss_and_gradients(x_test, y_test)[0], rel=1e-5)


def test_batch_order_is_honoured_and_deterministic():
    spec = MNIST_LENET
    rows = np.random.default_rng(1).permutation(128).reshape(4, 32)
    results = []
    for order in (rows, rows, rows[::-1]):
        session = make_session(spec)
        load_synthetic(session, spec, n_train=128)
        losses = session.train_batches(order)
        results.append((losses, session.get_weights()))
    (losses_a, weights_a), (losses_again, weights_again), (losses_b, weights_b) = results
    np.testing.assert_array_equal(losses_a, losses_again)
    assert all(np.array_equal(weights_a[k], weights_again[k]) for k in weights_a)
    assert losses_a[0] != losses_b[0]
    assert not np.array_equal(weights_a["dense1/kernel"], weights_b["dense1/kernel"])


def test_settings_record_mode_threads_and_xla():
    spec = MNIST_LENET
    plain = make_session(spec).settings()
    assert plain["mode"] == "graph (tf.function)" and plain["xla"] is False
    assert plain["intra_op_threads"] == 2 and plain["precision"] == "float32" and plain["layout"] == "NHWC"
    xla_session = make_session(spec, backend_options={"tf.xla": "true"})
    settings = xla_session.settings()
    assert settings["mode"] == "graph + XLA" and settings["xla"] is True
    x, _ = synthetic(spec, 4, seed=2)
    np.testing.assert_allclose(xla_session.predict(x), make_session(spec).predict(x), atol=1e-4, rtol=0)


def test_onednn_option_reaches_the_worker_environment():
    backend = TFRawBackend()
    assert backend.process_environment(None, TrainConfig()) == {}
    off = TrainConfig(backend_options={"tf.onednn": "false"})
    assert backend.process_environment(None, off) == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_cuda_request_without_gpu_is_unavailable():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(BackendUnavailable, match="GPU"):
        TFRawBackend().create_session(MNIST_LENET, TrainConfig(device="cuda"))


def test_train_before_load_data_is_a_backend_error():
    session = make_session(MNIST_LENET)
    with pytest.raises(BackendError, match="load_data"):
        session.train_batches(np.zeros((1, 4), dtype=np.int64))


def test_listing_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from cnnbench.plugins import load_registry\n"
        "registry = load_registry()\n"
        "backend = registry.backend('tf').item\n"
        "assert backend.unavailable_reason() is None, backend.unavailable_reason()\n"
        "print(backend.framework, backend.framework_version())\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TensorFlow 2.")
