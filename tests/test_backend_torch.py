"""The PyTorch backend: the conformance kit, then what is specific to it (thread pools, channels_last memory,
train/eval modes, the optimizer it builds, its settings and device choice)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnnbench import reference  # noqa: E402
from cnnbench.backend import Session, model_unsupported_reason  # noqa: E402
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig  # noqa: E402
from cnnbench.conformance.tolerances import GRAD_REL, LOGITS_REL, LOSS_REL, STATE_REL  # noqa: E402
from cnnbench.datasets.synthetic import make_synthetic  # noqa: E402
from cnnbench.errors import BackendError, BackendUnavailable  # noqa: E402
from cnnbench.initializers import initial_weights  # noqa: E402
from cnnbench.models import zoo  # noqa: E402
from cnnbench.spec import CIFAR_LENET, LAYER_TYPES, MNIST_LENET, ModelSpec  # noqa: E402
from cnnbench.testing import BackendConformance  # noqa: E402
from cnnbench_torch.backend import TorchBackend, from_native, same_pads, to_native  # noqa: E402


class TestTorchConformance(BackendConformance):
    backend = TorchBackend()


def make_session(spec: ModelSpec, **config: Any) -> Any:
    """A session on the CPU with the harness's glorot-uniform weights (threads left as the process has them)."""
    session = TorchBackend().create_session(spec, TrainConfig(device="cpu", **config))
    session.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
    return session


def synthetic(spec: ModelSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_synthetic(n, spec.input_shape, spec.num_classes, seed, noise=0.3)
    return (x / np.float32(255)).astype(np.float32), y


def load_synthetic(session: Session, spec: ModelSpec, n_train: int = 64, n_test: int = 32) -> None:
    session.load_data(*synthetic(spec, n_train, seed=0), *synthetic(spec, n_test, seed=1))


def run_python(code: str) -> str:
    """Thread pools are process-wide and the inter-op one is fixed by the first parallel work: a fresh process."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_threads_size_both_pools_and_settings_report_what_torch_uses():
    code = (
        "import torch\nfrom cnnbench.config import TrainConfig\nfrom cnnbench.spec import MNIST_LENET\n"
        "from cnnbench_torch.backend import TorchBackend\n"
        "s = TorchBackend().create_session(MNIST_LENET, TrainConfig(threads=2, device='cpu')).settings()\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), s['intra_op_threads'], s['inter_op_threads'])"
    )
    assert run_python(code).split() == ["2", "2", "2", "2"]


def test_data_and_convolutions_live_in_channels_last_memory():
    spec = MNIST_LENET
    session = make_session(spec)
    load_synthetic(session, spec)
    assert session.x_train.shape == (64, 1, 28, 28) and session.x_train.is_contiguous(memory_format=torch.channels_last)
    conv = session.weighted["conv1"].weight
    height, width, channels, filters = spec.param_shapes()["conv1/kernel"]
    assert conv.shape == (filters, channels, height, width) and conv.is_contiguous(memory_format=torch.channels_last)
    assert session.settings()["layout"] == "NCHW, channels_last memory"


def test_contiguous_layout_computes_the_same_numbers():
    """channels_last is a memory layout only: logits and gradients agree with plain NCHW tensors."""
    spec = MNIST_LENET
    fast = make_session(spec)
    plain = TorchBackend.session_class(spec, TrainConfig(device="cpu"), channels_last=False)
    plain.set_weights(initial_weights(spec, "glorot-uniform", seed=0))
    assert plain.settings()["layout"] == "NCHW"
    x, y = synthetic(spec, 8, seed=5)
    np.testing.assert_allclose(fast.predict(x), plain.predict(x), atol=1e-5, rtol=0)
    loss, grads = fast.loss_and_gradients(x, y)
    plain_loss, plain_grads = plain.loss_and_gradients(x, y)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    for name, grad in grads.items():
        tolerance = 1e-5 * max(np.abs(grad).max(), 1e-3)
        np.testing.assert_allclose(grad, plain_grads[name], atol=tolerance, rtol=0, err_msg=name)


def test_eval_mode_for_inference_and_train_mode_for_steps():
    """Dropout (CIFAR LeNet) must be off in evaluate/predict/gradients and back on for the next step."""
    spec = CIFAR_LENET
    session = make_session(spec)
    load_synthetic(session, spec)
    rows = np.arange(32, dtype=np.int64).reshape(1, 32)
    session.train_batches(rows)
    assert session.model.training
    session.evaluate(batch_size=10)
    assert not session.model.training
    x, y = synthetic(spec, 16, seed=2)
    np.testing.assert_array_equal(session.predict(x), session.predict(x))
    assert session.loss_and_gradients(x, y)[0] == session.loss_and_gradients(x, y)[0]
    session.train_batches(rows)
    assert session.model.training


def test_inference_leaves_no_gradients_and_weights_alone():
    spec = MNIST_LENET
    session = make_session(spec)
    load_synthetic(session, spec)
    before = session.get_weights()
    x, y = synthetic(spec, 8, seed=3)
    session.loss_and_gradients(x, y)
    session.predict(x)
    session.evaluate(batch_size=16)
    assert all(p.grad is None for p in session.model.parameters()), "gradients must not outlive loss_and_gradients"
    after = session.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_uses_the_harness_hyper_parameters(optimizer):
    session = make_session(MNIST_LENET, optimizer=optimizer, learning_rate=0.005)
    (group,) = session.optimizer.param_groups
    assert group["lr"] == 0.005 and group["weight_decay"] == 0
    if optimizer == "adam":
        assert isinstance(session.optimizer, torch.optim.Adam)
        assert group["betas"] == (ADAM_BETA1, ADAM_BETA2) and group["eps"] == ADAM_EPSILON and not group["amsgrad"]
    else:
        assert isinstance(session.optimizer, torch.optim.SGD) and group["momentum"] == 0 and not group["nesterov"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_optimizer_is_fused_unless_told_otherwise_and_steps_the_same(optimizer):
    fused = make_session(MNIST_LENET, optimizer=optimizer)
    loop = make_session(MNIST_LENET, optimizer=optimizer, backend_options={"torch.fused_optimizer": "false"})
    assert fused.optimizer.defaults["fused"] and not loop.optimizer.defaults["fused"]
    assert (fused.settings()["optimizer_kernel"], loop.settings()["optimizer_kernel"]) == ("fused", "per-tensor loop")
    for session in (fused, loop):
        load_synthetic(session, MNIST_LENET)
        session.train_batches(np.arange(64).reshape(4, 16))
    after_fused, after_loop = fused.get_weights(), loop.get_weights()
    for name, value in after_loop.items():  # the same update rule: float32 rounding apart, which Adam's m / sqrt(v)
        # of a near-zero gradient can carry to a few % of the learning rate (1e-3) per step
        np.testing.assert_allclose(after_fused[name], value, rtol=1e-4, atol=2e-5, err_msg=name)


def test_set_weights_checks_native_shapes():
    weights = initial_weights(MNIST_LENET, "normal", seed=7)
    bad = dict(weights, **{"dense1/kernel": weights["dense1/kernel"].T})
    with pytest.raises((ValueError, BackendError), match="dense1/kernel"):
        make_session(MNIST_LENET).set_weights(bad)


def test_layout_conversions_are_inverse_and_native():
    weights = initial_weights(MNIST_LENET, "normal", seed=1)
    session = make_session(MNIST_LENET)
    for name, value in weights.items():
        native = to_native(name, value)
        assert np.array_equal(from_native(name, native), value), name
        layer = session.weighted[name.split("/")[0]]
        assert native.shape == tuple((layer.weight if name.endswith("kernel") else layer.bias).shape), name


def test_framework_init_follows_the_seed():
    def framework_weights(seed: int) -> dict[str, np.ndarray]:
        config = TrainConfig(device="cpu", seed=seed, init="framework")
        return TorchBackend().create_session(MNIST_LENET, config).get_weights()

    first, again, other = framework_weights(3), framework_weights(3), framework_weights(4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["conv1/kernel"], other["conv1/kernel"])


def test_cpu_settings_record_precision_mode_and_no_gpu_switches():
    settings = make_session(MNIST_LENET).settings()
    assert settings["precision"] == "float32" and settings["mode"] == "eager"
    assert settings["intra_op_threads"] == torch.get_num_threads()
    assert not {"tf32_matmul", "tf32_cudnn", "cudnn_benchmark"} & set(settings)


def test_cuda_request_without_gpu_is_unavailable():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        TorchBackend().create_session(MNIST_LENET, TrainConfig(device="cuda"))


def test_one_device_needs_no_launcher_and_no_environment():
    backend = TorchBackend()
    assert backend.worker_launcher(None, TrainConfig()) == []
    assert backend.process_environment(None, TrainConfig()) == {}
    assert backend.devices_unsupported_reason(None, TrainConfig(devices=2)) is None


def test_listing_does_not_import_torch():
    code = (
        "import sys\nfrom cnnbench.plugins import load_registry\n"
        "backend = load_registry().backend('torch').item\n"
        "assert backend.unavailable_reason() is None, backend.unavailable_reason()\n"
        "print(backend.framework, backend.framework_version())\n"
        "assert 'torch' not in sys.modules, 'listing imported torch'\n"
    )
    assert run_python(code).startswith(f"PyTorch {torch.__version__.split('+')[0]}")


# ---- batch norm, residual blocks, stride-2 SAME convolutions, global pooling (issue 20) -------------------------
# Tiny models against the float64 reference, with the project's tolerances (cnnbench.conformance.tolerances).

TINY_RESNET = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16))
SMALL_VGG = zoo.vgg8((8, 8, 3), 10)
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


def drawn_session(spec: ModelSpec, channels_last: bool = True, **config: Any) -> Any:
    session = TorchBackend.session_class(spec, TrainConfig(device="cpu", **config), channels_last=channels_last)
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


def test_same_pads_are_tensorflows():
    assert same_pads(32, 3, 2) == (0, 1)  # torch's symmetric padding=1 would be (1, 1): another function
    assert same_pads(8, 1, 2) == (0, 0)
    assert same_pads(7, 3, 2) == (1, 1)
    assert same_pads(28, 4, 1) == (1, 2)


def test_stride_two_convolutions_pad_explicitly_and_unevenly():
    session = drawn_session(TINY_RESNET)
    pads = [module.padding for module in session.model.modules() if isinstance(module, torch.nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1)]  # s2b1_conv1 and s3b1_conv1; the 1x1 projections need none
    assert session.weighted["s2b1_conv1"].stride == (2, 2) and session.weighted["s2b1_conv1"].bias is None
    # A strided 1x1 convolution is a subsample, then a stride-1 one (oneDNN's strided 1x1 kernel is wrong on AVX2).
    modules = list(session.model.modules())
    for name in ("s2b1_proj", "s3b1_proj"):
        conv = session.weighted[name]
        assert conv.kernel_size == (1, 1) and conv.stride == (1, 1), name
        assert type(modules[modules.index(conv) - 1]).__name__ == "Subsample", name
    assert "stride-1 1x1 conv" in session.settings()["strided_1x1_conv"]
    assert "strided_1x1_conv" not in drawn_session(SMALL_VGG).settings()  # no 1x1 strided convolution there


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("spec", [TINY_RESNET, SMALL_VGG], ids=lambda spec: spec.name)
def test_new_layers_match_the_reference(spec, channels_last):
    assert_matches_reference(drawn_session(spec, channels_last), spec, *inputs(spec))


def test_moving_statistics_follow_the_spec_step_by_step():
    """Momentum 0.9 and the biased batch variance, once per step (torch's own rule is unbiased, momentum 0.1)."""
    spec = TINY_RESNET
    session = drawn_session(spec, optimizer="sgd", learning_rate=0.1)
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


def test_loss_and_gradients_and_inference_change_nothing():
    spec = TINY_RESNET
    session = drawn_session(spec)
    x, y = inputs(spec)
    session.load_data(x, y, x, y)
    before = session.get_weights()
    logits = session.predict(x)
    reference_logits = reference.forward(spec, before, x)
    loss, accuracy = session.evaluate(batch_size=3)  # inference mode, moving statistics, batches of 3, 3 and 2
    assert loss == pytest.approx(reference.softmax_cross_entropy(reference_logits, y)[0], rel=LOSS_REL)
    assert accuracy == np.mean(logits.argmax(axis=1) == y)
    first = session.loss_and_gradients(x, y)
    again = session.loss_and_gradients(x, y)
    after = session.get_weights()
    assert all(np.array_equal(before[name], after[name]) for name in before), "weights or moving statistics moved"
    assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    np.testing.assert_array_equal(session.predict(x), logits)
    assert all(p.grad is None for p in session.model.parameters())
    assert not any(norm.batch_stats for norm in session.batch_norms)


def test_weights_round_trip_with_moving_statistics():
    spec = TINY_RESNET
    session = drawn_session(spec)
    weights = drawn_weights(spec, seed=3)
    session.set_weights(weights)
    back = session.get_weights()
    assert list(back) == list(spec.param_shapes())
    for name, value in weights.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
    assert np.array_equal(session.weighted["bn"].running_var.numpy(), weights["bn/moving_variance"])
    back["bn/moving_mean"][:] = 99.0  # a copy, not a view of the buffer
    assert not np.array_equal(session.get_weights()["bn/moving_mean"], back["bn/moving_mean"])


def test_framework_init_of_batch_norm_is_the_identity():
    weights = TorchBackend().create_session(TINY_RESNET, TrainConfig(device="cpu", init="framework")).get_weights()
    for name, start in {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}.items():
        assert np.all(weights[f"s2b1_bn1/{name}"] == start), name


@pytest.mark.slow  # inductor compiles three graphs (inference, gradients, training step): about 30 s on 2 cores
def test_compiled_resnet_matches_the_reference():
    spec = TINY_RESNET
    session = drawn_session(spec, backend_options={"torch.compile": "true"})
    assert session.compiled
    x, y = inputs(spec)
    assert_matches_reference(session, spec, x, y)
    session.load_data(x, y, x, y)
    before = session.get_weights()
    session.train_batches(np.arange(BATCH, dtype=np.int64)[None])
    after = session.get_weights()
    for name, value in reference.moving_statistics(spec, before, x).items():
        assert_scaled_close(after[name], value, STATE_REL, name)


def test_batch_norm_with_several_devices_is_refused_before_any_process_group():
    with pytest.raises(BackendUnavailable, match="batch norm with --devices > 1"):
        TorchBackend().create_session(TINY_RESNET, TrainConfig(device="cpu", devices=2))


def test_backend_declares_every_layer():
    assert TorchBackend.layers == frozenset(LAYER_TYPES)
    assert model_unsupported_reason(TorchBackend(), zoo.resnet20((32, 32, 3), 10)) is None
