"""The PyTorch backend: the conformance kit, then what is specific to it (thread pools, channels_last memory,
train/eval modes, the optimizer it builds, its settings and device choice)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnnbench.backend import Session  # noqa: E402
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig  # noqa: E402
from cnnbench.datasets.synthetic import make_synthetic  # noqa: E402
from cnnbench.errors import BackendError, BackendUnavailable  # noqa: E402
from cnnbench.initializers import initial_weights  # noqa: E402
from cnnbench.spec import CIFAR_LENET, MNIST_LENET, ModelSpec  # noqa: E402
from cnnbench.testing import BackendConformance  # noqa: E402
from cnnbench_torch.backend import TorchBackend, from_native, to_native  # noqa: E402


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
