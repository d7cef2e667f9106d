"""TensorFlow raw-ops implementation of the spec, in the reference chapter's style.

tf.Variable weights, tf.nn.conv2d / max_pool2d / matmul / dropout, GradientTape, and TF's own
fused training kernels (``ResourceApplyAdam``, ``ResourceApplyGradientDescent``, the ops TF1's
optimizers ran) inside one ``tf.function`` per step; no Keras. The canonical layout (NHWC
activations, HWIO conv kernels, (in, out) dense kernels) is TensorFlow's own, so weights cross
the interface without transposes.

Batch normalisation is TF's fused kernel (``FusedBatchNormV3``, oneDNN's on x86, XLA's under
``tf.xla``): in training it normalises with the biased batch variance, as the spec does, but
returns the Bessel-corrected (unbiased) one; the moving-variance update undoes that correction
on the C-length output (x (n-1)/n), so the moving statistics follow the spec's biased rule.

tensorflow is imported inside methods only, so listing backends never pays for (or fails on) it.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np

from cnnbench.backend import Backend, BackendOption, Session, missing_module_reason
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.errors import BackendError, BackendUnavailable
from cnnbench.frameworks import ONEDNN_ENV, TENSORFLOW
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

#: What settings() says when a spec has a strided 1x1 convolution (docs/decisions.md#strided-1x1-convolutions).
STRIDED_1X1_NOTE = "every stride-th row and column (a slice), then a stride-1 1x1 conv"


def configure_runtime(tf, config: TrainConfig) -> dict[str, Any]:
    """Threads and GPU memory growth, which TF accepts only before its runtime starts.

    Returns notes for settings() about what could not be applied (e.g. a session created
    after another one in the same process): the actual values are reported, not the requested ones.
    """
    notes = TENSORFLOW.apply_threads(config.threads) if config.threads else {}
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # "Physical devices cannot be modified after being initialized"
            notes["gpu_memory_growth_not_applied"] = str(exc).splitlines()[0]
    return notes


def resolve_device(requested: str) -> tuple[str, str]:
    """(TF device name, human description) for ``config.device``."""
    gpu = TENSORFLOW.gpu_name() if requested in ("auto", "cuda") else None
    if gpu is not None:
        return "/GPU:0", f"cuda:0 ({gpu})"
    if requested == "cuda":
        raise BackendUnavailable(TENSORFLOW.no_gpu_reason())
    return "/CPU:0", "cpu"


def _activate(x, activation: str | None, tf):
    if activation is None:
        return x
    if activation == "relu":
        return tf.nn.relu(x)
    raise BackendError(f"activation {activation!r} is not supported by the tf backend")


class TFRawSession(Session):
    """Variables, slots and compiled steps for one spec on one device."""

    #: The resident dataset (tf tensors), None until ``load_data``.
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any

    def __init__(self, spec: ModelSpec, config: TrainConfig, runtime_notes: dict[str, Any]):
        import tensorflow as tf

        self.tf, self.spec, self.config = tf, spec, config
        self.runtime_notes = runtime_notes
        self.xla = config.flag("tf", "xla")
        self.device_name, self.device = resolve_device(config.device)
        if self.device_name.startswith("/GPU"):
            # Full fp32, as the PyTorch backend sets it (recorded in settings).
            tf.config.experimental.enable_tensor_float_32_execution(False)
        tf.random.set_seed(config.seed)
        with tf.device(self.device_name):
            self.variables, self.state = self._build_variables()
            self.slots = self._build_slots()
            self.adam_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam_step")
            #: Counts training steps for the stateless dropout seeds; never reset, like a framework RNG.
            self.dropout_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="dropout_step")
        self._compile_functions()
        self.x_train = self.y_train = self.x_test = self.y_test = None

    # ---- model -------------------------------------------------------------------------------

    def _build_variables(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(trainable, state): one tf.Variable per canonical weight, in spec order; ``framework`` init by TF itself.

        The framework scheme is what TF1's ``tf.layers`` gave: glorot-uniform kernels, zero biases,
        here from TF's stateless RNG seeded with ``config.seed`` and the layer's position in ``spec.walk()``
        (for a spec without residual blocks, its top-level index). Batch norm starts as the identity
        (gamma 1, beta 0, moving mean 0, moving variance 1); its moving statistics are non-trainable.
        """
        tf = self.tf
        variables: dict[str, Any] = {}
        state: dict[str, Any] = {}
        for index, info in enumerate(self.spec.walk()):
            layer, shape = info.layer, info.input_shape
            if isinstance(layer, BatchNorm):
                channels = shape[-1]
                for suffix, start in (("gamma", 1.0), ("beta", 0.0)):
                    name = f"{layer.name}/{suffix}"
                    variables[name] = tf.Variable(tf.fill([channels], start), name=name)
                for suffix, start in (("moving_mean", 0.0), ("moving_variance", 1.0)):
                    name = f"{layer.name}/{suffix}"
                    state[name] = tf.Variable(tf.fill([channels], start), trainable=False, name=name)
                continue
            if isinstance(layer, Conv2D):
                kernel_shape: tuple[int, ...] = (layer.kernel_size, layer.kernel_size, shape[-1], layer.filters)
                use_bias = layer.use_bias
            elif isinstance(layer, Dense):
                kernel_shape, use_bias = (shape[0], layer.units), True
            else:
                continue
            receptive = math.prod(kernel_shape[:-2])
            fan_in, fan_out = kernel_shape[-2] * receptive, kernel_shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            seed = [self.config.seed, index]
            kernel = tf.random.stateless_uniform(kernel_shape, seed=seed, minval=-limit, maxval=limit)
            variables[f"{layer.name}/kernel"] = tf.Variable(kernel, name=f"{layer.name}/kernel")
            if use_bias:
                variables[f"{layer.name}/bias"] = tf.Variable(tf.zeros(kernel_shape[-1]), name=f"{layer.name}/bias")
        for built, expected in ((variables, self.spec.trainable_shapes()), (state, self.spec.state_shapes())):
            shapes = {name: tuple(var.shape) for name, var in built.items()}
            if shapes != expected:  # pragma: no cover - a bug in the walk above, not a user error
                raise BackendError(f"tf backend built {shapes}, spec expects {expected}")
        return variables, state

    @cached_property
    def _walk_index(self) -> dict[str, int]:
        """Each layer's position in ``spec.walk()``: its dropout seed's fold-in (for the LeNet, its top-level index)."""
        return {info.layer.name: index for index, info in enumerate(self.spec.walk())}

    def _build_slots(self) -> dict[str, tuple[Any, Any]]:
        """Adam's first and second moments per weight (absent for SGD)."""
        tf = self.tf
        if self.config.optimizer != "adam":
            return {}
        return {
            name: (
                tf.Variable(tf.zeros_like(var), trainable=False, name=f"{name}/adam_m"),
                tf.Variable(tf.zeros_like(var), trainable=False, name=f"{name}/adam_v"),
            )
            for name, var in self.variables.items()
        }

    def _forward(self, x, training: bool, dropout_seed=None, batch_stats: bool | None = None, updates=None):
        """Logits for NHWC ``x``.

        ``training``: dropout (stateless, seeded per step and layer). ``batch_stats`` (default: ``training``):
        batch norm on the batch's statistics, else on the moving ones. ``updates``: a list that receives
        (moving variable, new value) pairs for the caller to assign after the step (training only).
        """
        if batch_stats is None:
            batch_stats = training
        return self._forward_layers(
            self.spec.layers, self.spec.input_shape, x, training, dropout_seed, batch_stats, updates
        )

    def _forward_layers(self, layers: tuple[Layer, ...], input_shape, x, training, dropout_seed, batch_stats, updates):
        tf, v = self.tf, self.variables
        for info in layer_infos(layers, input_shape):
            layer = info.layer
            if isinstance(layer, Conv2D):
                stride = layer.stride
                if layer.kernel_size == 1 and stride > 1:
                    # oneDNN's strided 1x1 filter gradient is wrong on AVX2: the stride first, as a slice (a 1x1
                    # window has no padding), then a stride-1 conv (docs/decisions.md#strided-1x1-convolutions).
                    x, stride = x[:, ::stride, ::stride, :], 1
                x = tf.nn.conv2d(x, v[f"{layer.name}/kernel"], strides=stride, padding=layer.padding)
                if layer.use_bias:
                    x = tf.nn.bias_add(x, v[f"{layer.name}/bias"])
                x = _activate(x, layer.activation, tf)
            elif isinstance(layer, MaxPool2D):
                x = tf.nn.max_pool2d(x, ksize=layer.pool_size, strides=layer.stride, padding=layer.padding)
            elif isinstance(layer, Flatten):
                x = tf.reshape(x, [-1, info.output_shape[0]])  # NHWC order: the canonical flatten
            elif isinstance(layer, Dense):
                x = _activate(tf.matmul(x, v[f"{layer.name}/kernel"]) + v[f"{layer.name}/bias"], layer.activation, tf)
            elif isinstance(layer, Dropout):
                if training:
                    seed = tf.random.experimental.stateless_fold_in(dropout_seed, self._walk_index[layer.name])
                    x = tf.nn.experimental.stateless_dropout(x, rate=layer.rate, seed=seed)
            elif isinstance(layer, BatchNorm):
                x = _activate(self._batch_norm(layer, x, batch_stats, updates), layer.activation, tf)
            elif isinstance(layer, GlobalAvgPool):
                x = tf.reduce_mean(x, axis=[1, 2])
            elif isinstance(layer, Residual):
                args = (info.input_shape, x, training, dropout_seed, batch_stats, updates)
                body = self._forward_layers(layer.body, *args)
                shortcut = self._forward_layers(layer.shortcut, *args)
                x = _activate(body + shortcut, layer.activation, tf)
            else:  # pragma: no cover - guarded by the Layer union
                raise BackendError(f"layer {layer!r} is not supported by the tf backend")
        return x

    def _batch_norm(self, layer: BatchNorm, x, batch_stats: bool, updates):
        """``FusedBatchNormV3`` over every axis but the channels, with the spec's epsilon (no clamping wrapper).

        Training returns the batch mean and the Bessel-corrected variance (n / (n - 1) x the biased one the
        kernel normalised with): x (n - 1) / n gives back the spec's biased variance for the moving update.
        """
        tf, name = self.tf, layer.name
        gamma, beta = self.variables[f"{name}/gamma"], self.variables[f"{name}/beta"]
        moving_mean, moving_variance = self.state[f"{name}/moving_mean"], self.state[f"{name}/moving_variance"]
        flat = x.shape.rank != 4
        if flat:  # (N, C) or another rank: the fused kernel wants NHWC
            original = tf.shape(x)
            x = tf.reshape(x, [-1, 1, 1, x.shape[-1]])
        if batch_stats:
            empty = tf.constant([], tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=empty,
                variance=empty,
                epsilon=layer.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=True,
            )
            if updates is not None:
                count = tf.cast(tf.shape(x)[0] * x.shape[1] * x.shape[2], tf.float32)
                biased = variance * ((count - 1.0) / count)  # undo the kernel's Bessel correction
                m = layer.momentum
                updates.append((moving_mean, m * moving_mean + (1.0 - m) * mean))
                updates.append((moving_variance, m * moving_variance + (1.0 - m) * biased))
        else:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=layer.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=False,
            )[0]
        return tf.reshape(y, original) if flat else y

    def _loss(self, logits, labels):
        return self.tf.reduce_mean(self.tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    # ---- optimizer ---------------------------------------------------------------------------

    def _apply_gradients(self, grads) -> None:
        """One optimizer step with TF's fused training kernels.

        ``ResourceApplyAdam`` computes ``lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`` (TF1's
        "epsilon hat"). Passing ``eps*sqrt(1-b2^t)`` as its epsilon turns that into
        ``lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps)``: exactly the Adam of PyTorch and optax,
        with the harness's ADAM_EPSILON, so optimizers match across backends.
        """
        tf = self.tf
        lr = tf.constant(self.config.learning_rate, tf.float32)
        if self.config.optimizer == "sgd":
            for var, grad in zip(self.variables.values(), grads, strict=True):
                tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=grad, use_locking=False)
            return
        step = tf.cast(self.adam_step.assign_add(1), tf.float64)
        beta1_power = tf.pow(tf.constant(ADAM_BETA1, tf.float64), step)
        beta2_power = tf.pow(tf.constant(ADAM_BETA2, tf.float64), step)
        epsilon = tf.cast(ADAM_EPSILON * tf.sqrt(1.0 - beta2_power), tf.float32)
        beta1_power, beta2_power = tf.cast(beta1_power, tf.float32), tf.cast(beta2_power, tf.float32)
        beta1, beta2 = tf.constant(ADAM_BETA1, tf.float32), tf.constant(ADAM_BETA2, tf.float32)
        for (name, var), grad in zip(self.variables.items(), grads, strict=True):
            m, v = self.slots[name]
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta1_power,
                beta2_power=beta2_power,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                epsilon=epsilon,
                grad=grad,
                use_locking=False,
            )

    def _reset_optimizer(self) -> None:
        for m, v in self.slots.values():
            m.assign(self.tf.zeros_like(m))
            v.assign(self.tf.zeros_like(v))
        self.adam_step.assign(0)

    # ---- compiled functions --------------------------------------------------------------------

    def _compile_functions(self) -> None:
        """tf.functions with fixed input signatures: traced once, never retraced by new data or sizes."""
        tf = self.tf
        h, w, c = self.spec.input_shape
        images = tf.TensorSpec([None, h, w, c], tf.float32)
        labels = tf.TensorSpec([None], tf.int64)
        variables = list(self.variables.values())
        seed, has_dropout = self.config.seed, self.spec.has_dropout

        def train_step(x_all, y_all, rows):
            x, y = tf.gather(x_all, rows), tf.gather(y_all, rows)
            dropout_seed = None
            if has_dropout:
                dropout_seed = tf.stack([tf.constant(seed, tf.int64), self.dropout_step.assign_add(1)])
            updates: list[tuple[Any, Any]] = []  # batch-norm moving statistics, once per step
            with tf.GradientTape() as tape:
                loss = self._loss(self._forward(x, training=True, dropout_seed=dropout_seed, updates=updates), y)
            self._apply_gradients(tape.gradient(loss, variables))
            for moving, value in updates:
                moving.assign(value)
            return loss

        def eval_step(x, y):
            logits = self._forward(x, training=False)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.int64))
            return tf.reduce_sum(tf.cast(losses, tf.float64)), correct

        def predict(x):
            return self._forward(x, training=False)

        def loss_and_gradients(x, y):  # batch norm on the batch's statistics, nothing assigned
            with tf.GradientTape() as tape:
                loss = self._loss(self._forward(x, training=False, batch_stats=True), y)
            return loss, tape.gradient(loss, variables)

        compile_options = {"jit_compile": True} if self.xla else {}
        rows = tf.TensorSpec([None], tf.int64)
        self._train_step = tf.function(train_step, input_signature=[images, labels, rows], **compile_options)
        self._eval_step = tf.function(eval_step, input_signature=[images, labels], **compile_options)
        self._predict = tf.function(predict, input_signature=[images], **compile_options)
        self._loss_and_gradients = tf.function(loss_and_gradients, input_signature=[images, labels], **compile_options)

    # ---- Session interface ---------------------------------------------------------------------

    def _images(self, x: np.ndarray):
        with self.tf.device(self.device_name):
            return self.tf.convert_to_tensor(np.ascontiguousarray(x, dtype=np.float32))

    def _labels(self, y: np.ndarray):
        with self.tf.device(self.device_name):
            return self.tf.convert_to_tensor(np.asarray(y, dtype=np.int64))

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.x_train, self.y_train = self._images(x_train), self._labels(y_train)
        self.x_test, self.y_test = self._images(x_test), self._labels(y_test)

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        tf = self.tf
        rows = self._labels(batch_indices)
        with tf.device(self.device_name):
            losses = [self._train_step(self.x_train, self.y_train, row) for row in tf.unstack(rows)]
            return tf.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        if self.x_test is None:
            raise BackendError("evaluate called before load_data")
        tf = self.tf
        n = int(self.x_test.shape[0])
        with tf.device(self.device_name):
            total_loss = tf.zeros((), tf.float64)
            correct = tf.zeros((), tf.int64)
            for start in range(0, n, batch_size):
                stop = start + batch_size
                batch_loss, batch_correct = self._eval_step(self.x_test[start:stop], self.y_test[start:stop])
                total_loss += batch_loss
                correct += batch_correct
            return float(total_loss) / n, float(correct) / n

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.tf.device(self.device_name):
            return self._predict(self._images(x)).numpy().astype(np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray):
        with self.tf.device(self.device_name):
            loss, grads = self._loss_and_gradients(self._images(x), self._labels(y))
        return float(loss), {name: grad.numpy() for name, grad in zip(self.variables, grads, strict=True)}

    def _canonical_variables(self) -> dict[str, Any]:
        """Trainable and state variables in the spec's canonical order."""
        every = {**self.variables, **self.state}
        return {name: every[name] for name in self.spec.param_shapes()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: var.numpy().copy() for name, var in self._canonical_variables().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, var in self._canonical_variables().items():
            if name not in weights:
                raise BackendError(f"set_weights: missing {name}")
            value = np.asarray(weights[name], dtype=np.float32)
            if value.shape != tuple(var.shape):
                raise BackendError(f"set_weights: {name} has shape {value.shape}, expected {tuple(var.shape)}")
            var.assign(value)
        self._reset_optimizer()

    def sync(self) -> None:
        TENSORFLOW.sync(on_gpu=self.device_name.startswith("/GPU"))

    def settings(self) -> dict[str, Any]:
        tf = self.tf
        settings: dict[str, Any] = {
            **TENSORFLOW.thread_settings(),
            "precision": "float32",
            "mode": TENSORFLOW.mode(compiled=self.xla),
            "xla": self.xla,
            "layout": "NHWC",
            "optimizer_kernel": (
                "ResourceApplyAdam (PyTorch-form epsilon)"
                if self.config.optimizer == "adam"
                else "ResourceApplyGradientDescent"
            ),
            "dropout": "stateless (seed, step, layer)",
            **(
                {"batch_norm": "FusedBatchNormV3; moving variance from its Bessel-corrected output x (n-1)/n"}
                if self.spec.has_batch_norm
                else {}
            ),
            "onednn": _onednn_enabled(),
            "train_loop": "one tf.function call per batch, batch gathered on the device",
        }
        if has_strided_1x1_conv(self.spec):
            settings["strided_1x1_conv"] = STRIDED_1X1_NOTE
        if self.device_name.startswith("/GPU"):
            settings["tf32"] = tf.config.experimental.tensor_float_32_execution_enabled()
            gpus = tf.config.list_physical_devices("GPU")
            settings["gpu_memory_growth"] = all(tf.config.experimental.get_memory_growth(g) for g in gpus)
        settings.update(self.runtime_notes)
        return settings

    def close(self) -> None:
        self.x_train = self.y_train = self.x_test = self.y_test = None
        self.variables, self.state, self.slots = {}, {}, {}
        self._train_step = self._eval_step = self._predict = self._loss_and_gradients = None


def _onednn_enabled() -> bool | None:
    """Whether TF runs its oneDNN (MKL) kernels: on by default on x86 Linux, off with TF_ENABLE_ONEDNN_OPTS=0."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, hence the guard

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError, RuntimeError):  # a private API: absent or changed in another TF
        return None


class TFRawBackend(Backend):
    name = "tf"
    framework = "TensorFlow"
    deterministic = True
    options = (
        BackendOption("xla", bool, False, "compile the training step with XLA (tf.function(jit_compile=True))"),
        BackendOption(
            "onednn",
            bool,
            None,
            "TF_ENABLE_ONEDNN_OPTS for the worker; unset: on for x86 CPUs unless the environment sets it",
        ),
    )
    modes = (
        ExecutionMode("graph", {"xla": "false"}, "tf.function graphs (TF's own kernels, oneDNN)", default=True),
        ExecutionMode("xla", {"xla": "true"}, "tf.function(jit_compile=True): XLA-compiled steps"),
    )
    #: Every spec layer: batch norm (FusedBatchNormV3), residual blocks, strided SAME convolutions, global pooling.
    layers = frozenset(LAYER_TYPES)

    def unavailable_reason(self) -> str | None:
        return missing_module_reason("tensorflow", extra="tf-cpu")

    def framework_version(self, variant: str | None = None) -> str:
        return TENSORFLOW.version() or "not installed"

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """TF's oneDNN kernels on for x86 (``TENSORFLOW.process_environment``); ``--backend-option tf.onednn``
        decides instead when given. TF reads it at import."""
        env = {**TENSORFLOW.process_environment(config), **self.data_parallel_environment(config)}
        if config.option("tf", "onednn") is None:
            return env
        return {**env, ONEDNN_ENV: "1" if config.flag("tf", "onednn") else "0"}

    def import_framework(self, variant: str | None = None) -> None:
        import tensorflow  # noqa: F401

    def devices_unsupported_reason(self, variant: str | None, config: TrainConfig) -> str | None:
        """MirroredStrategy on one host, MultiWorkerMirroredStrategy (TF_CONFIG) on several; not with XLA."""
        from cnnbench import distributed

        where = distributed.cluster()
        if not distributed.is_data_parallel(config, where):
            return None
        if config.flag("tf", "xla"):
            return "tf.xla=true: the data-parallel step (strategy.run) is not XLA-compiled here; drop the option"
        if where.multi_host and config.devices > 1 and config.device == "cpu":
            return "MultiWorkerMirroredStrategy drives one CPU device per worker: use --devices 1 on each CPU host"
        return None

    def data_parallel_environment(self, config: TrainConfig) -> dict[str, str]:
        """TF_CONFIG for MultiWorkerMirroredStrategy when ``CNNBENCH_HOSTS`` lists several hosts."""
        from cnnbench import distributed

        where = distributed.cluster()
        return {"TF_CONFIG": distributed.tf_config(where)} if where.multi_host else {}

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        import tensorflow as tf

        from cnnbench import distributed

        notes = configure_runtime(tf, config)  # before any op runs: TF fixes these at start-up
        where = distributed.cluster()
        if distributed.is_data_parallel(config, where):
            from cnnbench_tf.mirrored import TFMirroredSession

            return TFMirroredSession(spec, config, notes, where)
        return TFRawSession(spec, config, notes)
