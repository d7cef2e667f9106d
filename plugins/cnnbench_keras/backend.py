"""Keras 3 implementation of the spec: one ``keras.Sequential``, trained the Keras way, on any engine.

The engine (Keras' "backend": tensorflow, jax or torch) is fixed when keras is first imported,
from ``KERAS_BACKEND``; the harness starts each variant in its own worker process with the
environment from ``KerasBackend.process_environment``. keras and the engines are imported
inside methods only, so listing backends never pays for (or fails on) them.

Canonical weights need no conversion here: Keras' ``Conv2D`` kernels are HWIO, ``Dense``
kernels (in, out), and ``Flatten`` flattens channels_last activations in (H, W, C) order.

Batch normalisation is ``keras.layers.BatchNormalization(momentum=spec momentum, epsilon=spec epsilon)``:
Keras 3 already follows the spec's convention on every engine (the batch's biased variance, from
``keras.ops.moments``, in the normalisation and in the moving update ``moving = momentum * moving +
(1 - momentum) * batch``), and its ``padding="same"`` is TensorFlow's SAME on the jax and torch engines
too (the odd extra row after); tests/test_backend_keras.py checks both against the reference per engine.
A spec with residual blocks is built with the functional API (``Add``, then the activation); any other,
the LeNet included, stays the ``keras.Sequential`` it always was.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from cnnbench.backend import Backend, BackendOption, Session, distribution_version, missing_module_reason
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.errors import BackendError, BackendUnavailable, UsageError
from cnnbench.frameworks import FRAMEWORKS, JAX, Framework
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
    is_state,
    layer_infos,
)

#: Keras engines, selected as ``keras:<engine>``; the first is the default.
ENGINES = ("tensorflow", "jax", "torch")
#: Values of ``--backend-option keras.jit_compile``; "auto" lets Keras decide (docs/decisions.md#keras-jit-compile).
JIT_COMPILE_CHOICES: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}
#: ``jit_compile`` per engine when the option is absent: the mode of the framework's own backend, on a GPU
#: too; why, with the figures: docs/decisions.md#keras-jit-compile.
DEFAULT_JIT_COMPILE = {"tensorflow": False, "jax": True, "torch": False}
#: The cnnbench extra that installs each engine (for the "not installed" hint).
ENGINE_EXTRAS = {"tensorflow": "keras", "jax": "jax", "torch": "torch"}
#: Engines whose CPU convolutions are oneDNN's: a strided 1x1 Conv2D is taken apart there (keras_layers).
ONEDNN_ENGINES = ("tensorflow", "torch")
ACCURACY = "accuracy"
#: Values of ``--backend-option keras.evaluate``: the Keras call (docs/decisions.md#keras-evaluation-loop).
EVALUATE_CHOICES = ("test_on_batch", "evaluate")


def engine_for(variant: str | None) -> str:
    """The Keras engine of a ``keras:<variant>`` selection (None -> the default engine)."""
    engine = variant or ENGINES[0]
    if engine not in ENGINES:
        raise UsageError(f"unknown Keras engine {engine!r}; choose from: {', '.join(ENGINES)}")
    return engine


def jit_compile_for(config: TrainConfig, engine: str) -> bool | str:
    """``model.compile(jit_compile=...)`` from ``--backend-option keras.jit_compile``, else the engine default."""
    requested = config.option("keras", "jit_compile")
    if requested is None:
        return DEFAULT_JIT_COMPILE[engine]
    key = requested.strip().lower()
    if key not in JIT_COMPILE_CHOICES:
        raise UsageError(f"keras.jit_compile must be one of {', '.join(JIT_COMPILE_CHOICES)}, got {requested!r}")
    return JIT_COMPILE_CHOICES[key]


#: The Keras attribute of each canonical weight suffix (the same names: nothing to convert).
WEIGHT_PARTS = {
    Conv2D: ("kernel", "bias"),
    Dense: ("kernel", "bias"),
    BatchNorm: ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _check_activation(layer: Layer) -> None:
    activation = getattr(layer, "activation", None)
    if activation not in (None, "relu"):
        raise BackendError(f"activation {activation!r} is not supported by the keras backend")


def keras_layers(layer: Layer, weighted: dict[str, Any]) -> list[Any]:
    """The Keras layers of one spec layer (a batch norm's activation is a layer of its own), in order.

    Layers with weights are recorded in ``weighted`` under their spec name. Not for ``Residual`` (see ``_apply``).
    """
    import keras
    from keras import layers

    _check_activation(layer)
    built: list[Any]
    if isinstance(layer, Conv2D):
        stride = layer.stride
        subsample = []
        if layer.kernel_size == 1 and stride > 1 and keras.backend.backend() in ONEDNN_ENGINES:
            # oneDNN's strided 1x1 filter gradient is wrong on AVX2: the stride first, as a 1x1
            # max-pool (no padding either way), then a stride-1 conv (docs/decisions.md#strided-1x1-convolutions).
            subsample = [
                layers.MaxPooling2D(1, strides=stride, data_format="channels_last", name=f"{layer.name}_subsample")
            ]
            stride = 1
        built = [
            *subsample,
            layers.Conv2D(
                layer.filters,
                layer.kernel_size,
                strides=stride,
                padding=layer.padding.lower(),
                activation=layer.activation,
                use_bias=layer.use_bias,
                data_format="channels_last",
                name=layer.name,
            ),
        ]
    elif isinstance(layer, MaxPool2D):
        built = [
            layers.MaxPooling2D(
                layer.pool_size,
                strides=layer.stride,
                padding=layer.padding.lower(),
                data_format="channels_last",
                name=layer.name,
            )
        ]
    elif isinstance(layer, Flatten):
        built = [layers.Flatten(data_format="channels_last", name=layer.name)]
    elif isinstance(layer, Dense):
        built = [layers.Dense(layer.units, activation=layer.activation, name=layer.name)]
    elif isinstance(layer, Dropout):
        built = [layers.Dropout(layer.rate, name=layer.name)]
    elif isinstance(layer, BatchNorm):
        built = [layers.BatchNormalization(axis=-1, momentum=layer.momentum, epsilon=layer.epsilon, name=layer.name)]
        if layer.activation is not None:
            built.append(layers.Activation(layer.activation, name=f"{layer.name}_{layer.activation}"))
    elif isinstance(layer, GlobalAvgPool):
        built = [layers.GlobalAveragePooling2D(data_format="channels_last", name=layer.name)]
    else:  # pragma: no cover - guarded by the spec's Layer union
        raise BackendError(f"layer {layer!r} is not supported by the keras backend")
    if type(layer) in WEIGHT_PARTS:  # the Keras layer named after the spec layer holds its weights
        weighted[layer.name] = next(keras_layer for keras_layer in built if keras_layer.name == layer.name)
    return built


def _apply(spec_layers: tuple[Layer, ...], x: Any, input_shape: tuple[int, ...], weighted: dict[str, Any]) -> Any:
    """Apply ``spec_layers`` to the symbolic tensor ``x`` (functional API), recursing into residual blocks.

    Every layer's output shape is checked against ``cnnbench.spec.layer_infos``.
    """
    from keras import layers

    for info in layer_infos(spec_layers, input_shape):
        layer = info.layer
        if isinstance(layer, Residual):
            _check_activation(layer)
            body = _apply(layer.body, x, info.input_shape, weighted)
            shortcut = _apply(layer.shortcut, x, info.input_shape, weighted)
            if layer.activation is None:
                x = layers.Add(name=layer.name)([body, shortcut])
            else:
                x = layers.Add(name=f"{layer.name}_add")([body, shortcut])
                x = layers.Activation(layer.activation, name=layer.name)(x)
        else:
            for built in keras_layers(layer, weighted):
                x = built(x)
        if tuple(x.shape[1:]) != info.output_shape:
            raise BackendError(f"{layer.name}: keras gives shape {tuple(x.shape[1:])}, the spec {info.output_shape}")
    return x


def _size(variables: list[Any]) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def build_model(spec: ModelSpec):
    """The Keras model of the spec; returns (model, {layer name: layer with weights}).

    A ``keras.Sequential`` unless the spec has residual blocks (then the functional API).
    """
    import keras

    weighted: dict[str, Any] = {}
    name = spec.name.replace("-", "_")
    if "Residual" in spec.layer_types():
        inputs = keras.Input(shape=spec.input_shape)
        model = keras.Model(inputs, _apply(spec.layers, inputs, spec.input_shape, weighted), name=name)
    else:
        model_layers: list[Any] = [keras.Input(shape=spec.input_shape)]
        for layer in spec.layers:
            model_layers += keras_layers(layer, weighted)
        model = keras.Sequential(model_layers, name=name)
    trainable, state = _size(model.trainable_weights), _size(model.non_trainable_weights)
    if (trainable, state) != (spec.num_params, spec.num_state):
        raise BackendError(
            f"keras model has {trainable} parameters and {state} state values, the spec {spec.num_params} "
            f"and {spec.num_state}"
        )
    return model, weighted


def canonical_variables(spec: ModelSpec, weighted: dict[str, Any]) -> list[tuple[str, Any]]:
    """(canonical name, Keras variable) for every weight of ``spec.param_shapes()``, in its order."""
    named = []
    for info in spec.walk():
        layer = info.layer
        for part in WEIGHT_PARTS.get(type(layer), ()):
            variable = getattr(weighted[layer.name], part)
            if variable is not None:  # a convolution without bias
                named.append((f"{layer.name}/{part}", variable))
    return named


class KerasSession(Session):
    """A compiled ``keras.Sequential`` and the resident dataset, trained with ``train_on_batch``.

    Why ``train_on_batch`` and not ``fit``, with the figures: docs/decisions.md#keras-train-loop.
    """

    #: The resident dataset (engine tensors), None until ``load_data``.
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any

    def __init__(self, spec: ModelSpec, config: TrainConfig, engine: str):
        import keras

        if keras.backend.backend() != engine:
            raise BackendError(
                f"keras runs on {keras.backend.backend()!r} in this process, not {engine!r}: "
                "KERAS_BACKEND must be set before keras is imported (see process_environment)"
            )
        self.keras, self.ops = keras, keras.ops
        self.spec, self.config, self.engine = spec, config, engine
        self.framework: Framework = FRAMEWORKS[engine]
        self.jit_compile = jit_compile_for(config, engine)
        self.notes = self.framework.apply_threads(config.threads) if config.threads else {}
        gpu = self.framework.gpu_name()
        if config.device == "cuda" and gpu is None:
            raise BackendUnavailable(f"CUDA requested but Keras' {engine} engine sees no GPU")
        # "cpu" on a machine whose GPU is visible (the worker hides it through the environment).
        self.device_scope = "cpu:0" if config.device == "cpu" and gpu is not None else None
        self.device = f"cuda:0 ({gpu})" if gpu is not None and self.device_scope is None else "cpu"
        keras.utils.set_random_seed(config.seed)  # Python, NumPy, engine and Keras seed generators
        with self._placement():
            self.model, self.weighted = build_model(spec)
        self.named = canonical_variables(spec, self.weighted)
        self.trainable = [(name, v) for name, v in self.named if not is_state(name)]
        self.state = [(name, v) for name, v in self.named if is_state(name)]
        self.dropouts = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)]
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.x_train = self.y_train = self.x_test = self.y_test = None
        #: Whether ``evaluate`` calls ``model.evaluate`` (``--backend-option keras.evaluate=evaluate``).
        self.uses_model_evaluate = config.option("keras", "evaluate", EVALUATE_CHOICES[0]) == "evaluate"
        self._compile()

    def _placement(self):
        return self.keras.device(self.device_scope) if self.device_scope else contextlib.nullcontext()

    def _compile(self) -> None:
        """Loss, optimizer and metrics; Keras traces the train step at the first ``train_on_batch``."""
        keras = self.keras
        if self.config.optimizer == "adam":
            optimizer = keras.optimizers.Adam(
                learning_rate=self.config.learning_rate, beta_1=ADAM_BETA1, beta_2=ADAM_BETA2, epsilon=ADAM_EPSILON
            )
        else:
            optimizer = keras.optimizers.SGD(learning_rate=self.config.learning_rate)  # no momentum
        self.model.compile(
            optimizer=optimizer,
            loss=self.loss,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name=ACCURACY)],
            jit_compile=self.jit_compile,
        )

    def _images(self, x: np.ndarray):
        return self.ops.convert_to_tensor(np.ascontiguousarray(x, dtype=np.float32))

    def _labels(self, y: np.ndarray):
        return self.ops.convert_to_tensor(np.asarray(y, dtype=np.int64))

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        with self._placement():
            self.x_train, self.x_test = self._images(x_train), self._images(x_test)
            self.y_train, self.y_test = self._labels(y_train), self._labels(y_test)

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        ops, model = self.ops, self.model
        losses = np.empty(len(batch_indices), dtype=np.float64)
        with self._placement():
            for i, row in enumerate(batch_indices):
                rows = ops.convert_to_tensor(row)
                x, y = ops.take(self.x_train, rows, axis=0), ops.take(self.y_train, rows, axis=0)
                logs = model.train_on_batch(x, y, return_dict=True)
                losses[i] = logs["loss"]
        return losses

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        if self.uses_model_evaluate:
            return self._evaluate_with_model_evaluate(batch_size)
        if self.x_test is None:
            raise BackendError("evaluate called before load_data")
        n = int(self.x_test.shape[0])
        loss, correct = 0.0, 0
        with self._placement():
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                # Each call gives its batch's mean loss and accuracy (float32 count / size, so the count is exact
                # after rounding): the loss weighted by the batch's size, the correct predictions counted.
                logs = self.model.test_on_batch(
                    self.x_test[start : start + size], self.y_test[start : start + size], return_dict=True
                )
                loss += float(logs["loss"]) * size
                correct += round(float(logs[ACCURACY]) * size)
        return loss / n, correct / n

    def _evaluate_with_model_evaluate(self, batch_size: int) -> tuple[float, float]:
        """``model.evaluate`` on the resident tensors: Keras wraps them in its input pipeline first."""
        with self._placement():
            logs = self.model.evaluate(self.x_test, self.y_test, batch_size=batch_size, verbose=0, return_dict=True)
        return float(logs["loss"]), float(logs[ACCURACY])

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._placement():
            logits = self.model.predict(self._images(x), batch_size=self.config.eval_batch_size, verbose=0)
        return np.asarray(logits, dtype=np.float32)

    def _variables(self) -> list[tuple[str, Any]]:
        """(canonical name, Keras variable) for every weight, in spec order (moving statistics included)."""
        return self.named

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Dropout off; batch norm on batch statistics (``training=True``) with the moving statistics left alone.

        Without batch norm the model runs with ``training=False`` as it always did. With it, the jax engine
        calls the model statelessly (the moving statistics it returns are dropped); the tensorflow and torch
        engines call it eagerly, which assigns the moving statistics, so they are saved and put back.
        """
        named = self.trainable
        training = bool(self.state)
        with self._placement(), self._dropout_off(training):
            images, labels = self._images(x), self._labels(y)
            variables = [v for _, v in named]
            if self.engine == "jax":
                loss, grads = self._jax_gradients(images, labels, variables, training)
            else:
                saved = [self.ops.copy(v.value) for _, v in self.state]
                try:
                    if self.engine == "tensorflow":
                        loss, grads = self._tf_gradients(images, labels, variables, training)
                    else:
                        loss, grads = self._torch_gradients(images, labels, variables, training)
                finally:
                    for (_, variable), value in zip(self.state, saved, strict=True):
                        variable.assign(value)
        to_numpy = self.ops.convert_to_numpy
        gradients = {name: np.array(to_numpy(g), dtype=np.float32) for (name, _), g in zip(named, grads, strict=True)}
        return float(to_numpy(loss)), gradients

    @contextlib.contextmanager
    def _dropout_off(self, training: bool):
        """With ``training=True`` (batch statistics), Keras would drop units too: rate 0 for the call."""
        rates = [layer.rate for layer in self.dropouts] if training else []
        try:
            for layer in self.dropouts if training else ():
                layer.rate = 0.0
            yield
        finally:
            for layer, rate in zip(self.dropouts, rates, strict=False):
                layer.rate = rate

    def _tf_gradients(self, images, labels, variables, training):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self.loss(labels, self.model(images, training=training))
        return loss, tape.gradient(loss, variables)

    def _jax_gradients(self, images, labels, variables, training):
        import jax

        # Keras variables overload ==, so positions are found by identity.
        position = {id(v): i for i, v in enumerate(self.model.trainable_variables)}
        trainable = [v.value for v in self.model.trainable_variables]
        non_trainable = [v.value for v in self.model.non_trainable_variables]

        def loss_of(values):
            logits, _ = self.model.stateless_call(values, non_trainable, images, training=training)
            return self.loss(labels, logits)

        loss, grads = jax.value_and_grad(loss_of)(trainable)
        return loss, [grads[position[id(v)]] for v in variables]

    def _torch_gradients(self, images, labels, variables, training):
        import torch

        loss = self.loss(labels, self.model(images, training=training))
        return loss.detach(), torch.autograd.grad(loss, [v.value for v in variables])

    def get_weights(self) -> dict[str, np.ndarray]:
        ops = self.ops
        # Through a tensor copy: NumPy 2 warns about the __array__ of Keras and TF variables (no copy argument).
        return {
            name: np.array(ops.convert_to_numpy(ops.copy(variable)), dtype=np.float32)
            for name, variable in self._variables()
        }

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        named = self._variables()
        for name, variable in named:
            if name not in weights:
                raise ValueError(f"missing weight {name!r}")
            if tuple(np.shape(weights[name])) != tuple(variable.shape):
                got = tuple(np.shape(weights[name]))
                raise ValueError(f"{name}: expected shape {tuple(variable.shape)}, got {got}")
        with self._placement():
            for name, variable in named:
                variable.assign(np.asarray(weights[name], dtype=np.float32))
            self._reset_optimizer()

    def _reset_optimizer(self) -> None:
        """Zero the step count and moments in place: a fresh optimizer without recompiling.

        A new ``compile`` would do too, but would trace (TF) or compile (jax.jit) the train
        step again at the next batch, seconds per call in the parity checks.
        """
        optimizer = self.model.optimizer
        for variable in optimizer.variables:
            variable.assign(self.ops.zeros(variable.shape, variable.dtype))
        optimizer.learning_rate = self.config.learning_rate  # the one optimizer variable that is not state

    def sync(self) -> None:
        values = [v.value for v in self.model.variables] if self.framework is JAX else None
        self.framework.sync(on_gpu=self.device.startswith("cuda"), values=values)

    def peak_device_memory_mb(self) -> float | None:
        return self.framework.peak_device_memory_mb() if self.device.startswith("cuda") else None

    def settings(self) -> dict[str, Any]:
        jit_compile = bool(self.model.jit_compile)  # "auto" resolved by Keras at compile
        settings: dict[str, Any] = {
            "engine": self.engine,
            **self.framework.thread_settings(),
            "precision": self.keras.config.floatx(),
            "mode": self.framework.mode(compiled=jit_compile),
            "jit_compile": jit_compile,
            "jit_compile_requested": self.config.option("keras", "jit_compile", "cnnbench default"),
            "layout": "NHWC",
            "train_loop": "model.train_on_batch per batch, batch gathered with keras.ops.take on resident tensors",
            "eval_loop": self.eval_loop(),
            **(
                {"strided_1x1_conv": "a 1x1 MaxPooling2D of the stride, then a stride-1 1x1 Conv2D"}
                if self.engine in ONEDNN_ENGINES and has_strided_1x1_conv(self.spec)
                else {}
            ),
            "adam_epsilon_form": "Keras: epsilon added to sqrt(v), bias correction in the step size",
            "dropout_rng": f"Keras SeedGenerator, keras.utils.set_random_seed({self.config.seed})",
            **self.notes,
            **self.framework.recorded_environment(),
        }
        return settings

    def eval_loop(self) -> str:
        """How ``evaluate`` runs, for the settings table."""
        if self.uses_model_evaluate:
            return "model.evaluate on resident tensors (Keras' input pipeline)"
        return "model.test_on_batch per slice of the resident tensors, means weighted by batch size"

    def close(self) -> None:
        self.model = self.weighted = None
        self.x_train = self.y_train = self.x_test = self.y_test = None
        self.keras.backend.clear_session()


class KerasBackend(Backend):
    """Keras 3 on TensorFlow, JAX or PyTorch: ``--frameworks keras``, ``keras:jax``, ``keras:torch``."""

    name = "keras"
    framework = "Keras"
    variants = ENGINES
    deterministic = True
    layers = frozenset(LAYER_TYPES)
    options = (
        BackendOption(
            "jit_compile",
            tuple(JIT_COMPILE_CHOICES),
            None,
            "model.compile(jit_compile=...); default per engine: "
            + ", ".join(f"{engine} {str(value).lower()}" for engine, value in DEFAULT_JIT_COMPILE.items()),
        ),
        BackendOption(
            "evaluate",
            EVALUATE_CHOICES,
            EVALUATE_CHOICES[0],
            "test_on_batch: a loop over slices of the resident test set; evaluate: model.evaluate (its input pipeline)",
        ),
    )
    #: jit_compile on / off per engine, each engine's default as DEFAULT_JIT_COMPILE; "nojit" on JAX would run op
    #: by op, which no Keras-on-JAX user runs, so it is not a mode there (the option still reaches it).
    modes = (
        ExecutionMode(
            "jit",
            {"jit_compile": "true"},
            "jit_compile=True: XLA on tensorflow and jax, torch.compile",
            default=tuple(e for e, on in DEFAULT_JIT_COMPILE.items() if on is True),
        ),
        ExecutionMode(
            "nojit",
            {"jit_compile": "false"},
            "jit_compile=False: tf.function graphs, torch eager",
            variants=("tensorflow", "torch"),
            default=tuple(e for e, on in DEFAULT_JIT_COMPILE.items() if on is False),
        ),
    )

    def unavailable_reason(self) -> str | None:
        reason = missing_module_reason("keras", extra="keras")
        if reason is None and all(missing_module_reason(engine, extra=ENGINE_EXTRAS[engine]) for engine in ENGINES):
            return f"no Keras engine is installed (one of: {', '.join(ENGINES)})"
        return reason

    def framework_version(self, variant: str | None = None) -> str:
        engine = engine_for(variant)
        keras_version = distribution_version("keras") or "not installed"
        return f"{keras_version} ({engine} {FRAMEWORKS[engine].version() or 'not installed'})"

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """Keras reads ``KERAS_BACKEND`` at import, and jax its thread pool and platforms at start."""
        engine = engine_for(variant)
        jit_compile_for(config, engine)  # reject a bad option before a worker starts
        env = {"KERAS_BACKEND": engine, **FRAMEWORKS[engine].process_environment(config)}
        if config.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            if engine == "torch":
                env["KERAS_TORCH_DEVICE"] = "cpu"
        return env

    def devices_unsupported_reason(self, variant: str | None, config: TrainConfig) -> str | None:
        """keras.distribution.DataParallel where the engine implements it (JAX); see data_parallel.py."""
        from cnnbench import distributed

        if not distributed.is_data_parallel(config):
            return None
        from cnnbench_keras.data_parallel import unsupported_engine_reason

        return unsupported_engine_reason(engine_for(variant))

    def import_framework(self, variant: str | None = None) -> None:
        engine = engine_for(variant)
        reason = missing_module_reason(engine, extra=ENGINE_EXTRAS[engine])
        if reason:
            raise BackendUnavailable(f"Keras engine {engine}: {reason}")
        import keras  # noqa: F401  (imports the engine named by KERAS_BACKEND)

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        engine = engine_for(variant)
        self.import_framework(engine)
        from cnnbench import distributed

        where = distributed.cluster()
        if distributed.is_data_parallel(config, where):
            from cnnbench_keras.data_parallel import KerasDataParallelSession

            return KerasDataParallelSession(spec, config, engine, where)
        return KerasSession(spec, config, engine)
