"""PyTorch implementation of the spec: eager mode, channels_last memory, data resident on the device.

torch is imported inside methods only, so listing backends never pays for (or fails on) it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from cnnbench.backend import Backend, BackendOption, Session, missing_module_reason
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.errors import BackendUnavailable
from cnnbench.frameworks import TORCH
from cnnbench.modes import ExecutionMode
from cnnbench.spec import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ModelSpec


def _resolve_device(torch, requested: str):
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise BackendUnavailable(TORCH.no_gpu_reason())
    return torch.device("cpu")


def build_module(spec: ModelSpec):
    """An ``nn.Module`` that walks the spec; returns (module, {layer name: submodule with weights})."""
    import torch
    from torch import nn

    class NHWCFlatten(nn.Module):  # type: ignore[misc]  # torch is untyped here (optional dependency)
        """Flatten in (H, W, C) order so canonical dense1 weights apply unchanged."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    modules: list[nn.Module] = []
    weighted: dict[str, nn.Module] = {}
    channels = spec.input_shape[-1]
    features = None
    for info in spec.layer_infos():
        layer = info.layer
        if isinstance(layer, Conv2D):
            conv = nn.Conv2d(
                channels, layer.filters, layer.kernel_size, stride=layer.stride, padding=layer.padding.lower()
            )
            modules.append(conv)
            weighted[layer.name] = conv
            channels = layer.filters
            if layer.activation == "relu":
                modules.append(nn.ReLU())
        elif isinstance(layer, MaxPool2D):
            if layer.padding != "VALID":
                raise NotImplementedError("only VALID pooling is supported")
            modules.append(nn.MaxPool2d(layer.pool_size, layer.stride))
        elif isinstance(layer, Flatten):
            modules.append(NHWCFlatten())
            (features,) = info.output_shape
        elif isinstance(layer, Dense):
            linear = nn.Linear(features, layer.units)
            modules.append(linear)
            weighted[layer.name] = linear
            features = layer.units
            if layer.activation == "relu":
                modules.append(nn.ReLU())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
    return torch.nn.Sequential(*modules), weighted


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
        #: ``torch.compile`` of the model (mode "compile"), or the model itself (eager): what every call runs.
        self.compiled = config.flag("torch", "compile")
        self.net = torch.compile(self.model) if self.compiled else self.model
        self._make_optimizer()

    def _make_optimizer(self) -> None:
        params = self.model.parameters()
        if self.config.optimizer == "adam":
            self.optimizer = self.torch.optim.Adam(
                params, lr=self.config.learning_rate, betas=(ADAM_BETA1, ADAM_BETA2), eps=ADAM_EPSILON
            )
        else:
            self.optimizer = self.torch.optim.SGD(params, lr=self.config.learning_rate)

    def _images(self, x: np.ndarray):
        """NHWC NumPy -> NCHW tensor whose memory stays NHWC (channels_last): no copy of layout."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)
        return tensor.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.x_train, self.x_test = self._images(x_train), self._images(x_test)
        self.y_train = self.torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(self.dev)
        self.y_test = self.torch.from_numpy(np.asarray(y_test, dtype=np.int64)).to(self.dev)

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        torch, F = self.torch, self.torch.nn.functional
        self.model.train()
        indices = torch.from_numpy(batch_indices).to(self.dev)
        losses = []
        for row in indices:
            logits = self.net(self.x_train.index_select(0, row))
            loss = F.cross_entropy(logits, self.y_train.index_select(0, row))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).cpu().numpy().astype(np.float64) if losses else np.zeros(0)

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
        torch = self.torch
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.dev)
        loss = torch.nn.functional.cross_entropy(self.net(self._images(x)), labels)
        loss.backward()
        grads = {}
        for layer_name, module in self.weighted.items():
            grads[f"{layer_name}/kernel"] = from_native(f"{layer_name}/kernel", module.weight.grad.cpu().numpy())
            grads[f"{layer_name}/bias"] = module.bias.grad.cpu().numpy().copy()
        self.model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    def get_weights(self) -> dict[str, np.ndarray]:
        weights = {}
        for layer_name, module in self.weighted.items():
            weights[f"{layer_name}/kernel"] = from_native(f"{layer_name}/kernel", module.weight.detach().cpu().numpy())
            weights[f"{layer_name}/bias"] = module.bias.detach().cpu().numpy().copy()
        return weights

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        torch = self.torch
        with torch.no_grad():
            for layer_name, module in self.weighted.items():
                canonical = np.asarray(weights[f"{layer_name}/kernel"], dtype=np.float32)
                kernel = to_native(f"{layer_name}/kernel", canonical)
                if tuple(module.weight.shape) != kernel.shape:
                    expected = tuple(module.weight.shape)
                    raise ValueError(f"{layer_name}/kernel: expected native shape {expected}, got {kernel.shape}")
                module.weight.copy_(torch.from_numpy(kernel))
                module.bias.copy_(torch.from_numpy(np.asarray(weights[f"{layer_name}/bias"], dtype=np.float32)))
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
        }
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
    options = (BackendOption("compile", bool, False, "torch.compile the model (inductor): the 'compile' mode"),)
    modes = (
        ExecutionMode("eager", {"compile": "false"}, "eager PyTorch, channels_last", default=True),
        ExecutionMode("compile", {"compile": "true"}, "torch.compile(model), inductor backend"),
    )
    #: Subclasses (tests, variants) may swap the session implementation.
    session_class = TorchSession

    def unavailable_reason(self) -> str | None:
        return missing_module_reason("torch", extra="torch")

    def framework_version(self, variant: str | None = None) -> str:
        return TORCH.version() or "not installed"

    def import_framework(self, variant: str | None = None) -> None:
        import torch  # noqa: F401

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
            from cnnbench_torch.ddp import DDPTorchSession

            return DDPTorchSession(spec, config)
        return self.session_class(spec, config)
