"""The JAX backend: the conformance kit, then what is specific to it (keyed dropout, scan, compiles, settings).

Spec conformance, parity with the float64 reference, the optimizers and dropout statistics are
the kit's (``cnnbench.testing``), the same checks every backend passes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

import itertools

from cnnbench import reference
from cnnbench.backend import model_unsupported_reason
from cnnbench.config import TrainConfig
from cnnbench.conformance.tolerances import GRAD_REL, LOGITS_REL, LOSS_REL, STATE_REL
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendError, BackendUnavailable, UsageError
from cnnbench.frameworks import PJRT_THREADS_ENV as THREADS_ENV
from cnnbench.initializers import initial_weights
from cnnbench.models import zoo
from cnnbench.spec import LAYER_TYPES, MNIST_LENET, BatchNorm, Conv2D, Dense, GlobalAvgPool, ModelSpec, lenet
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


def train_small(options: dict[str, str], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Losses, weights and settings after 4 batches of 16 (two train_batches calls: one compile) of SMALL_DROPOUT."""
    spec = SMALL_DROPOUT
    rows = np.random.default_rng(seed).permutation(64).reshape(4, 16)
    session = make_session(spec, backend_options=options)
    load_synthetic(session, spec, n_train=64)
    losses = np.concatenate([session.train_batches(rows[:2]), session.train_batches(rows[2:])])
    return losses, session.get_weights(), session.settings()


def assert_trained_alike(actual, expected) -> None:
    """The same losses and weights, to float32 rounding."""
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5)
    for name, value in expected[1].items():
        np.testing.assert_allclose(actual[1][name], value, atol=1e-5, rtol=0, err_msg=name)


def test_scan_mode_trains_like_the_loop():
    loop, scan = train_small({"jax.scan": "false"}, seed=2), train_small({"jax.scan": "true"}, seed=2)
    assert (loop[2]["mode"], scan[2]["mode"]) == ("jit", "jit + scan")
    assert_trained_alike(scan, loop)


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


# ---- batch norm, residual blocks, stride-2 SAME convolutions, global pooling (issue 20) -------------------------
# Tiny models against the float64 reference, with the project's tolerances (cnnbench.conformance.tolerances).

TINY_RESNET = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))
SMALL_VGG = zoo.vgg8((8, 8, 3), 10)
#: 9x9 inputs: stride-2 SAME convolutions padded evenly (9 -> 5 -> 3: one row each side); 8x8 pads (0, 1).
ODD_RESNET = zoo.resnet((9, 9, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))
BATCH = 8


def drawn_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Glorot weights with batch norm away from the identity (gamma, beta and moving statistics drawn)."""
    weights = initial_weights(spec, "glorot-uniform", seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, shape in spec.param_shapes().items():
        if name.endswith("/gamma"):
            weights[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith(("/beta", "/moving_mean", "/bias")):
            weights[name] = rng.normal(0.0, 0.2, shape).astype(np.float32)
        elif name.endswith("/moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return weights


def drawn_session(spec: ModelSpec, **config: Any) -> Any:
    config.setdefault("threads", 2)
    session = JaxBackend().create_session(spec, TrainConfig(device="cpu", **config))
    session.set_weights(drawn_weights(spec))
    return session


def inputs(spec: ModelSpec, n: int = BATCH, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, *spec.input_shape)).astype(np.float32)
    return x, rng.integers(0, spec.num_classes, n).astype(np.int64)


def assert_scaled_close(actual: Any, expected: Any, rel: float, what: str) -> None:
    """|actual - expected| <= rel x max |expected| (the conformance table's scale-relative form)."""
    expected = np.asarray(expected, dtype=np.float64)
    bound = rel * max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=bound, err_msg=what)


def assert_matches_reference(session: Any, spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> None:
    """Inference logits, then the training-mode loss and every trainable gradient, against the reference."""
    weights = session.get_weights()
    assert_scaled_close(session.predict(x), reference.forward(spec, weights, x), LOGITS_REL, "logits")
    loss, grads = session.loss_and_gradients(x, y)
    ref_loss, ref_grads, _ = reference.loss_and_gradients(spec, weights, x, y)
    assert loss == pytest.approx(ref_loss, rel=LOSS_REL)
    assert set(grads) == set(spec.trainable_shapes())
    for name, grad in grads.items():
        assert grad.shape == spec.trainable_shapes()[name], name
        assert_scaled_close(grad, ref_grads[name], GRAD_REL, name)


@pytest.mark.parametrize("spec", [TINY_RESNET, ODD_RESNET, SMALL_VGG], ids=["resnet8x8", "resnet9x9", "vgg8"])
def test_new_layers_match_the_reference(spec):
    assert_matches_reference(drawn_session(spec), spec, *inputs(spec))


def test_stride_two_same_padding_is_tensorflows():
    """lax's SAME puts the odd extra row/column after (TF); padding it before is another function."""
    from jax import lax

    x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32)
    kernel = np.random.default_rng(1).normal(size=(3, 3, 1, 1)).astype(np.float32)
    same = np.asarray(lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    after = lax.conv_general_dilated(x, kernel, (2, 2), ((0, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    before = lax.conv_general_dilated(x, kernel, (2, 2), ((1, 0), (1, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert same.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(same, np.asarray(after))
    assert not np.allclose(same, np.asarray(before))


@pytest.mark.parametrize(
    ("size", "kernel_size", "stride", "padding"),
    [
        (28, 4, 1, "SAME"),
        (14, 4, 1, "SAME"),
        (8, 3, 2, "SAME"),
        (9, 3, 2, "SAME"),
        (8, 1, 2, "SAME"),
        (9, 3, 2, "VALID"),
    ],
)
def test_im2col_convolution_is_lax_s(size, kernel_size, stride, padding):
    """The patches-and-dot form is the same function as lax.conv_general_dilated: outputs and both gradients."""
    import jax
    from jax import lax

    from cnnbench_jax.backend import DIMENSION_NUMBERS, _im2col_conv

    rng = np.random.default_rng(size + kernel_size + stride)
    x = rng.normal(size=(3, size, size, 5)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, 5, 7)).astype(np.float32)

    def by_lax(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DIMENSION_NUMBERS)

    def by_im2col(x, k):
        return _im2col_conv(jax.numpy, x, k, stride, padding, lax.Precision.HIGHEST)

    expected = np.asarray(by_lax(x, kernel))
    assert by_im2col(x, kernel).shape == expected.shape
    assert_scaled_close(by_im2col(x, kernel), expected, 1e-5, "output")
    weights = rng.normal(size=expected.shape).astype(np.float32)
    for argnum, what in ((0, "input gradient"), (1, "kernel gradient")):
        want = jax.grad(lambda x, k: (by_lax(x, k) * weights).sum(), argnum)(x, kernel)
        got = jax.grad(lambda x, k: (by_im2col(x, k) * weights).sum(), argnum)(x, kernel)
        assert_scaled_close(got, want, 1e-5, what)


def test_convolution_form_is_chosen_by_cpu_platform_and_option():
    # im2col writes the gradient path's convolutions on the CPUs where it was measured faster; inference stays on lax.
    from cnnbench.environment import cpu_vector_extension
    from cnnbench_jax.backend import conv_how

    assert "training: im2col" in make_session(MNIST_LENET, backend_options={"jax.conv": "im2col"}).settings()["conv"]
    assert (
        make_session(MNIST_LENET, backend_options={"jax.conv": "lax"}).settings()["conv"] == "lax.conv_general_dilated"
    )
    auto = make_session(MNIST_LENET).settings()["conv"]
    assert ("training: im2col" in auto) == (conv_how("auto", "cpu", cpu_vector_extension()) == "im2col")
    assert conv_how(None, "cpu", "avx2") == "im2col" and conv_how("auto", "cpu", "avx2") == "im2col"
    assert conv_how("auto", "cpu", "avx512f") == "lax"  # not measured faster there: the framework's own
    assert conv_how("auto", "cpu", None) == "lax" and conv_how("auto", "gpu", "avx2") == "lax"
    assert conv_how("im2col", "gpu", None) == "im2col" and conv_how("lax", "cpu", "avx2") == "lax"
    # Both forms train alike: the same losses and weights after the same batches, to float32 rounding.
    assert_trained_alike(train_small({"jax.conv": "im2col"}, seed=3), train_small({"jax.conv": "lax"}, seed=3))


@pytest.mark.parametrize("scan", ["false", "true"], ids=["jit", "scan"])
def test_moving_statistics_follow_the_spec_step_by_step(scan):
    """Momentum 0.9 and the biased batch variance, once per step, in both execution modes."""
    spec = TINY_RESNET
    session = drawn_session(spec, optimizer="sgd", learning_rate=0.1, backend_options={"jax.scan": scan})
    x, y = inputs(spec, 2 * BATCH)
    session.load_data(x, y, x, y)
    for step in range(2):
        before = session.get_weights()
        rows = np.arange(step * BATCH, (step + 1) * BATCH, dtype=np.int64)
        expected = reference.moving_statistics(spec, before, x[rows])
        ref_loss = reference.loss_and_gradients(spec, before, x[rows], y[rows])[0]
        (loss,) = session.train_batches(rows[None])
        assert loss == pytest.approx(ref_loss, rel=LOSS_REL)  # the step's loss: training-mode batch norm
        after = session.get_weights()
        assert set(expected) == set(spec.state_shapes())
        for name, value in expected.items():
            assert_scaled_close(after[name], value, STATE_REL, f"step {step + 1}: {name}")
            assert not np.array_equal(after[name], before[name]), name
        assert not np.array_equal(after["dense/kernel"], before["dense/kernel"])


def test_evaluate_uses_the_moving_statistics():
    spec = TINY_RESNET
    session = drawn_session(spec)
    x, y = inputs(spec, 12)
    session.load_data(x, y, x, y)
    loss, accuracy = session.evaluate(batch_size=5)  # uneven last batch
    logits = reference.forward(spec, session.get_weights(), x)
    ref_loss, _ = reference.softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(ref_loss, rel=LOSS_REL)
    assert accuracy == pytest.approx(float(np.mean(np.argmax(logits, axis=1) == y)))


def test_loss_and_gradients_and_inference_change_nothing():
    spec = TINY_RESNET
    session = drawn_session(spec)
    x, y = inputs(spec)
    before = session.get_weights()
    logits = session.predict(x)
    first = session.loss_and_gradients(x, y)
    again = session.loss_and_gradients(x, y)
    after = session.get_weights()
    assert all(np.array_equal(before[name], after[name]) for name in before), "weights or moving statistics moved"
    assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    np.testing.assert_array_equal(session.predict(x), logits)


def test_weights_round_trip_with_moving_statistics():
    spec = TINY_RESNET
    session = drawn_session(spec)
    weights = drawn_weights(spec, seed=3)
    session.set_weights(weights)
    back = session.get_weights()
    assert list(back) == list(spec.param_shapes())
    for name, value in weights.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
    back["bn/moving_mean"][:] = 99.0  # a copy, not a view of the device buffer
    assert not np.array_equal(session.get_weights()["bn/moving_mean"], back["bn/moving_mean"])
    with pytest.raises(BackendError, match="bn/moving_variance"):
        session.set_weights({k: v for k, v in weights.items() if k != "bn/moving_variance"})


def test_framework_init_of_batch_norm_is_the_identity():
    layers = (Conv2D("conv", 2, 3, activation=None, use_bias=False), BatchNorm("bn"), GlobalAvgPool(), Dense("out", 2))
    spec = ModelSpec("tiny-bn", (4, 4, 1), 2, layers)  # two kernel shapes: two jax.random compiles
    weights = JaxBackend().create_session(spec, TrainConfig(threads=2, init="framework")).get_weights()
    assert list(weights) == list(spec.param_shapes())
    for name, start in {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}.items():
        assert np.all(weights[f"bn/{name}"] == start), name
    assert weights["conv/kernel"].std() > 0 and "conv/bias" not in weights


def test_batch_norm_step_compiles_once_across_calls_and_set_weights(caplog):
    import jax

    spec = TINY_RESNET
    session = drawn_session(spec)
    x, y = inputs(spec, 2 * BATCH)
    session.load_data(x, y, x, y)
    weights = session.get_weights()
    rows = np.arange(2 * BATCH, dtype=np.int64).reshape(2, BATCH)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG, logger="jax"):
        session.train_batches(rows[:1])
        session.train_batches(rows[1:])
        session.set_weights(weights)
        session.train_batches(rows)
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]


def test_batch_norm_data_parallel_uses_the_global_batch_statistics():
    """Two simulated CPU devices, batch sharded: the same steps and moving statistics as one device (SPMD)."""
    code = textwrap.dedent(
        """
        import numpy as np
        from cnnbench.config import TrainConfig
        from cnnbench.models import zoo
        from cnnbench.initializers import initial_weights
        from cnnbench_jax.backend import JaxBackend

        spec = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
        y = rng.integers(0, 10, 16)
        rows = np.arange(16).reshape(2, 8)
        results = []
        for devices in (2, 1):
            session = JaxBackend().create_session(spec, TrainConfig(threads=1, devices=devices, optimizer="sgd"))
            session.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
            session.load_data(x, y, x, y)
            losses = session.train_batches(rows)
            results.append((session.device, losses, session.get_weights()))
        (sharded, losses2, w2), (single, losses1, w1) = results
        assert "2" in sharded and sharded != single, (sharded, single)
        np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
        for name in w1:
            scale = max(float(np.abs(w1[name]).max()), 1e-12)
            np.testing.assert_allclose(w2[name], w1[name], rtol=0, atol=1e-5 * scale, err_msg=name)
        assert not np.array_equal(w1["bn/moving_variance"], np.ones_like(w1["bn/moving_variance"]))
        print("ok")
        """
    )
    env = {**os.environ, **JaxBackend().process_environment(None, TrainConfig(device="cpu", threads=1, devices=2))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_backend_declares_every_layer():
    assert JaxBackend.layers == frozenset(LAYER_TYPES)
    assert model_unsupported_reason(JaxBackend(), zoo.resnet20((32, 32, 3), 10)) is None


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_set_weights_restarts_the_optimizer_state_as_optax_init_makes_it(optimizer):
    import jax

    session = make_session(MNIST_LENET, optimizer=optimizer)
    x, y = make_synthetic(32, MNIST_LENET.input_shape, MNIST_LENET.num_classes, 0, noise=0.5)
    session.load_data((x / np.float32(255)).astype(np.float32), y, x[:8].astype(np.float32), y[:8])
    session.train_batches(np.arange(32).reshape(2, 16))  # moments and step count no longer zero
    weights = initial_weights(MNIST_LENET, "glorot-uniform", seed=0)
    session.set_weights(weights)
    expected = session.optimizer.init({name: np.asarray(w, np.float32) for name, w in weights.items()})
    assert jax.tree_util.tree_structure(session.opt_state) == jax.tree_util.tree_structure(expected)
    leaves = zip(jax.tree_util.tree_leaves(session.opt_state), jax.tree_util.tree_leaves(expected), strict=True)
    for got, want in leaves:
        assert np.asarray(got).dtype == np.asarray(want).dtype and np.array_equal(np.asarray(got), np.asarray(want))
