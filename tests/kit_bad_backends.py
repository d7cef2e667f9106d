"""Backends that break the contract on purpose, one classic porting bug each, to prove the kit names it.

Each is the NumPy example backend (examples/cnnbench-numpy) with one fault, so everything else
about it is right and the kit's message must point at that fault alone. Module-level classes with
no-argument constructors: the kit's worker run imports them by name.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.spec import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ModelSpec
from cnnbench_numpy.backend import (
    ConvLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    NumpyBackend,
    NumpySession,
    PoolLayer,
    softmax_cross_entropy,
)

# --- building blocks ------------------------------------------------------------------------------


class ConfigurableAdam:
    """Adam with every knob a port gets wrong: epsilon, its placement, the betas, the bias correction."""

    def __init__(
        self,
        learning_rate: float,
        epsilon: float = ADAM_EPSILON,
        keras_form: bool = False,
        beta1: float = ADAM_BETA1,
        beta2: float = ADAM_BETA2,
        bias_correction: bool = True,
    ):
        self.lr, self.epsilon, self.keras_form = learning_rate, epsilon, keras_form
        self.beta1, self.beta2, self.bias_correction = beta1, beta2, bias_correction
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.t = 0

    def reset(self, params: dict[str, np.ndarray]) -> None:
        self.m = {name: np.zeros_like(value, dtype=np.float64) for name, value in params.items()}
        self.v = {name: np.zeros_like(value, dtype=np.float64) for name, value in params.items()}
        self.t = 0

    def apply(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        c1 = 1 - self.beta1**self.t if self.bias_correction else 1.0
        c2 = 1 - self.beta2**self.t if self.bias_correction else 1.0
        for name, value in params.items():
            g = grads[name].astype(np.float64)
            self.m[name] = self.beta1 * self.m[name] + (1 - self.beta1) * g
            self.v[name] = self.beta2 * self.v[name] + (1 - self.beta2) * g * g
            if self.keras_form:  # epsilon on sqrt(v), the bias correction folded into the step size
                step = self.lr * math.sqrt(c2) / c1 * self.m[name] / (np.sqrt(self.v[name]) + self.epsilon)
            else:
                step = self.lr * (self.m[name] / c1) / (np.sqrt(self.v[name] / c2) + self.epsilon)
            value -= step.astype(np.float32)


class MomentumSGD:
    """SGD with PyTorch-style momentum: the default of many ports' optimizers, not cnnbench's plain SGD."""

    def __init__(self, learning_rate: float, momentum: float = 0.9):
        self.lr, self.momentum = np.float32(learning_rate), np.float32(momentum)
        self.buffers: dict[str, np.ndarray] = {}

    def reset(self, params: dict[str, np.ndarray]) -> None:
        self.buffers = {}

    def apply(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, value in params.items():
            buffer = self.buffers.get(name)
            self.buffers[name] = grads[name].copy() if buffer is None else self.momentum * buffer + grads[name]
            value -= self.lr * self.buffers[name]


class BadBackend(NumpyBackend):
    """The NumPy backend building ``session_class``; ``name`` says which bug."""

    session_class: type[NumpySession] = NumpySession
    deterministic = False

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> NumpySession:
        return self.session_class(spec, config)


# --- structure and layout -------------------------------------------------------------------------


class WrongParameterCountBackend(BadBackend):
    """Builds conv1 with 33 filters instead of the spec's 32."""

    name = "bad-parameter-count"

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> NumpySession:
        layers = tuple(
            replace(layer, filters=layer.filters + 1) if isinstance(layer, Conv2D) and layer.name == "conv1" else layer
            for layer in spec.layers
        )
        return NumpySession(replace(spec, layers=layers), config)


class ValidPaddingBackend(BadBackend):
    """Convolutions with VALID padding: a framework that infers shapes builds dense1 from what they give."""

    name = "bad-valid-padding"

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> NumpySession:
        layers = tuple(replace(layer, padding="VALID") if isinstance(layer, Conv2D) else layer for layer in spec.layers)
        return NumpySession(replace(spec, layers=layers), config)


class ChannelsFirstFlatten(FlattenLayer):
    def forward(self, params, x, train, rng):
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1), x.shape

    def backward(self, params, cache, dy, grads, need_input_grad):
        n, h, w, c = cache
        return dy.reshape(n, c, h, w).transpose(0, 2, 3, 1)


class FlattenSession(NumpySession):
    """Flattens in (C, H, W) order, PyTorch's natural one, instead of the spec's (H, W, C)."""

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        super().__init__(spec, config)
        self.layers = [ChannelsFirstFlatten() if isinstance(layer, FlattenLayer) else layer for layer in self.layers]


class WrongFlattenBackend(BadBackend):
    name = "bad-flatten"
    session_class = FlattenSession


class PadBeforeSession(NumpySession):
    """SAME padding with the odd extra row/column before instead of after (same shapes, other numbers)."""

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        super().__init__(spec, config)
        for layer in self.layers:
            if isinstance(layer, ConvLayer):
                layer.pad_h, layer.pad_w = layer.pad_h[::-1], layer.pad_w[::-1]


class PadBeforeBackend(BadBackend):
    name = "bad-pad-before"
    session_class = PadBeforeSession


class SymmetricPaddingSession(NumpySession):
    """Pads 1 on each side of a 4x4 kernel, as a framework's padding=1 does: 27x27 after conv1, 2,304 flattened."""

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        super().__init__(spec, config)
        layers: list[Any] = []
        h, w, c = spec.input_shape
        for layer in spec.layers:
            if isinstance(layer, Conv2D):
                pad = (layer.kernel_size - 1) // 2
                out = (
                    (h + 2 * pad - layer.kernel_size) // layer.stride + 1,
                    (w + 2 * pad - layer.kernel_size) // layer.stride + 1,
                )
                built = ConvLayer(layer, (h, w, c), (*out, layer.filters))
                built.pad_h = built.pad_w = (pad, pad)
                layers.append(built)
                (h, w), c = out, layer.filters
            elif isinstance(layer, MaxPool2D):
                out = (h - layer.pool_size) // layer.stride + 1, (w - layer.pool_size) // layer.stride + 1
                layers.append(PoolLayer(layer, (h, w, c), (*out, c)))
                h, w = out
            elif isinstance(layer, Flatten):
                layers.append(FlattenLayer())
            elif isinstance(layer, Dense):
                layers.append(DenseLayer(layer))
            elif isinstance(layer, Dropout):
                layers.append(DropoutLayer(layer))
        self.layers = layers


class SymmetricPaddingBackend(BadBackend):
    name = "bad-symmetric-padding"
    session_class = SymmetricPaddingSession


class TransposedKernelSession(NumpySession):
    """Converts canonical HWIO conv kernels to a native layout with height and width swapped (and back)."""

    def _native(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.swapaxes(value, 0, 1) if name.startswith("conv") and name.endswith("/kernel") else value
            for name, value in weights.items()
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(value) for name, value in self._native(super().get_weights()).items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        super().set_weights(self._native(weights))

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = super().loss_and_gradients(x, y)
        return loss, {name: np.ascontiguousarray(value) for name, value in self._native(grads).items()}


class TransposedKernelBackend(BadBackend):
    name = "bad-transposed-kernels"
    session_class = TransposedKernelSession


class LiveWeightsSession(NumpySession):
    """get_weights returns the live arrays, not copies."""

    def get_weights(self) -> dict[str, np.ndarray]:
        return dict(self.params)


class LiveWeightsBackend(BadBackend):
    name = "bad-live-weights"
    session_class = LiveWeightsSession


# --- loss, evaluate, batches ----------------------------------------------------------------------


def summed_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    loss, d_logits = softmax_cross_entropy(logits, labels)
    return loss * len(labels), d_logits * np.float32(len(labels))


class SummedLossSession(NumpySession):
    """The summed cross-entropy (reduction="sum") everywhere, where the spec's is the mean."""

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        losses = np.empty(len(batch_indices))
        for i, rows in enumerate(batch_indices):
            logits, caches = self._forward(self.x_train[rows], train=True)
            losses[i], d_logits = summed_cross_entropy(logits, self.y_train[rows])
            self.optimizer.apply(self.params, self._backward(caches, d_logits))
        return losses

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        logits, caches = self._forward(np.asarray(x, dtype=np.float32), train=False)
        loss, d_logits = summed_cross_entropy(logits, np.asarray(y, dtype=np.int64))
        return loss, self._backward(caches, d_logits)


class SummedLossBackend(BadBackend):
    name = "bad-summed-loss"
    session_class = SummedLossSession


class BatchMeansSession(NumpySession):
    """evaluate averages the batch means, so a partial last batch weighs as much as a full one."""

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        losses, correct = [], 0
        for start in range(0, len(self.y_test), batch_size):
            logits = self._logits(self.x_test[start : start + batch_size])
            labels = self.y_test[start : start + batch_size]
            losses.append(softmax_cross_entropy(logits, labels)[0])
            correct += int((logits.argmax(axis=1) == labels).sum())
        return float(np.mean(losses)), correct / len(self.y_test)


class BatchMeansBackend(BadBackend):
    name = "bad-eval-batch-means"
    session_class = BatchMeansSession


class DroppedLastBatchSession(NumpySession):
    """evaluate skips a partial last batch (a DataLoader with drop_last=True)."""

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        full = len(self.y_test) - len(self.y_test) % batch_size
        saved = self.x_test, self.y_test
        self.x_test, self.y_test = self.x_test[:full], self.y_test[:full]
        try:
            return super().evaluate(batch_size)
        finally:
            self.x_test, self.y_test = saved


class DroppedLastBatchBackend(BadBackend):
    name = "bad-eval-drop-last"
    session_class = DroppedLastBatchSession


class ShufflingSession(NumpySession):
    """Reorders the rows of every call with its own seeded RNG, as a DataLoader(shuffle=True) would."""

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        order = np.random.default_rng(self.config.seed + len(batch_indices)).permutation(len(batch_indices))
        return super()._train_batches(batch_indices[order])


class BatchOrderIgnoringBackend(BadBackend):
    name = "bad-batch-order"
    session_class = ShufflingSession


class ReversedSession(NumpySession):
    """Runs the rows of each call last to first (and returns their losses in the given order)."""

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        return super()._train_batches(batch_indices[::-1].copy())[::-1]


class ReversedBatchesBackend(BadBackend):
    name = "bad-reversed-batches"
    session_class = ReversedSession


class ContiguousBatchesSession(NumpySession):
    """Ignores the indices and trains on consecutive slices of the training set."""

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        n_batches, batch_size = batch_indices.shape
        self._cursor = getattr(self, "_cursor", 0)
        rows = []
        for _ in range(n_batches):
            start = self._cursor % (len(self.y_train) - batch_size + 1)
            rows.append(np.arange(start, start + batch_size))
            self._cursor += batch_size
        return super()._train_batches(np.stack(rows).astype(np.int64))


class IndexIgnoringBackend(BadBackend):
    name = "bad-indices"
    session_class = ContiguousBatchesSession


# --- optimizers -----------------------------------------------------------------------------------


def adam_session(**knobs: Any) -> type[NumpySession]:
    """A session class whose Adam has ``knobs`` (epsilon, keras_form, beta1, bias_correction)."""

    class AdamSession(NumpySession):
        def __init__(self, spec: ModelSpec, config: TrainConfig):
            super().__init__(spec, config)
            if config.optimizer == "adam":
                self.optimizer = ConfigurableAdam(config.learning_rate, **knobs)  # type: ignore[assignment]
                self.optimizer.reset(self.params)

    return AdamSession


class KerasEpsilonBackend(BadBackend):
    """Adam with Keras' default epsilon 1e-7 (added to sqrt(v_hat)) instead of cnnbench's 1e-8."""

    name = "bad-adam-epsilon"
    session_class = adam_session(epsilon=1e-7)


class KerasFormEpsilonBackend(BadBackend):
    """Adam exactly as Keras writes it with its default epsilon: 1e-7 on sqrt(v), bias correction in the step."""

    name = "bad-adam-keras-epsilon"
    session_class = adam_session(epsilon=1e-7, keras_form=True)


class NoBiasCorrectionBackend(BadBackend):
    name = "bad-adam-bias-correction"
    session_class = adam_session(bias_correction=False)


class WrongBeta1Backend(BadBackend):
    name = "bad-adam-beta1"
    session_class = adam_session(beta1=0.5)


class MomentumSession(NumpySession):
    def __init__(self, spec: ModelSpec, config: TrainConfig):
        super().__init__(spec, config)
        if config.optimizer == "sgd":
            self.optimizer = MomentumSGD(config.learning_rate)  # type: ignore[assignment]


class MomentumBackend(BadBackend):
    name = "bad-sgd-momentum"
    session_class = MomentumSession


class NoResetSession(NumpySession):
    """set_weights loads the weights but keeps Adam's moments and step count."""

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, value in self.params.items():
            value[...] = np.asarray(weights[name], dtype=np.float32)


class NoResetBackend(BadBackend):
    name = "bad-no-reset"
    session_class = NoResetSession


# --- dropout --------------------------------------------------------------------------------------


class UnscaledDropout(DropoutLayer):
    def forward(self, params, x, train, rng):
        if not train:
            return x, None
        mask = (rng.random(x.shape, dtype=np.float32) < self.keep).astype(np.float32)
        return x * mask, mask


class HalfDropout(DropoutLayer):
    def __init__(self, layer: Dropout):
        super().__init__(replace(layer, rate=0.5))


class RepeatingDropout(DropoutLayer):
    """Draws each step's mask from a generator re-created from the same seed: the same mask every step."""

    def forward(self, params, x, train, rng):
        return super().forward(params, x, train, np.random.default_rng(0))


class SharedMaskDropout(DropoutLayer):
    """One mask for the whole batch (shape [1, ...]) instead of one per image."""

    def forward(self, params, x, train, rng):
        if not train:
            return x, None
        mask = (rng.random((1, *x.shape[1:]), dtype=np.float32) < self.keep) / self.keep
        return x * mask, np.broadcast_to(mask, x.shape)


def dropout_session(kind: type[DropoutLayer]) -> type[NumpySession]:
    """A session class whose Dropout layers are ``kind``."""

    class DropoutSession(NumpySession):
        def __init__(self, spec: ModelSpec, config: TrainConfig):
            super().__init__(spec, config)
            dropouts = iter(layer for layer in spec.layers if isinstance(layer, Dropout))
            self.layers = [kind(next(dropouts)) if isinstance(layer, DropoutLayer) else layer for layer in self.layers]

    return DropoutSession


class UnscaledDropoutBackend(BadBackend):
    """Dropout that zeroes units but does not scale the kept ones by 1/(1 - rate)."""

    name = "bad-dropout-unscaled"
    session_class = dropout_session(UnscaledDropout)


class HalfDropoutBackend(BadBackend):
    """Dropout rate 0.5 (a framework default) instead of the spec's 0.2."""

    name = "bad-dropout-rate"
    session_class = dropout_session(HalfDropout)


class RepeatingDropoutBackend(BadBackend):
    name = "bad-dropout-repeats"
    session_class = dropout_session(RepeatingDropout)


class SharedMaskDropoutBackend(BadBackend):
    name = "bad-dropout-shared-mask"
    session_class = dropout_session(SharedMaskDropout)


class UnseededSession(NumpySession):
    """The dropout generator is seeded from the operating system, not config.seed."""

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        super().__init__(spec, config)
        self.dropout_rng = np.random.default_rng()


class UnseededDropoutBackend(BadBackend):
    name = "bad-dropout-unseeded"
    deterministic = True  # claimed, and broken by the unseeded generator
    session_class = UnseededSession


class PredictDropoutSession(NumpySession):
    """Forgets inference mode in predict (and so in evaluate): dropout stays active."""

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(x, dtype=np.float32), train=True)[0]


class PredictDropoutBackend(BadBackend):
    name = "bad-dropout-in-predict"
    session_class = PredictDropoutSession


class EvaluateDropoutSession(NumpySession):
    """predict is in inference mode, evaluate is not: dropout stays active in evaluate."""

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        total, correct, n = 0.0, 0, len(self.y_test)
        for start in range(0, n, batch_size):
            logits = self._forward(self.x_test[start : start + batch_size], train=True)[0]
            labels = self.y_test[start : start + batch_size]
            total += softmax_cross_entropy(logits, labels)[0] * len(labels)
            correct += int((logits.argmax(axis=1) == labels).sum())
        return total / n, correct / n


class EvaluateDropoutBackend(BadBackend):
    name = "bad-dropout-in-evaluate"
    session_class = EvaluateDropoutSession


# --- availability ---------------------------------------------------------------------


class MissingFrameworkBackend(BadBackend):
    """Says its framework is missing: the kit must skip it with this reason, not fail."""

    name = "bad-missing"

    def unavailable_reason(self) -> str | None:
        return "moonlib is not installed (pip install moonlib)"
