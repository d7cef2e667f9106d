"""The JAX backend: the conformance kit, then what is specific to it (keyed dropout, scan, compiles, settings).

Spec conformance, parity with the float64 reference, the optimizers and dropout statistics are
the kit's (``cnnbench.testing``), the same checks every backend passes.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

import itertools

from cnnbench.config import TrainConfig
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendError, BackendUnavailable, UsageError
from cnnbench.frameworks import PJRT_THREADS_ENV as THREADS_ENV
from cnnbench.initializers import initial_weights
from cnnbench.spec import MNIST_LENET, lenet
from cnnbench.testing import BackendConformance
from cnnbench_jax.backend import JaxBackend

#: The CIFAR variant's layers on 12x12 images: dropout behaviour at a fraction of the CPU time.
SMALL_DROPOUT = lenet((12, 12, 3), 10, dropout=0.2)


class TestJaxConformance(BackendConformance):
    backend = JaxBackend()


def make_session(spec, **config):
    config.setdefault("threads", 2)
    session = JaxBackend().create_session(spec, TrainConfig(**config))
    session.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
    return session


def synthetic(spec, n, seed=0, noise=0.5):
    x, y = make_synthetic(n, spec.input_shape, spec.num_classes, seed, noise=noise)
    return (x / np.float32(255)).astype(np.float32), y


def load_synthetic(session, spec, n_train=256, n_test=64, noise=0.5):
    x_train, y_train = synthetic(spec, n_train, seed=0, noise=noise)
    x_test, y_test = synthetic(spec, n_test, seed=1, noise=noise)
    session.load_data(x_train, y_train, x_test, y_test)
    return x_test, y_test


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_framework_init_is_seeded_and_not_the_harness_weights():
    def framework_weights(seed):
        return (
            JaxBackend().create_session(MNIST_LENET, TrainConfig(threads=2, seed=seed, init="framework")).get_weights()
        )

    first, again, other = framework_weights(3), framework_weights(3), framework_weights(4)
    assert same_weights(first, again)
    assert not np.array_equal(first["conv1/kernel"], other["conv1/kernel"])
    assert np.all(first["dense1/bias"] == 0) and first["dense1/kernel"].std() > 0


def test_set_get_weights_round_trip_copies_and_checks_shapes():
    spec = MNIST_LENET
    session = make_session(spec)
    weights = initial_weights(spec, "normal", seed=7)
    session.set_weights(weights)
    got = session.get_weights()
    assert same_weights(got, weights)
    got["conv1/bias"][:] = 123.0  # a copy: changing it leaves the session alone
    assert not np.any(session.get_weights()["conv1/bias"] == 123.0)
    with pytest.raises(BackendError, match="dense1/kernel"):
        session.set_weights(dict(weights, **{"dense1/kernel": weights["dense1/kernel"].T}))
    with pytest.raises(BackendError, match="conv2/bias"):
        session.set_weights({k: v for k, v in weights.items() if k != "conv2/bias"})


def test_dropout_only_in_training_and_keyed_by_seed_and_step():
    spec = SMALL_DROPOUT
    session = make_session(spec, optimizer="sgd", learning_rate=1e-12, seed=0)  # weights barely move
    x_test, _ = load_synthetic(session, spec, n_train=32)
    np.testing.assert_array_equal(session.predict(x_test), session.predict(x_test))
    eval_loss = session.loss_and_gradients(*synthetic(spec, 32, seed=0))[0]  # the training images
    weights = session.get_weights()
    rows = np.tile(np.arange(32, dtype=np.int64), (2, 1))
    step0, step1 = session.train_batches(rows)  # same batch, steps 0 and 1: different masks
    assert step0 != step1 and eval_loss not in (step0, step1)
    session.set_weights(weights)  # the dropout stream restarts with the weights
    assert session.train_batches(rows[:1])[0] == step0
    other_seed = make_session(spec, optimizer="sgd", learning_rate=1e-12, seed=1)
    load_synthetic(other_seed, spec, n_train=32)
    assert other_seed.train_batches(rows[:1])[0] != step0


def test_batch_order_is_honoured_and_deterministic_across_chunkings():
    spec = SMALL_DROPOUT  # with dropout: the masks must follow the step, not the call
    session = make_session(spec)
    load_synthetic(session, spec, n_train=96)
    weights = session.get_weights()
    rows = np.random.default_rng(1).permutation(96).reshape(4, 24)
    runs = {}
    for name, order, chunks in (("a", rows, [4]), ("a in chunks", rows, [1, 3]), ("b", rows[::-1], [4])):
        session.set_weights(weights)  # restarts the optimizer and the dropout stream
        bounds = np.cumsum([0, *chunks])
        losses = np.concatenate([session.train_batches(order[lo:hi]) for lo, hi in itertools.pairwise(bounds)])
        runs[name] = (losses, session.get_weights())
    np.testing.assert_array_equal(runs["a"][0], runs["a in chunks"][0])
    assert same_weights(runs["a"][1], runs["a in chunks"][1])
    assert runs["a"][0][0] != runs["b"][0][0]
    assert not np.array_equal(runs["a"][1]["dense1/kernel"], runs["b"][1]["dense1/kernel"])


def test_scan_mode_trains_like_the_loop():
    spec = SMALL_DROPOUT
    rows = np.random.default_rng(2).permutation(64).reshape(4, 16)
    results = {}
    for scan in ("false", "true"):
        session = make_session(spec, backend_options={"jax.scan": scan})
        load_synthetic(session, spec, n_train=64)
        losses = np.concatenate([session.train_batches(rows[:2]), session.train_batches(rows[2:])])  # one compile
        results[session.settings()["mode"]] = (losses, session.get_weights())
    (loop_losses, loop_weights), (scan_losses, scan_weights) = results["jit"], results["jit + scan"]
    np.testing.assert_allclose(scan_losses, loop_losses, rtol=1e-5)
    for name in loop_weights:
        np.testing.assert_allclose(scan_weights[name], loop_weights[name], atol=1e-5, rtol=0, err_msg=name)


def test_settings_record_mode_threads_and_precision(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "1")
    settings = make_session(MNIST_LENET).settings()
    assert settings["mode"] == "jit" and settings["precision"] == "float32"
    assert settings["matmul_precision"] == "highest" and "jax.default_matmul_precision" in settings
    assert settings["intra_op_threads"] == 1 and settings["threads_from"] == f"{THREADS_ENV}=1"
    assert settings["layout"].startswith("NHWC")
    scan = make_session(MNIST_LENET, backend_options={"jax.scan": "1", "jax.matmul_precision": "default"}).settings()
    assert scan["mode"] == "jit + scan" and scan["matmul_precision"] == "default"
    with pytest.raises(UsageError, match="matmul_precision"):
        make_session(MNIST_LENET, backend_options={"jax.matmul_precision": "fp8"})


def test_process_environment_sets_threads_platform_and_preallocation():
    backend = JaxBackend()
    cpu = backend.process_environment(None, TrainConfig(device="cpu", threads=3))
    assert cpu == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cpu", THREADS_ENV: "3"}
    auto = backend.process_environment(None, TrainConfig(device="auto"))
    assert auto == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def test_cuda_request_without_gpu_is_unavailable():
    import jax

    if any(device.platform == "gpu" for device in jax.devices()):
        pytest.skip("a GPU is visible")
    with pytest.raises(BackendUnavailable, match="GPU"):
        JaxBackend().create_session(MNIST_LENET, TrainConfig(device="cuda"))


def test_listing_does_not_import_jax():
    code = (
        "import sys\n"
        "from cnnbench.plugins import load_registry\n"
        "backend = load_registry().backend('jax').item\n"
        "assert backend.unavailable_reason() is None, backend.unavailable_reason()\n"
        "print(backend.framework, backend.framework_version())\n"
        "assert 'jax' not in sys.modules and 'optax' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("JAX 0.")


def test_train_step_compiles_once_across_calls_and_set_weights(caplog):
    """Fresh optimizer state must look like the step's outputs, or the second step recompiles."""
    import jax

    spec = SMALL_DROPOUT
    session = make_session(spec)
    load_synthetic(session, spec, n_train=64)
    weights = session.get_weights()
    rows = np.arange(64, dtype=np.int64).reshape(4, 16)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG, logger="jax"):
        session.train_batches(rows[:1])
        session.train_batches(rows[1:])
        session.set_weights(weights)
        session.train_batches(rows[:2])
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]
