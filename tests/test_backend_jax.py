"""The JAX backend: spec conformance, parity with PyTorch, optimizers, dropout, batch order, settings."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig  # noqa: E402
from cnnbench.datasets.synthetic import make_synthetic  # noqa: E402
from cnnbench.errors import BackendError, BackendUnavailable, UsageError  # noqa: E402
from cnnbench.frameworks import PJRT_THREADS_ENV as THREADS_ENV  # noqa: E402
from cnnbench.initializers import initial_weights  # noqa: E402
from cnnbench.spec import CIFAR_LENET, MNIST_LENET, lenet  # noqa: E402
from cnnbench_jax.backend import JaxBackend  # noqa: E402

SPECS = {"mnist": MNIST_LENET, "cifar": CIFAR_LENET}
#: The CIFAR variant's layers on 12x12 images: dropout behaviour at a fraction of the CPU time.
SMALL_DROPOUT = lenet((12, 12, 3), 10, dropout=0.2)


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
    def framework_weights(seed):
        return JaxBackend().create_session(MNIST_LENET, TrainConfig(threads=2, seed=seed, init="framework")).get_weights()

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
    first, second = session.loss_and_gradients(x, y), session.loss_and_gradients(x, y)
    assert first[0] == second[0]  # dropout inactive: deterministic
    assert same_weights(before, session.get_weights())


def test_one_adam_step_uses_the_harness_hyper_parameters():
    """The first step from zero moments, computed by hand with ADAM_BETA1/2 and ADAM_EPSILON."""
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


def test_sgd_is_plain_gradient_descent_and_set_weights_resets_adam():
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
    adam.train_batches(rows)  # a second step moves on from the moments of the first
    assert not same_weights(first, adam.get_weights())
    adam.set_weights(weights)  # resets the moments: the same first step again
    adam.train_batches(rows)
    assert same_weights(first, adam.get_weights())


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


def test_loss_decreases_on_synthetic_data():
    spec = MNIST_LENET
    session = make_session(spec)
    load_synthetic(session, spec, n_train=960, noise=0.3)  # at 0.5, 30 steps barely leave the plateau
    rows = np.random.default_rng(0).permutation(960).reshape(30, 32)
    losses = session.train_batches(rows)
    assert losses.shape == (30,) and losses.dtype == np.float64
    assert losses[-5:].mean() < 0.75 * losses[:3].mean()  # measured: ~1.3 vs ~2.5 (PyTorch: the same)
    loss, accuracy = session.evaluate(batch_size=25)  # 64 test images: a partial last batch
    assert 0.5 < accuracy <= 1.0 and loss < losses[0]


def test_evaluate_agrees_with_predict_and_loss():
    spec = MNIST_LENET
    session = make_session(spec)
    x_test, y_test = load_synthetic(session, spec)
    loss, accuracy = session.evaluate(batch_size=30)
    assert accuracy == pytest.approx(np.mean(session.predict(x_test).argmax(axis=1) == y_test))
    assert loss == pytest.approx(session.loss_and_gradients(x_test, y_test)[0], rel=1e-5)


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
        losses = np.concatenate([session.train_batches(order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])])
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


def test_bad_indices_and_missing_data_are_refused():
    session = make_session(MNIST_LENET)
    with pytest.raises(BackendError, match="load_data"):
        session.train_batches(np.zeros((1, 4), dtype=np.int64))
    load_synthetic(session, MNIST_LENET, n_train=32)
    with pytest.raises(ValueError, match="out of range"):  # jax would clamp silently
        session.train_batches(np.array([[0, 32]], dtype=np.int64))
    assert session.train_batches(np.zeros((0, 4), dtype=np.int64)).shape == (0,)


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
