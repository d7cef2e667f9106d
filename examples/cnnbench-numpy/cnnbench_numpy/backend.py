"""The LeNet in plain NumPy float32: im2col convolutions on BLAS, a hand-written backward pass,
Adam and SGD. No framework, so every step of a backend is visible - a reference for plugin authors.

The native layout is the canonical one (NHWC activations, HWIO kernels, (in, out) dense
kernels, flatten in (H, W, C) order), so get_weights / set_weights only copy.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnbench.backend import Backend, BackendError, BackendUnavailable, Session, distribution_version
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.spec import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ModelSpec

#: Images per forward pass in evaluate / predict: bounds the im2col buffers (a 1,000-image CIFAR
#: batch would need 0.5 GB for conv2's columns); the results do not depend on it.
MAX_IMAGES_PER_PASS = 250


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME: output ceil(size / stride); the odd extra row/column goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _padding(layer_padding: str, size: int, window: int, stride: int) -> tuple[int, int]:
    return _same_padding(size, window, stride) if layer_padding == "SAME" else (0, 0)


def _windows(x: np.ndarray, window: int, stride: int, out_h: int, out_w: int) -> np.ndarray:
    """A view (N, out_h, out_w, C, window, window) of the windows of NHWC ``x`` (no copy)."""
    view = sliding_window_view(x, (window, window), axis=(1, 2))
    return view[:, : (out_h - 1) * stride + 1 : stride, : (out_w - 1) * stride + 1 : stride]


def _check_activation(name: str | None) -> None:
    if name not in (None, "relu"):
        raise BackendError(f"activation {name!r} is not supported by the NumPy backend (relu or none)")


class ConvLayer:
    """Conv2D + activation: im2col (rows in (kh, kw, C) order, matching HWIO) times the kernel."""

    def __init__(self, layer: Conv2D, input_shape: tuple[int, ...], output_shape: tuple[int, ...]):
        _check_activation(layer.activation)
        self.layer, self.name = layer, layer.name
        self.k, self.s = layer.kernel_size, layer.stride
        self.in_h, self.in_w, self.in_c = input_shape
        self.out_h, self.out_w, self.out_c = output_shape
        self.pad_h = _padding(layer.padding, self.in_h, self.k, self.s)
        self.pad_w = _padding(layer.padding, self.in_w, self.k, self.s)

    def forward(self, params, x, train, rng):
        padded = np.pad(x, ((0, 0), self.pad_h, self.pad_w, (0, 0)))
        windows = _windows(padded, self.k, self.s, self.out_h, self.out_w)  # N, OH, OW, C, kh, kw
        n = x.shape[0]
        columns = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * self.out_h * self.out_w, self.k * self.k * self.in_c)
        kernel = params[f"{self.name}/kernel"].reshape(-1, self.out_c)
        z = columns @ kernel
        z += params[f"{self.name}/bias"]
        z = z.reshape(n, self.out_h, self.out_w, self.out_c)
        y = np.maximum(z, 0) if self.layer.activation == "relu" else z
        return y, (columns, y, padded.shape)

    def backward(self, params, cache, dy, grads, need_input_grad):
        columns, y, padded_shape = cache
        dz = dy * (y > 0) if self.layer.activation == "relu" else dy
        dz = dz.reshape(-1, self.out_c)
        grads[f"{self.name}/kernel"] = (columns.T @ dz).reshape(self.k, self.k, self.in_c, self.out_c)
        grads[f"{self.name}/bias"] = dz.sum(axis=0)
        if not need_input_grad:
            return None
        n = y.shape[0]
        d_columns = (dz @ params[f"{self.name}/kernel"].reshape(-1, self.out_c).T).reshape(
            n, self.out_h, self.out_w, self.k, self.k, self.in_c
        )
        d_padded = np.zeros(padded_shape, dtype=np.float32)
        for i in range(self.k):  # col2im: add each kernel offset's share back where it came from
            for j in range(self.k):
                d_padded[
                    :, i : i + self.s * (self.out_h - 1) + 1 : self.s, j : j + self.s * (self.out_w - 1) + 1 : self.s, :
                ] += d_columns[:, :, :, i, j, :]
        top, left = self.pad_h[0], self.pad_w[0]
        return d_padded[:, top : top + self.in_h, left : left + self.in_w, :]


class PoolLayer:
    """Max pooling; the gradient goes to the first maximum of each window (row-major)."""

    def __init__(self, layer: MaxPool2D, input_shape: tuple[int, ...], output_shape: tuple[int, ...]):
        self.p, self.s = layer.pool_size, layer.stride
        self.in_h, self.in_w, _ = input_shape
        self.out_h, self.out_w, _ = output_shape
        self.pad_h = _padding(layer.padding, self.in_h, self.p, self.s)
        self.pad_w = _padding(layer.padding, self.in_w, self.p, self.s)

    def forward(self, params, x, train, rng):
        padded = (
            np.pad(x, ((0, 0), self.pad_h, self.pad_w, (0, 0)), constant_values=-np.inf)
            if any(self.pad_h + self.pad_w)
            else x
        )
        windows = _windows(padded, self.p, self.s, self.out_h, self.out_w)  # N, OH, OW, C, p, p
        flat = windows.reshape(*windows.shape[:4], self.p * self.p)
        winner = flat.argmax(axis=-1)
        y = np.take_along_axis(flat, winner[..., None], axis=-1)[..., 0]
        return y, (winner, padded.shape)

    def backward(self, params, cache, dy, grads, need_input_grad):
        winner, padded_shape = cache
        d_padded = np.zeros(padded_shape, dtype=np.float32)
        for i in range(self.p):
            for j in range(self.p):
                d_padded[
                    :, i : i + self.s * (self.out_h - 1) + 1 : self.s, j : j + self.s * (self.out_w - 1) + 1 : self.s, :
                ] += dy * (winner == i * self.p + j)
        top, left = self.pad_h[0], self.pad_w[0]
        return d_padded[:, top : top + self.in_h, left : left + self.in_w, :]


class FlattenLayer:
    """NHWC -> (N, H*W*C): NumPy's row-major reshape is already the canonical (H, W, C) order."""

    def forward(self, params, x, train, rng):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params, cache, dy, grads, need_input_grad):
        return dy.reshape(cache)


class DenseLayer:
    def __init__(self, layer: Dense):
        _check_activation(layer.activation)
        self.layer, self.name = layer, layer.name

    def forward(self, params, x, train, rng):
        z = x @ params[f"{self.name}/kernel"]
        z += params[f"{self.name}/bias"]
        y = np.maximum(z, 0) if self.layer.activation == "relu" else z
        return y, (x, y)

    def backward(self, params, cache, dy, grads, need_input_grad):
        x, y = cache
        dz = dy * (y > 0) if self.layer.activation == "relu" else dy
        grads[f"{self.name}/kernel"] = x.T @ dz
        grads[f"{self.name}/bias"] = dz.sum(axis=0)
        return dz @ params[f"{self.name}/kernel"].T if need_input_grad else None


class DropoutLayer:
    """Inverted dropout: in training, zero units with probability ``rate`` and scale the rest by 1 / (1 - rate)."""

    def __init__(self, layer: Dropout):
        self.keep = np.float32(1.0 - layer.rate)

    def forward(self, params, x, train, rng):
        if not train:
            return x, None
        mask = (rng.random(x.shape, dtype=np.float32) < self.keep) / self.keep
        return x * mask, mask

    def backward(self, params, cache, dy, grads, need_input_grad):
        return dy if cache is None else dy * cache


Layer = ConvLayer | PoolLayer | FlattenLayer | DenseLayer | DropoutLayer


def build_layers(spec: ModelSpec) -> list[Layer]:
    """One layer object per spec layer, walking ``spec.layer_infos()`` (no size restated here)."""
    layers: list[Layer] = []
    shape: tuple[int, ...] = spec.input_shape
    for info in spec.layer_infos():
        layer = info.layer
        if isinstance(layer, Conv2D):
            layers.append(ConvLayer(layer, shape, info.output_shape))
        elif isinstance(layer, MaxPool2D):
            layers.append(PoolLayer(layer, shape, info.output_shape))
        elif isinstance(layer, Flatten):
            layers.append(FlattenLayer())
        elif isinstance(layer, Dense):
            layers.append(DenseLayer(layer))
        elif isinstance(layer, Dropout):
            layers.append(DropoutLayer(layer))
        else:
            raise BackendError(f"layer {type(layer).__name__} is not supported by the NumPy backend")
        shape = info.output_shape
    return layers


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits (float32)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -float(log_probs[rows, labels].astype(np.float64).mean())
    d_logits = np.exp(log_probs)
    d_logits[rows, labels] -= 1
    return loss, (d_logits / np.float32(len(labels))).astype(np.float32)


class SGD:
    def __init__(self, learning_rate: float):
        self.lr = np.float32(learning_rate)

    def reset(self, params: dict[str, np.ndarray]) -> None:
        pass

    def apply(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, value in params.items():
            value -= self.lr * grads[name]


class Adam:
    """Bias-corrected Adam with cnnbench.config's beta1, beta2 and epsilon (the same in every backend)."""

    def __init__(self, learning_rate: float):
        self.lr = learning_rate
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.scratch: dict[str, np.ndarray] = {}
        self.t = 0

    def reset(self, params: dict[str, np.ndarray]) -> None:
        self.m = {name: np.zeros_like(value) for name, value in params.items()}
        self.v = {name: np.zeros_like(value) for name, value in params.items()}
        self.scratch = {name: np.empty_like(value) for name, value in params.items()}
        self.t = 0

    def apply(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """w -= lr * m_hat / (sqrt(v_hat) + eps), in place: no 16 MB temporaries per step."""
        self.t += 1
        step = np.float32(self.lr / (1 - ADAM_BETA1**self.t))
        v_correction = np.float32(1 / math.sqrt(1 - ADAM_BETA2**self.t))
        for name, value in params.items():
            g, m, v, tmp = grads[name], self.m[name], self.v[name], self.scratch[name]
            m *= np.float32(ADAM_BETA1)
            np.multiply(g, np.float32(1 - ADAM_BETA1), out=tmp)
            m += tmp
            v *= np.float32(ADAM_BETA2)
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1 - ADAM_BETA2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= v_correction
            tmp += np.float32(ADAM_EPSILON)
            np.divide(m, tmp, out=tmp)
            tmp *= step
            value -= tmp


class NumpySession(Session):
    device = "cpu"

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        from cnnbench.initializers import initial_weights

        self.spec, self.config = spec, config
        self.layers = build_layers(spec)
        # The "framework default" initialisation (config.init == "framework"): glorot-uniform from the seed.
        params = initial_weights(spec, "glorot-uniform", config.seed)
        assert params is not None  # only the "framework" scheme gives None
        self.params: dict[str, np.ndarray] = params
        self.dropout_rng = np.random.default_rng(config.seed)
        self.optimizer = Adam(config.learning_rate) if config.optimizer == "adam" else SGD(config.learning_rate)
        self.optimizer.reset(self.params)

    # --- the network ---

    def _forward(self, x: np.ndarray, train: bool) -> tuple[np.ndarray, list[Any]]:
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(self.params, x, train, self.dropout_rng)
            caches.append(cache)
        return x, caches

    def _backward(self, caches: list[Any], d_logits: np.ndarray) -> dict[str, np.ndarray]:
        grads: dict[str, np.ndarray] = {}
        d = d_logits
        for index in range(len(self.layers) - 1, -1, -1):
            d = self.layers[index].backward(self.params, caches[index], d, grads, need_input_grad=index > 0)
        return grads

    def _logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        parts = [
            self._forward(x[i : i + MAX_IMAGES_PER_PASS], train=False)[0] for i in range(0, len(x), MAX_IMAGES_PER_PASS)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_classes), np.float32)

    # --- the Session interface ---

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        # "Device memory" is host memory here: keep contiguous float32 / int64 copies.
        self.x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        self.y_train = np.ascontiguousarray(y_train, dtype=np.int64)
        self.x_test = np.ascontiguousarray(x_test, dtype=np.float32)
        self.y_test = np.ascontiguousarray(y_test, dtype=np.int64)

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """One step per row, in the given order (the rows were checked by Session.train_batches)."""
        losses = np.empty(len(batch_indices), dtype=np.float64)
        for i, rows in enumerate(batch_indices):
            logits, caches = self._forward(self.x_train[rows], train=True)
            losses[i], d_logits = softmax_cross_entropy(logits, self.y_train[rows])
            self.optimizer.apply(self.params, self._backward(caches, d_logits))
        return losses

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        total_loss, correct, n = 0.0, 0, len(self.y_test)
        for start in range(0, n, batch_size):
            logits = self._logits(self.x_test[start : start + batch_size])
            labels = self.y_test[start : start + batch_size]
            loss, _ = softmax_cross_entropy(logits, labels)
            total_loss += loss * len(labels)
            correct += int((logits.argmax(axis=1) == labels).sum())
        return total_loss / n, correct / n

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._logits(x)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        logits, caches = self._forward(np.asarray(x, dtype=np.float32), train=False)
        loss, d_logits = softmax_cross_entropy(logits, np.asarray(y, dtype=np.int64))
        return loss, {name: g.astype(np.float32, copy=False) for name, g in self._backward(caches, d_logits).items()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.params.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, value in self.params.items():
            new = np.asarray(weights[name], dtype=np.float32)
            if new.shape != value.shape:
                raise BackendError(f"{name}: expected shape {value.shape}, got {new.shape}")
            value[...] = new
        self.optimizer.reset(self.params)

    def settings(self) -> dict[str, Any]:
        try:
            blas = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
        except (AttributeError, KeyError, TypeError):  # numpy builds describe their BLAS differently, or not at all
            blas = "unknown"
        threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        return {
            "intra_op_threads": int(threads) if threads and threads.isdigit() else os.cpu_count(),
            "inter_op_threads": 1,
            "precision": "float32",
            "mode": "eager (NumPy, im2col + BLAS)",
            "layout": "NHWC, HWIO kernels (canonical)",
            "blas": blas,
            "max_images_per_pass": MAX_IMAGES_PER_PASS,
        }


class NumpyBackend(Backend):
    name = "numpy"
    framework = "NumPy"
    deterministic = True  # the same BLAS thread count and seed give bit-identical runs

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("numpy") is None:  # never import the framework here
            return "numpy is not installed (pip install numpy)"
        return None

    def framework_version(self, variant: str | None = None) -> str:
        return distribution_version("numpy") or "not installed"

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """OpenBLAS reads its thread count once, when NumPy is imported: set it before."""
        return {"OPENBLAS_NUM_THREADS": str(config.threads)} if config.threads else {}

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        if config.device == "cuda":
            raise BackendUnavailable("the NumPy backend runs on the CPU only")
        return NumpySession(spec, config)
