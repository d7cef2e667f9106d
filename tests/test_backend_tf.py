"""The TensorFlow raw-ops backend: the conformance kit, then what is specific to it (init, XLA, oneDNN, devices).

Spec conformance, parity with the float64 reference, the optimizers and dropout are the kit's
(``cnnbench.testing``), the same checks every backend passes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cnnbench.config import TrainConfig
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendError, BackendUnavailable
from cnnbench.initializers import initial_weights
from cnnbench.spec import MNIST_LENET
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
