"""The float64 reference as a backend, and copies of it with one classic batch-norm porting bug each.

They let the core tests run the conformance engine on models with batch normalisation, residual
blocks and global pooling without any framework installed: ``reference-np`` must pass every check,
each ``bn-*`` backend must fail the check that names its bug. Weights are kept in float64 and handed
out as float32, as a framework backend would. Dropout is not implemented (the reference has none),
so these backends declare every layer type but ``Dropout``. Load with
``CNNBENCH_PLUGIN_MODULES=reference_backends`` (the ``fixture_plugins`` fixture).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench import hookimpl
from cnnbench import reference as ref
from cnnbench.backend import Backend, Session
from cnnbench.config import TrainConfig
from cnnbench.spec import LAYER_TYPES, ModelSpec


class ReferenceSession(Session):
    """Training steps of the reference optimizers with the spec's batch-norm update (overridable for the bugs)."""

    def __init__(self, spec: ModelSpec, config: TrainConfig, bug: str = "") -> None:
        self.spec, self.config, self.bug = spec, config, bug
        rng = np.random.default_rng(config.seed)
        self.weights: dict[str, np.ndarray] = {
            name: rng.normal(0.0, 0.1, size=shape) for name, shape in spec.param_shapes().items()
        }
        for name in spec.state_shapes():
            self.weights[name] = np.full(np.shape(self.weights[name]), 1.0 if name.endswith("variance") else 0.0)
        self._reset()

    def _reset(self) -> None:
        self.optimizer = ref.make_optimizer(self.config.optimizer, self.config.learning_rate)

    def _load_data(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> None:
        self.x_train, self.y_train = np.asarray(x_train, np.float64), np.asarray(y_train)
        self.x_test, self.y_test = np.asarray(x_test, np.float64), np.asarray(y_test)

    def _moving(self, x: np.ndarray) -> dict[str, np.ndarray]:
        state = ref.moving_statistics(self.spec, self.weights, x)
        if self.bug == "bn-momentum":  # PyTorch's momentum (0.1) taken for the spec's (0.9)
            state = {
                name: 0.1 * self.weights[name] + 0.9 * (value - 0.9 * self.weights[name]) / 0.1
                for name, value in state.items()
            }
        elif self.bug == "bn-unbiased":  # the running variance updated with the unbiased batch variance
            per_sample = _spatial(self.spec)
            for name in state:
                if name.endswith("moving_variance"):
                    m, count = 0.9, len(x) * per_sample[name]
                    batch = (state[name] - m * self.weights[name]) / (1 - m)
                    state[name] = m * self.weights[name] + (1 - m) * batch * count / (count - 1)
        return state

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        losses = []
        for row in batch_indices:
            x, y = self.x_train[row], self.y_train[row]
            loss, grads, _ = ref.loss_and_gradients(self.spec, self.weights, x, y)
            state = self._moving(x)
            trainable = {name: value for name, value in self.weights.items() if name in grads}
            self.weights = {**self.weights, **self.optimizer.step(trainable, grads), **state}
            losses.append(loss)
        return np.asarray(losses)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        if self.bug == "bn-batch-stats-in-inference":  # evaluate and predict still on the batch's statistics
            return ref.forward(self.spec, self.weights, x, training=True)
        return ref.forward(self.spec, self.weights, x)

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        logits = np.concatenate(
            [self._logits(self.x_test[i : i + batch_size]) for i in range(0, len(self.y_test), batch_size)]
        )
        loss, _ = ref.softmax_cross_entropy(logits, self.y_test)
        return loss, float((logits.argmax(axis=1) == self.y_test).mean())

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._logits(np.asarray(x, np.float64)).astype(np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads, _ = ref.loss_and_gradients(self.spec, self.weights, np.asarray(x, np.float64), y)
        return loss, {name: value.astype(np.float32) for name, value in grads.items()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: value.astype(np.float32) for name, value in self.weights.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {name: np.asarray(value, np.float64).copy() for name, value in weights.items()}
        self._reset()


def _spatial(spec: ModelSpec) -> dict[str, int]:
    """moving_variance name -> values per channel per sample that its batch-norm layer averages over."""
    counts = {}
    for info in spec.walk():
        if type(info.layer).__name__ == "BatchNorm":
            shape = info.input_shape
            counts[f"{info.layer.name}/moving_variance"] = int(np.prod(shape[:-1]))
    return counts


class ReferenceBackend(Backend):
    """The float64 reference, run as a backend (no framework: always available)."""

    framework = "NumPy float64 reference (test fixture)"
    deterministic = True
    layers = frozenset(LAYER_TYPES) - {"Dropout"}
    bug = ""

    def __init__(self, name: str = "reference-np", bug: str = "") -> None:
        self.name, self.bug = name, bug

    def unavailable_reason(self) -> str | None:
        return None

    def framework_version(self, variant: str | None = None) -> str:
        return np.__version__

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        return ReferenceSession(spec, config, self.bug)


#: Each bug's backend name.
BUGS = ("bn-momentum", "bn-unbiased", "bn-batch-stats-in-inference")


@hookimpl
def register_backends(register: Any) -> None:
    register(ReferenceBackend())
    for bug in BUGS:
        register(ReferenceBackend(bug, bug))


@hookimpl
def register_models(register: Any) -> None:
    """A ResNet small enough for the float64 reference to train in the kit: every new layer type."""
    from cnnbench.models import Model, zoo

    def tiny_resnet(input_shape: Any, num_classes: int, dropout: float | None = None) -> ModelSpec:
        return zoo.resnet(input_shape, num_classes, blocks_per_stage=1, widths=(4, 8, 16), name="tiny-resnet")

    register(Model("tiny-resnet", "a 1-block-per-stage ResNet of 4, 8 and 16 filters (test fixture)", tiny_resnet))
