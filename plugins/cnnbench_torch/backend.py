"""PyTorch implementation of the spec: eager mode, channels_last memory, data resident on the device.

torch is imported inside methods only, so listing backends never pays for (or fails on) it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from cnnbench.backend import Backend, BackendOption, Session, missing_module_reason
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.errors import BackendUnavailable
from cnnbench.frameworks import TORCH
from cnnbench.modes import ExecutionMode
from cnnbench.spec import (
    LAYER_TYPES,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool2D,
    ModelSpec,
    Residual,
    has_strided_1x1_conv,
    layer_infos,
)


def _resolve_device(torch, requested: str):
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise BackendUnavailable(TORCH.no_gpu_reason())
    return torch.device("cpu")


#: How a strided 1x1 convolution runs (settings), when the spec has one: docs/decisions.md#strided-1x1-convolutions.
STRIDED_1X1_NOTE = "every stride-th row and column, then a stride-1 1x1 conv"


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension: (before, after), the odd extra one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def build_module(spec: ModelSpec):
    """An ``nn.Module`` that walks the spec, recursing into residual blocks.

    Returns (module, {layer name: submodule with weights}): ``nn.Conv2d``, ``nn.Linear`` or ``SpecBatchNorm``.
    """
    import torch
    from torch import nn

    F = torch.nn.functional

    class NHWCFlatten(nn.Module):  # type: ignore[misc]  # torch is untyped here (optional dependency)
        """Flatten in (H, W, C) order so canonical dense1 weights apply unchanged."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    class SpecBatchNorm(nn.Module):  # type: ignore[misc]
        """Batch norm on torch's native kernel (``F.batch_norm``) with the spec's momentum and epsilon.

        Training normalises with the biased batch variance, as the spec does, but torch updates
        ``running_var`` with the unbiased one; ``TorchSession._train_batches`` makes that the spec's biased
        update by rescaling the C-length buffer around its steps (``variance_scales``). ``batch_stats`` (set by
        ``loss_and_gradients`` in eval mode): the batch's statistics, nothing updated.
        """

        def __init__(self, channels: int, layer: BatchNorm):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
            self.momentum = 1.0 - layer.momentum  # torch's: the weight of the new batch statistic
            self.eps = layer.epsilon
            self.relu = layer.activation == "relu"
            self.batch_stats = False

        def forward(self, x):
            if self.training:
                y = F.batch_norm(
                    x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
                )
            elif self.batch_stats:
                y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            else:
                y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return F.relu(y, inplace=True) if self.relu else y

    class ResidualBlock(nn.Module):  # type: ignore[misc]
        """activation(body(x) + shortcut(x)); an empty shortcut (``nn.Sequential()``) is the identity."""

        def __init__(self, body: nn.Module, shortcut: nn.Module, relu: bool):
            super().__init__()
            self.body, self.shortcut, self.relu = body, shortcut, relu

        def forward(self, x):
            out = self.body(x) + self.shortcut(x)
            return F.relu(out, inplace=True) if self.relu else out

    class GlobalAvgPool2d(nn.Module):  # type: ignore[misc]
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class Subsample(nn.Module):  # type: ignore[misc]
        """Every ``stride``-th row and column: a 1x1 convolution's stride, taken before a stride-1 convolution.

        oneDNN's strided 1x1 kernel is wrong on AVX2 with several threads (docs/decisions.md#strided-1x1-convolutions).
        """

        def __init__(self, stride: int):
            super().__init__()
            self.stride = stride

        def forward(self, x):
            return x[:, :, :: self.stride, :: self.stride]

    weighted: dict[str, nn.Module] = {}

    def window_pads(layer: Conv2D | MaxPool2D, shape: tuple[int, ...], window: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) as ``F.pad`` takes them; zeros for VALID."""
        if layer.padding == "VALID":
            return (0, 0, 0, 0)
        if layer.padding != "SAME":
            raise ValueError(f"{layer.name}: unknown padding {layer.padding!r}")
        top, bottom = same_pads(shape[0], window, layer.stride)
        left, right = same_pads(shape[1], window, layer.stride)
        return (left, right, top, bottom)

    def build(layers: tuple[Layer, ...], input_shape: tuple[int, ...]) -> list[nn.Module]:
        modules: list[nn.Module] = []
        for info in layer_infos(layers, input_shape):
            layer, shape = info.layer, info.input_shape
            if isinstance(layer, Conv2D):
                channels = shape[-1]
                if layer.kernel_size == 1 and layer.stride > 1:  # no padding either way: subsample, then convolve
                    modules.append(Subsample(layer.stride))
                    conv = nn.Conv2d(channels, layer.filters, 1, bias=layer.use_bias)
                elif layer.stride == 1:  # torch's "same" is TensorFlow's at stride 1 (extra after), "valid" as well
                    conv = nn.Conv2d(
                        channels,
                        layer.filters,
                        layer.kernel_size,
                        padding=layer.padding.lower(),
                        bias=layer.use_bias,
                    )
                else:  # torch pads symmetrically only: an uneven SAME pad is an explicit one before the conv
                    left, right, top, bottom = window_pads(layer, shape, layer.kernel_size)
                    if left == right and top == bottom:
                        padding: tuple[int, int] = (top, left)
                    else:
                        modules.append(nn.ZeroPad2d((left, right, top, bottom)))
                        padding = (0, 0)
                    conv = nn.Conv2d(
                        channels, layer.filters, layer.kernel_size, layer.stride, padding, bias=layer.use_bias
                    )
                modules.append(conv)
                weighted[layer.name] = conv
                if layer.activation == "relu":
                    modules.append(nn.ReLU())
            elif isinstance(layer, MaxPool2D):
                pads = window_pads(layer, shape, layer.pool_size)
                if any(pads):  # SAME pooling: padded positions never win
                    modules.append(nn.ConstantPad2d(pads, float("-inf")))
                modules.append(nn.MaxPool2d(layer.pool_size, layer.stride))
            elif isinstance(layer, Flatten):
                modules.append(NHWCFlatten())
            elif isinstance(layer, Dense):
                linear = nn.Linear(shape[0], layer.units)
                modules.append(linear)
                weighted[layer.name] = linear
                if layer.activation == "relu":
                    modules.append(nn.ReLU())
            elif isinstance(layer, Dropout):
                modules.append(nn.Dropout(layer.rate))
            elif isinstance(layer, BatchNorm):
                norm = SpecBatchNorm(shape[-1], layer)
                modules.append(norm)
                weighted[layer.name] = norm
            elif isinstance(layer, GlobalAvgPool):
                modules.append(GlobalAvgPool2d())
            elif isinstance(layer, Residual):
                body = nn.Sequential(*build(layer.body, shape))
                shortcut = nn.Sequential(*build(layer.shortcut, shape))
                modules.append(ResidualBlock(body, shortcut, layer.activation == "relu"))
            else:  # pragma: no cover - guarded by the Layer union
                raise TypeError(f"unknown layer {layer!r}")
        return modules

    return torch.nn.Sequential(*build(spec.layers, spec.input_shape)), weighted


def to_native(name: str, value: np.ndarray) -> np.ndarray:
    """Canonical -> PyTorch layout: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
    if name.endswith("/kernel"):
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T)
    return value


def from_native(name: str, value: np.ndarray) -> np.ndarray:
    """PyTorch -> canonical layout (inverse of ``to_native``)."""
    if name.endswith("/kernel"):
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T)
    return value


#: Which attribute of a weighted module holds each canonical weight suffix.
NATIVE_ATTRIBUTES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def native_tensors(spec: ModelSpec, weighted: dict[str, Any]) -> dict[str, Any]:
    """Every canonical weight of ``spec`` (``param_shapes``' order) -> its torch parameter or buffer."""
    tensors = {}
    for name in spec.param_shapes():
        layer_name, suffix = name.rsplit("/", 1)
        tensors[name] = getattr(weighted[layer_name], NATIVE_ATTRIBUTES[suffix])
    return tensors


class TorchSession(Session):
    def __init__(self, spec: ModelSpec, config: TrainConfig, channels_last: bool = True):
        import torch

        self.torch = torch
        self.spec, self.config = spec, config
        self.dev = _resolve_device(torch, config.device)
        if self.dev.type == "cpu":
            self.device = str(self.dev)
        else:
            self.device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)
        model, self.weighted = build_module(spec)
        self.model = model.to(self.dev, memory_format=self.memory_format)
        #: Canonical weight name -> the parameter or buffer holding it (native layout).
        self.tensors = native_tensors(spec, self.weighted)
        #: Each batch norm with the positions per sample it averages over (H x W of its input).
        self.batch_norms = [self.weighted[info.layer.name] for info in spec.walk() if isinstance(info.layer, BatchNorm)]
        self.positions = [math.prod(info.input_shape[:-1]) for info in spec.walk() if isinstance(info.layer, BatchNorm)]
        #: ``torch.compile`` of the model (mode "compile"), or the model itself (eager): what every call runs.
        self.compiled = config.flag("torch", "compile")
        self.net = torch.compile(self.model) if self.compiled else self.model
        self._make_optimizer()

    def _make_optimizer(self) -> None:
        params = self.model.parameters()
        # fused: one kernel over all weights (torch.optim's fastest implementation on CPU and CUDA), as TF's
        # ResourceApplyAdam; the per-tensor loop otherwise (docs/performance.md#torch-optimizer).
        fused = self.config.flag("torch", "fused_optimizer", default=True)
        if self.config.optimizer == "adam":
            self.optimizer = self.torch.optim.Adam(
                params, lr=self.config.learning_rate, betas=(ADAM_BETA1, ADAM_BETA2), eps=ADAM_EPSILON, fused=fused
            )
        else:
            self.optimizer = self.torch.optim.SGD(params, lr=self.config.learning_rate, fused=fused)

    def _images(self, x: np.ndarray):
        """NHWC NumPy -> NCHW tensor whose memory stays NHWC (channels_last): no copy of layout."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)
        return tensor.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.x_train, self.x_test = self._images(x_train), self._images(x_test)
        self.y_train = self.torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(self.dev)
        self.y_test = self.torch.from_numpy(np.asarray(y_test, dtype=np.int64)).to(self.dev)

    def variance_scales(self, batch_size: int) -> list[float]:
        """n / (n - 1) for each batch norm (n values per channel in a batch): torch's Bessel correction.

        torch updates ``r <- (1 - m) r + m u`` with the unbiased batch variance u = b n / (n - 1). A buffer held
        as r = v n / (n - 1) during training steps therefore follows the spec's ``v <- (1 - m) v + m b`` exactly;
        ``_train_batches`` scales the C-length buffers into that form before its steps and back after them.
        """
        return [n / (n - 1) if n > 1 else 1.0 for n in (batch_size * positions for positions in self.positions)]

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        torch = self.torch
        self.model.train()
        indices = torch.from_numpy(batch_indices).to(self.dev)
        if not self.batch_norms:
            losses = self._steps(indices)
        else:
            scales = self.variance_scales(batch_indices.shape[1])
            for norm, scale in zip(self.batch_norms, scales, strict=True):
                norm.running_var.mul_(scale)
            try:
                losses = self._steps(indices)
            finally:
                for norm, scale in zip(self.batch_norms, scales, strict=True):
                    norm.running_var.div_(scale)
        return torch.stack(losses).cpu().numpy().astype(np.float64) if losses else np.zeros(0)

    def _steps(self, indices) -> list[Any]:
        """One optimizer step per row of ``indices`` (a device tensor); the losses stay on the device."""
        F = self.torch.nn.functional
        losses = []
        for row in indices:
            logits = self.net(self.x_train.index_select(0, row))
            loss = F.cross_entropy(logits, self.y_train.index_select(0, row))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return losses

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        torch, F = self.torch, self.torch.nn.functional
        self.model.eval()
        total_loss = torch.zeros((), device=self.dev, dtype=torch.float64)
        correct = torch.zeros((), device=self.dev, dtype=torch.int64)
        n = self.x_test.shape[0]
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                logits = self.net(self.x_test[start : start + batch_size])
                labels = self.y_test[start : start + batch_size]
                total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
                correct += (logits.argmax(dim=1) == labels).sum()
        return float(total_loss) / n, float(correct) / n

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.torch.inference_mode():
            return self.net(self._images(x)).float().cpu().numpy()

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray):
        """Dropout off (eval mode), batch norm on the batch's statistics without touching the moving ones."""
        torch = self.torch
        self.model.eval()
        for norm in self.batch_norms:
            norm.batch_stats = True
        self.model.zero_grad(set_to_none=True)
        try:
            labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.dev)
            loss = torch.nn.functional.cross_entropy(self.net(self._images(x)), labels)
            loss.backward()
            grads = {
                name: from_native(name, self.tensors[name].grad.cpu().numpy()).copy()
                for name in self.spec.trainable_shapes()
            }
        finally:
            for norm in self.batch_norms:
                norm.batch_stats = False
            self.model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: from_native(name, tensor.detach().cpu().numpy()).copy() for name, tensor in self.tensors.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        torch = self.torch
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                native = to_native(name, np.asarray(weights[name], dtype=np.float32))
                if tuple(tensor.shape) != native.shape:
                    raise ValueError(f"{name}: expected native shape {tuple(tensor.shape)}, got {native.shape}")
                tensor.copy_(torch.from_numpy(native))
        self._make_optimizer()

    def peak_device_memory_mb(self) -> float | None:
        return TORCH.peak_device_memory_mb(self.dev) if self.dev.type == "cuda" else None

    def sync(self) -> None:
        TORCH.sync(on_gpu=self.dev.type == "cuda")

    def settings(self) -> dict[str, Any]:
        torch = self.torch
        settings: dict[str, Any] = {
            **TORCH.thread_settings(),
            "precision": "float32",
            "mode": TORCH.mode(compiled=self.compiled),
            "layout": "NCHW, channels_last memory" if self.memory_format == torch.channels_last else "NCHW",
            "optimizer_kernel": "fused" if self.optimizer.defaults.get("fused") else "per-tensor loop",
        }
        if has_strided_1x1_conv(self.spec):
            settings["strided_1x1_conv"] = STRIDED_1X1_NOTE
        if self.dev.type == "cuda":
            settings["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            settings["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
            settings["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        return settings

    def close(self) -> None:
        del self.model, self.net, self.optimizer
        if self.dev.type == "cuda":
            self.torch.cuda.empty_cache()


class TorchBackend(Backend):
    name = "torch"
    framework = "PyTorch"
    deterministic = True
    options = (
        BackendOption("compile", bool, False, "torch.compile the model (inductor): the 'compile' mode"),
        BackendOption("fused_optimizer", bool, True, "torch.optim's fused kernel for Adam / SGD (false: per tensor)"),
    )
    modes = (
        ExecutionMode("eager", {"compile": "false"}, "eager PyTorch, channels_last", default=True),
        ExecutionMode("compile", {"compile": "true"}, "torch.compile(model), inductor backend"),
    )
    #: Every spec layer: batch norm, residual blocks, stride-2 SAME convolutions and global pooling match the reference.
    layers = frozenset(LAYER_TYPES)
    #: Subclasses (tests, variants) may swap the session implementation.
    session_class = TorchSession

    def unavailable_reason(self) -> str | None:
        return missing_module_reason("torch", extra="torch")

    def framework_version(self, variant: str | None = None) -> str:
        return TORCH.version() or "not installed"

    def import_framework(self, variant: str | None = None) -> None:
        import torch

        # torch.optim's optimizers import torch._dynamo when the first one is made: framework import, not build.
        import torch._dynamo  # noqa: F401

    def devices_unsupported_reason(self, variant: str | None, config: TrainConfig) -> str | None:
        return None  # DistributedDataParallel: any number of devices per host, any number of hosts

    def worker_launcher(self, variant: str | None, config: TrainConfig) -> list[str]:
        """torchrun with one rank per device (see ``cnnbench.distributed.torchrun_arguments``)."""
        from cnnbench import distributed

        where = distributed.cluster()
        if not distributed.is_data_parallel(config, where):
            return []
        return distributed.torchrun_arguments(config.devices, where)

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """On one host, gloo and NCCL bind to the loopback interface only (ranks talk over 127.0.0.1)."""
        from cnnbench import distributed

        where = distributed.cluster()
        if not distributed.is_data_parallel(config, where) or where.multi_host:
            return {}
        interface = distributed.loopback_interface()
        return {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface} if interface else {}

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        import torch

        if config.threads:
            TORCH.apply_threads(config.threads)
        if torch.cuda.is_available():
            # Full fp32 everywhere, as in the other backends' defaults on CPU (recorded in settings).
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths")
        from cnnbench.distributed import is_data_parallel

        if is_data_parallel(config):
            if spec.has_batch_norm:
                # Each rank would normalise with its own shard's statistics (and DDP broadcasts rank 0's moving
                # ones), not the global batch's that the spec and one device use.
                raise BackendUnavailable(
                    "batch norm with --devices > 1 is not implemented in the torch backend "
                    "(each rank would use its own shard's batch statistics)"
                )
            from cnnbench_torch.ddp import DDPTorchSession

            return DDPTorchSession(spec, config)
        return self.session_class(spec, config)
