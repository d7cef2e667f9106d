"""The TensorFlow raw-ops backend: the conformance kit, then what is specific to it (init, XLA, oneDNN, devices,
the layers beyond the LeNet's: batch norm, residual blocks, stride-2 SAME convolutions, global average pooling).

Spec conformance, parity with the float64 reference, the optimizers and dropout are the kit's
(``cnnbench.testing``), the same checks every backend passes.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cnnbench import reference as ref
from cnnbench.config import TrainConfig
from cnnbench.conformance.tolerances import GRAD_REL, KINK_REL, LOGITS_REL, LOSS_REL, ROUNDING, STATE_REL
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendError, BackendUnavailable
from cnnbench.frameworks import TENSORFLOW
from cnnbench.initializers import initial_weights
from cnnbench.models import zoo
from cnnbench.spec import LAYER_TYPES, MNIST_LENET, is_state
from cnnbench.testing import BackendConformance
from cnnbench_tf.backend import TFRawBackend


class TestTFConformance(BackendConformance):
    backend = TFRawBackend()
    threads = 2  # TensorFlow fixes its thread pools at the first session: the count this file's sessions use


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


def test_settings_record_mode_threads_and_xla():
    spec = MNIST_LENET
    plain = make_session(spec).settings()
    assert plain["mode"] == "graph (tf.function)" and plain["xla"] is False
    # TF fixes its thread pools once per process: an earlier test in this process may have fixed another count,
    # so the manifest must report what TF actually runs with, not what this session asked for.
    import tensorflow as tf

    assert plain["intra_op_threads"] == (tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())
    assert plain["precision"] == "float32" and plain["layout"] == "NHWC"
    xla_session = make_session(spec, backend_options={"tf.xla": "true"})
    settings = xla_session.settings()
    assert settings["mode"] == "graph + XLA" and settings["xla"] is True
    x, _ = synthetic(spec, 4, seed=2)
    np.testing.assert_allclose(xla_session.predict(x), make_session(spec).predict(x), atol=1e-4, rtol=0)


def test_onednn_is_on_for_x86_unless_the_environment_or_the_option_says_otherwise(monkeypatch):
    backend = TFRawBackend()
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert backend.process_environment(None, TrainConfig()) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    off = TrainConfig(backend_options={"tf.onednn": "false"})
    assert backend.process_environment(None, off) == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # TensorFlow's own default there
    assert backend.process_environment(None, TrainConfig()) == {}
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # the user's choice stands
    assert backend.process_environment(None, TrainConfig()) == {}
    assert TENSORFLOW.recorded_environment() == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_cuda_request_without_gpu_is_unavailable():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(BackendUnavailable, match="GPU"):
        TFRawBackend().create_session(MNIST_LENET, TrainConfig(device="cuda"))


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


# ---- the layers beyond the LeNet's, against the float64 reference ---------------------------------------------

TINY_RESNET = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))  # stride 2, projections, GAP
SMALL_VGG = zoo.vgg8((8, 8, 3), 10)
BATCH = 8


def model_weights(spec, seed=0):
    """Harness weights with batch norm moved off the identity, so inference and training statistics differ."""
    weights = initial_weights(spec, "glorot-uniform", seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, value in weights.items():
        if name.endswith("/gamma"):
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif name.endswith(("/beta", "/moving_mean")):
            weights[name] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
        elif name.endswith("/moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
    return weights


def assert_scaled_close(actual, expected, rel, what, extra=0.0):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    bound = rel * np.abs(expected).max() + extra
    error = np.abs(actual - expected)
    assert np.all(error <= bound), f"{what}: max error {error.max():.3g} over the bound {np.max(bound):.3g}"


@pytest.fixture(scope="module", params=["graph", "xla"])
def resnet_session(request):
    options = {"tf.xla": "true"} if request.param == "xla" else {}
    session = TFRawBackend().create_session(
        TINY_RESNET, TrainConfig(threads=2, optimizer="sgd", learning_rate=0.1, backend_options=options)
    )
    yield session
    session.close()


def test_backend_declares_every_layer():
    assert TFRawBackend.layers == frozenset(LAYER_TYPES)


def test_resnet_weights_are_the_spec_s_and_round_trip(resnet_session):
    spec = TINY_RESNET
    exported = resnet_session.get_weights()
    assert list(exported) == list(spec.param_shapes())
    assert {name: value.shape for name, value in exported.items()} == spec.param_shapes()
    assert not any(name.endswith("/bias") for name in exported if "conv" in name or "proj" in name)
    weights = model_weights(spec, seed=3)
    resnet_session.set_weights(weights)
    again = resnet_session.get_weights()
    assert all(np.array_equal(again[name], weights[name]) for name in weights)


def test_a_strided_1x1_convolution_is_a_slice_then_a_stride_1_one(resnet_session):
    # oneDNN's strided 1x1 filter gradient is wrong on AVX2; the gradient tests here run with oneDNN on (conftest).
    assert "stride-1 1x1 conv" in resnet_session.settings()["strided_1x1_conv"]
    lenet = TFRawBackend().create_session(MNIST_LENET, TrainConfig(threads=2))
    assert "strided_1x1_conv" not in lenet.settings()
    lenet.close()


def test_framework_init_starts_batch_norm_as_the_identity():
    session = TFRawBackend().create_session(TINY_RESNET, TrainConfig(threads=2, init="framework"))
    weights = session.get_weights()
    assert np.all(weights["bn/gamma"] == 1) and np.all(weights["bn/beta"] == 0)
    assert np.all(weights["s2b1_proj_bn/moving_mean"] == 0) and np.all(weights["s2b1_proj_bn/moving_variance"] == 1)
    assert weights["s3b1_conv1/kernel"].std() > 0


def test_resnet_predict_uses_the_moving_statistics(resnet_session):
    spec, weights = TINY_RESNET, model_weights(TINY_RESNET)
    resnet_session.set_weights(weights)
    x, _ = synthetic(spec, BATCH, seed=4)
    expected = ref.forward(spec, weights, x)
    assert_scaled_close(resnet_session.predict(x), expected, LOGITS_REL, "logits (inference)")
    training_mode = ref.forward(spec, weights, x, training=True)
    assert np.abs(training_mode - expected).max() > 100 * LOGITS_REL * np.abs(expected).max()  # the test can tell


def test_resnet_gradients_use_batch_statistics_and_change_nothing(resnet_session):
    spec, weights = TINY_RESNET, model_weights(TINY_RESNET)
    resnet_session.set_weights(weights)
    x, y = synthetic(spec, BATCH, seed=5)
    loss_ref, grads_ref, _, kinks, _ = ref.gradients_and_kinks(spec, weights, x, y, KINK_REL)
    loss, grads = resnet_session.loss_and_gradients(x, y)
    assert abs(loss - loss_ref) <= LOSS_REL * abs(loss_ref)
    assert set(grads) == set(spec.trainable_shapes())
    for name, expected in grads_ref.items():
        assert_scaled_close(grads[name], expected, GRAD_REL, f"gradient {name}", kinks[name])
    after = resnet_session.get_weights()
    assert all(np.array_equal(after[name], weights[name]) for name in weights), "loss_and_gradients changed weights"


def test_resnet_training_step_updates_the_moving_statistics(resnet_session):
    spec, weights = TINY_RESNET, model_weights(TINY_RESNET)
    resnet_session.set_weights(weights)
    x_test, _ = load_synthetic(resnet_session, spec, n_train=32, n_test=8)
    x_train, y_train = synthetic(spec, 32, seed=0)
    rows = np.array([[3, 17, 5, 30, 0, 9, 22, 11]], dtype=np.int64)
    losses = resnet_session.train_batches(rows)
    loss_ref, grads_ref, _, kinks, _ = ref.gradients_and_kinks(
        spec, weights, x_train[rows[0]], y_train[rows[0]], KINK_REL
    )
    assert abs(losses[0] - loss_ref) <= LOSS_REL * abs(loss_ref)
    after = resnet_session.get_weights()
    expected_state = ref.moving_statistics(spec, weights, x_train[rows[0]])
    assert set(expected_state) == set(spec.state_shapes())
    for name, expected in expected_state.items():
        assert_scaled_close(after[name], expected, STATE_REL, name, ROUNDING * np.abs(expected))
    for name, grad in grads_ref.items():  # one SGD step (lr 0.1) on the training-mode gradients
        expected = weights[name] - 0.1 * grad
        allowed = 0.1 * (GRAD_REL * np.abs(grad).max() + kinks[name]) + ROUNDING * np.abs(expected)
        assert_scaled_close(after[name], expected, 0.0, name, allowed)
    # Inference now runs on the updated statistics.
    expected_logits = ref.forward(spec, after, x_test)
    assert_scaled_close(resnet_session.predict(x_test), expected_logits, LOGITS_REL, "logits after a step")


def test_vgg8_matches_the_reference():
    spec = SMALL_VGG
    session = TFRawBackend().create_session(spec, TrainConfig(threads=2))
    weights = initial_weights(spec, "glorot-uniform", seed=1)
    session.set_weights(weights)
    x, y = synthetic(spec, BATCH, seed=6)
    assert_scaled_close(session.predict(x), ref.forward(spec, weights, x), LOGITS_REL, "logits")
    loss_ref, grads_ref, _, kinks, _ = ref.gradients_and_kinks(spec, weights, x, y, KINK_REL)
    loss, grads = session.loss_and_gradients(x, y)
    assert abs(loss - loss_ref) <= LOSS_REL * abs(loss_ref)
    for name, expected in grads_ref.items():
        assert_scaled_close(grads[name], expected, GRAD_REL, f"gradient {name}", kinks[name])


def test_batch_norm_on_several_devices_is_refused_by_name():
    from cnnbench import distributed
    from cnnbench_tf.mirrored import TFMirroredSession

    with pytest.raises(BackendUnavailable, match="batch norm with --devices > 1"):
        TFMirroredSession(TINY_RESNET, TrainConfig(threads=2, devices=2), {}, distributed.cluster())


def test_state_names_are_not_trainable(resnet_session):
    assert not any(is_state(name) for name in resnet_session.variables)
    assert all(not var.trainable for var in resnet_session.state.values())
