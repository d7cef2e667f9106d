"""Pure JAX implementation of the spec: lax convolutions and pooling, optax, one jitted train step.

Parameters are a dict pytree keyed by the canonical names (``conv1/kernel`` HWIO, ...) and the
forward pass works in NHWC, so canonical weights are the native layout: get/set_weights only copy.
Batch-norm moving statistics (``NAME/moving_mean``, ``NAME/moving_variance``) are a second dict, the
session's ``state``: a spec with batch norm has a train step that takes params, optimizer state and
that state and returns all three updated; a spec without batch norm keeps the LeNet's step unchanged.
jax and optax are imported inside functions only, so listing backends never pays for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnbench.backend import Backend, BackendOption, Session, missing_module_reason
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, TrainConfig
from cnnbench.environment import cpu_vector_extension
from cnnbench.errors import BackendError, UsageError
from cnnbench.frameworks import JAX
from cnnbench.initializers import BATCH_NORM_STARTS
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
)

#: ``--backend-option jax.<key>=<value>`` switches.
OPTION_SCAN = "scan"  # true: one jitted lax.scan per chunk; false (default): a Python loop over a jitted step
OPTION_PRECISION = "matmul_precision"  # lax.Precision of convolutions and matmuls
OPTION_POOL = "pool"  # how max pooling is written (its gradient dominates the step on XLA CPU otherwise)
#: "reshape": non-overlapping windows as a reshape and a max (elementwise gradient); "reduce_window": lax.reduce_window,
#: whose gradient is XLA's select-and-scatter (docs/performance.md#jax).
POOL_CHOICES = ("reshape", "reduce_window")
#: True fp32 on GPUs (no TF32), as the PyTorch backend sets; see docs/decisions.md#jax-matmul-precision.
DEFAULT_PRECISION = "highest"
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
OPTION_CONV = "conv"  # how a convolution is written: lax.conv_general_dilated, or patches and one dot (im2col)
#: "auto": im2col where it was measured faster, lax's own convolutions elsewhere (docs/performance.md#jax).
CONV_CHOICES = ("auto", "im2col", "lax")
#: CPUs (by widest vector extension) where XLA's convolution gradients lose to im2col's dot: measured on AVX2;
#: on the AVX-512 host lax's ran at 33-94 GFLOP/s and im2col was not measured, so it keeps lax.
IM2COL_CPUS = ("avx2",)


def conv_how(choice: str | None, platform: str, vector_extension: str | None) -> str:
    """The convolution form a session uses: ``choice`` unless "auto" (im2col on an ``IM2COL_CPUS`` CPU, else lax)."""
    choice = choice or CONV_CHOICES[0]
    if choice == "auto":
        return "im2col" if platform == "cpu" and vector_extension in IM2COL_CPUS else "lax"
    return choice


def _im2col_conv(jnp, x, kernel, stride: int, padding: str, precision):
    """An NHWC convolution as its patches times the kernel: one dot, whose kernel gradient is one dot too.

    The patches are ``kh * kw`` strided slices of the padded input side by side (SAME: TensorFlow's pads)."""
    kh, kw, ci, co = kernel.shape
    n, h, w, _ = x.shape
    if padding == "SAME":
        ho, wo = -(-h // stride), -(-w // stride)
        ph, pw = max((ho - 1) * stride + kh - h, 0), max((wo - 1) * stride + kw - w, 0)
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    last_row, last_col = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    patches = [x[:, i : i + last_row : stride, j : j + last_col : stride, :] for i in range(kh) for j in range(kw)]
    cols = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
    y = jnp.dot(cols.reshape(n * ho * wo, kh * kw * ci), kernel.reshape(kh * kw * ci, co), precision=precision)
    return y.reshape(n, ho, wo, co)


def _resolve_device(jax, requested: str):
    """The first GPU for "auto"/"cuda" when jax sees one, else the CPU."""
    return jax.devices(JAX.platform(requested))[0]


def _activation(jax, name: str | None):
    if name is None:
        return None
    if name == "relu":
        return jax.nn.relu
    raise BackendError(f"activation {name!r} is not supported by the JAX backend")


def _max_pool(lax, jnp, x, layer: MaxPool2D, how: str):
    """NHWC max pooling; a reshape and a max where the windows tile the input (VALID, stride = size)."""
    size, stride = layer.pool_size, layer.stride
    if how == "reshape" and size == stride and layer.padding == "VALID":
        n, h, w, c = x.shape
        rows, cols = h // size, w // size
        tiles = x[:, : rows * size, : cols * size, :].reshape(n, rows, size, cols, size, c)
        return jnp.max(tiles, axis=(2, 4))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), layer.padding)


def build_forward(spec: ModelSpec, precision, pool_how: str = POOL_CHOICES[0], conv: str = "lax"):
    """``forward(params, x, dropout_key=None, batch_stats=None) -> logits`` walking ``spec.layers``.

    Dropout only with a key. Batch norm normalises with ``params``' moving statistics (inference) when
    ``batch_stats`` is None, else with the batch's mean and biased variance (training), which it records in
    ``batch_stats[layer name] = (mean, var)`` for the caller's moving-average update.
    SAME padding is ``lax``'s, TensorFlow's convention at every stride (the odd extra row/column after).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    index = itertools.count()  # each layer's position in spec.walk() order: dropout keys (the LeNet's unchanged)

    def build(layers: tuple[Layer, ...]) -> list[Callable[..., Any]]:
        steps: list[Callable[..., Any]] = []
        for layer in layers:
            position = next(index)
            if isinstance(layer, Conv2D):
                act = _activation(jax, layer.activation)
                bias = f"{layer.name}/bias" if layer.use_bias else None

                def conv_layer(params, x, key, stats, layer=layer, act=act, bias=bias):
                    kernel = params[f"{layer.name}/kernel"]
                    if conv == "im2col":
                        y = _im2col_conv(jnp, x, kernel, layer.stride, layer.padding, precision)
                    else:
                        y = lax.conv_general_dilated(
                            x,
                            kernel,
                            (layer.stride, layer.stride),
                            layer.padding,
                            dimension_numbers=DIMENSION_NUMBERS,
                            precision=precision,
                        )
                    if bias is not None:
                        y = y + params[bias]
                    return act(y) if act else y

                steps.append(conv_layer)
            elif isinstance(layer, MaxPool2D):

                def pool(params, x, key, stats, layer=layer):
                    return _max_pool(lax, jnp, x, layer, pool_how)

                steps.append(pool)
            elif isinstance(layer, Flatten):
                steps.append(lambda params, x, key, stats: x.reshape(x.shape[0], -1))  # NHWC: (H, W, C) order
            elif isinstance(layer, Dense):
                act = _activation(jax, layer.activation)

                def dense(params, x, key, stats, layer=layer, act=act):
                    y = (
                        jnp.matmul(x, params[f"{layer.name}/kernel"], precision=precision)
                        + params[f"{layer.name}/bias"]
                    )
                    return act(y) if act else y

                steps.append(dense)
            elif isinstance(layer, Dropout):
                keep = 1.0 - layer.rate

                def dropout(params, x, key, stats, position=position, keep=keep):
                    if key is None or keep >= 1.0:
                        return x
                    mask = jax.random.bernoulli(jax.random.fold_in(key, position), keep, x.shape)
                    return jnp.where(mask, x / keep, 0.0)

                steps.append(dropout)
            elif isinstance(layer, BatchNorm):
                act = _activation(jax, layer.activation)

                def batch_norm(params, x, key, stats, layer=layer, act=act):
                    name = layer.name
                    if stats is None:  # inference: the moving statistics
                        mean, var = params[f"{name}/moving_mean"], params[f"{name}/moving_variance"]
                    else:  # training: the batch's mean and biased variance over N, H, W (two passes: accurate)
                        axes = tuple(range(x.ndim - 1))
                        mean = jnp.mean(x, axis=axes)
                        var = jnp.mean(jnp.square(x - mean), axis=axes)
                        stats[name] = (mean, var)
                    scale = params[f"{name}/gamma"] * lax.rsqrt(var + layer.epsilon)
                    y = (x - mean) * scale + params[f"{name}/beta"]
                    return act(y) if act else y

                steps.append(batch_norm)
            elif isinstance(layer, GlobalAvgPool):
                steps.append(lambda params, x, key, stats: jnp.mean(x, axis=(1, 2)))
            elif isinstance(layer, Residual):
                act = _activation(jax, layer.activation)
                body, shortcut = build(layer.body), build(layer.shortcut)  # body first: spec.walk() order

                def residual(params, x, key, stats, body=body, shortcut=shortcut, act=act):
                    y = run(body, params, x, key, stats) + run(shortcut, params, x, key, stats)
                    return act(y) if act else y

                steps.append(residual)
            else:  # pragma: no cover - guarded by the spec's Layer union
                raise BackendError(f"layer {layer!r} is not supported by the JAX backend")
        return steps

    def run(steps, params, x, key, stats):
        for step in steps:
            x = step(params, x, key, stats)
        return x

    top = build(spec.layers)

    def forward(params, x, dropout_key=None, batch_stats=None):
        return run(top, params, x, dropout_key, batch_stats)

    return forward


def batch_norm_momenta(spec: ModelSpec) -> dict[str, float]:
    """Each batch-norm layer's momentum, by layer name (empty without batch norm)."""
    return {info.layer.name: info.layer.momentum for info in spec.walk() if isinstance(info.layer, BatchNorm)}


def _batch_norm_start(name: str) -> float | None:
    return next((value for suffix, value in BATCH_NORM_STARTS.items() if name.endswith(suffix)), None)


def framework_initial_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Flax's defaults (lecun-normal kernels, zero biases, batch norm the identity), for ``init == "framework"``."""
    import jax

    kernel_init = jax.nn.initializers.lecun_normal()
    key = jax.random.key(seed)
    params = {}
    for i, (name, shape) in enumerate(spec.param_shapes().items()):
        start = _batch_norm_start(name)
        if start is not None:
            params[name] = np.full(shape, start, np.float32)
        elif name.endswith("/bias"):
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = np.asarray(kernel_init(jax.random.fold_in(key, i), shape, jax.numpy.float32))
    return params


def placeholder_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Random weights drawn by NumPy (no compile), for a session whose real weights the harness sets next."""
    rng = np.random.default_rng(seed)
    shapes = spec.param_shapes()
    params = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32) for name, shape in shapes.items()}
    for name in spec.state_shapes():  # a positive variance, should anything run on these
        params[name] = np.full(params[name].shape, _batch_norm_start(name), np.float32)
    return params


class JaxSession(Session):
    """Model, optimizer and data on one jax device (training loop: see ``train_batches``)."""

    #: Trainable parameters, optimizer state and batch-norm moving statistics (pytrees of device arrays; ``state``
    #: is empty without batch norm), set by ``set_weights``.
    params: Any
    opt_state: Any
    state: Any
    #: The resident dataset, None until ``load_data``.
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        import jax
        import optax
        from jax import lax

        self.jax, self.spec, self.config = jax, spec, config
        self.dev = _resolve_device(jax, config.device)
        dev = self.dev
        self.device = "cpu" if dev.platform == "cpu" else f"{dev.platform}:{dev.id} ({dev.device_kind})"
        self.precision_name = (config.option("jax", OPTION_PRECISION) or DEFAULT_PRECISION).lower()
        try:
            precision = lax.Precision(self.precision_name)
        except ValueError:
            choices = "default, high, highest"
            raise UsageError(f"jax.{OPTION_PRECISION} must be one of {choices}; got {self.precision_name!r}") from None
        self.use_scan = config.flag("jax", OPTION_SCAN, default=False)
        self.param_shapes = spec.param_shapes()
        self.state_names = tuple(spec.state_shapes())
        self.momenta = batch_norm_momenta(spec)
        self.has_batch_norm = bool(self.momenta)
        self.pool = config.option("jax", OPTION_POOL) or POOL_CHOICES[0]
        self.donate = self.dev.platform != "cpu"
        self.conv = conv_how(config.option("jax", OPTION_CONV), self.dev.platform, cpu_vector_extension())
        # Inference keeps lax's convolutions (im2col's patches of a 1,000-image batch are memory-bound); the
        # gradient path (train steps, loss_and_gradients) writes them as self.conv says.
        self.forward = build_forward(spec, precision, self.pool)
        self.train_forward = build_forward(spec, precision, self.pool, self.conv)
        if config.optimizer == "adam":
            self.optimizer = optax.adam(config.learning_rate, b1=ADAM_BETA1, b2=ADAM_BETA2, eps=ADAM_EPSILON)
        else:
            self.optimizer = optax.sgd(config.learning_rate)
        self._compile()
        self.x_train = self.y_train = self.x_test = self.y_test = None
        self.state = {}
        # The harness loads its own weights next unless the scheme is "framework": then jax.random's compiles
        # (~4 s of the build phase on 2 cores) would be thrown away, so a NumPy draw stands in.
        self.set_weights(
            framework_initial_params(spec, config.seed)
            if config.init == "framework"
            else placeholder_params(spec, config.seed)
        )

    # -- compiled functions -------------------------------------------------------------------

    def _compile(self) -> None:
        import optax

        jax, jnp, lax = self.jax, self.jax.numpy, self.jax.lax
        forward, train_forward, optimizer, seed = self.forward, self.train_forward, self.optimizer, self.config.seed

        def mean_loss(params, x, y, key=None):
            logits = train_forward(params, x, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(params, opt_state, x_train, y_train, row, step_number):
            """One optimizer step on the batch ``row``; the dropout key depends only on (seed, step)."""
            key = jax.random.fold_in(jax.random.key(seed), step_number)
            loss, grads = jax.value_and_grad(mean_loss)(params, x_train[row], y_train[row], key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def scan_chunk(params, opt_state, x_train, y_train, rows, first_step):
            def body(carry, row_and_step):
                (params, opt_state), (row, step_number) = carry, row_and_step
                params, opt_state, loss = step(params, opt_state, x_train, y_train, row, step_number)
                return (params, opt_state), loss

            step_numbers = first_step + jnp.arange(rows.shape[0], dtype=jnp.int32)
            (params, opt_state), losses = lax.scan(body, (params, opt_state), (rows, step_numbers))
            return params, opt_state, losses

        def eval_batch(params, x_test, y_test, start, size):
            x = lax.dynamic_slice_in_dim(x_test, start, size)
            y = lax.dynamic_slice_in_dim(y_test, start, size)
            logits = forward(params, x)
            total = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
            return total, (jnp.argmax(logits, axis=1) == y).sum()

        # Donating params and optimizer state saves device memory; on XLA CPU it makes the step copy the donated
        # weights first (the dense kernel: 12.8 MB a step), ~7% of the step: docs/performance.md#jax.
        donate = (0, 1) if self.donate else ()
        self._step = jax.jit(step, donate_argnums=donate)
        self._scan_chunk = jax.jit(scan_chunk, donate_argnums=donate)  # retraced per chunk length
        self._eval_batch = jax.jit(eval_batch, static_argnums=4)
        self._predict = jax.jit(forward)
        self._loss_and_grads = jax.jit(jax.value_and_grad(mean_loss))
        if self.has_batch_norm:
            self._compile_batch_norm()

    def _compile_batch_norm(self) -> None:
        """The train step, scan and gradients of a spec with batch norm: the moving statistics in and out.

        Training normalises with the batch's statistics (``build_forward``'s ``batch_stats``) and the step
        returns moving = momentum * moving + (1 - momentum) * batch statistic; ``evaluate``/``predict`` keep
        the inference forward above, given params and moving statistics as one dict.
        """
        import optax

        jax, jnp, lax = self.jax, self.jax.numpy, self.jax.lax
        forward, optimizer, seed, momenta = self.train_forward, self.optimizer, self.config.seed, self.momenta

        def training_loss(params, x, y, key=None):
            batch_stats: dict[str, Any] = {}
            logits = forward(params, x, key, batch_stats)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), batch_stats

        def updated_state(state, batch_stats):
            new = {}
            for name, (mean, var) in batch_stats.items():
                m = momenta[name]
                new[f"{name}/moving_mean"] = m * state[f"{name}/moving_mean"] + (1.0 - m) * mean
                new[f"{name}/moving_variance"] = m * state[f"{name}/moving_variance"] + (1.0 - m) * var
            return new

        def step(params, opt_state, state, x_train, y_train, row, step_number):
            key = jax.random.fold_in(jax.random.key(seed), step_number)
            (loss, batch_stats), grads = jax.value_and_grad(training_loss, has_aux=True)(
                params, x_train[row], y_train[row], key
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, updated_state(state, batch_stats), loss

        def scan_chunk(params, opt_state, state, x_train, y_train, rows, first_step):
            def body(carry, row_and_step):
                (params, opt_state, state), (row, step_number) = carry, row_and_step
                params, opt_state, state, loss = step(params, opt_state, state, x_train, y_train, row, step_number)
                return (params, opt_state, state), loss

            step_numbers = first_step + jnp.arange(rows.shape[0], dtype=jnp.int32)
            (params, opt_state, state), losses = lax.scan(body, (params, opt_state, state), (rows, step_numbers))
            return params, opt_state, state, losses

        def loss_and_grads(params, x, y):  # batch statistics, nothing updated, no dropout
            (loss, _), grads = jax.value_and_grad(training_loss, has_aux=True)(params, x, y)
            return loss, grads

        donate = (0, 1, 2) if self.donate else ()
        self._step = jax.jit(step, donate_argnums=donate)
        self._scan_chunk = jax.jit(scan_chunk, donate_argnums=donate)
        self._loss_and_grads = jax.jit(loss_and_grads)
        self.training_loss, self.updated_state = training_loss, updated_state  # for ShardedJaxSession

    def _inference_weights(self):
        """What the inference forward reads: the parameters, and the moving statistics with batch norm."""
        return {**self.params, **self.state} if self.state else self.params

    # -- data and training --------------------------------------------------------------------

    def _put(self, array: np.ndarray):
        return self.jax.device_put(array, self.dev)

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.x_train = self._put(np.ascontiguousarray(x_train, dtype=np.float32))
        self.y_train = self._put(np.asarray(y_train, dtype=np.int32))
        self.x_test = self._put(np.ascontiguousarray(x_test, dtype=np.float32))
        self.y_test = self._put(np.asarray(y_test, dtype=np.int32))

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """One step per row in order, a Python loop over one jitted step (why: docs/decisions.md#jax-train-loop).

        The indices were checked by Session.train_batches (jax would clamp an out-of-range one silently).
        """
        rows = batch_indices.astype(np.int32)
        if self.has_batch_norm:
            return self._train_batches_batch_norm(rows)
        first_step = self._step_number
        self._step_number += len(rows)
        if self.use_scan:
            self.params, self.opt_state, losses = self._scan_chunk(
                self.params, self.opt_state, self.x_train, self.y_train, self._put(rows), np.int32(first_step)
            )
            return np.asarray(losses, dtype=np.float64)
        losses = []
        for offset, row in enumerate(rows):
            self.params, self.opt_state, loss = self._step(
                self.params, self.opt_state, self.x_train, self.y_train, row, np.int32(first_step + offset)
            )
            losses.append(loss)
        return np.asarray(self.jax.device_get(losses), dtype=np.float64)

    def _train_batches_batch_norm(self, rows: np.ndarray) -> np.ndarray:
        """``_train_batches`` with the moving statistics carried through each step."""
        first_step = self._step_number
        self._step_number += len(rows)
        if self.use_scan:
            self.params, self.opt_state, self.state, losses = self._scan_chunk(
                self.params,
                self.opt_state,
                self.state,
                self.x_train,
                self.y_train,
                self._put(rows),
                np.int32(first_step),
            )
            return np.asarray(losses, dtype=np.float64)
        losses = []
        for offset, row in enumerate(rows):
            self.params, self.opt_state, self.state, loss = self._step(
                self.params,
                self.opt_state,
                self.state,
                self.x_train,
                self.y_train,
                row,
                np.int32(first_step + offset),
            )
            losses.append(loss)
        return np.asarray(self.jax.device_get(losses), dtype=np.float64)

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        if self.x_test is None:
            raise BackendError("evaluate called before load_data")
        n = self.x_test.shape[0]
        totals, corrects = [], []
        weights = self._inference_weights()
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            total, correct = self._eval_batch(weights, self.x_test, self.y_test, np.int32(start), size)
            totals.append(total)
            corrects.append(correct)
        totals, corrects = self.jax.device_get((totals, corrects))
        return float(np.sum(np.asarray(totals, dtype=np.float64))) / n, float(np.sum(corrects)) / n

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = self._predict(self._inference_weights(), self._put(np.ascontiguousarray(x, dtype=np.float32)))
        return np.asarray(logits, dtype=np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray):
        loss, grads = self._loss_and_grads(
            self.params, self._put(np.ascontiguousarray(x, dtype=np.float32)), self._put(np.asarray(y, dtype=np.int32))
        )
        return float(loss), {name: np.array(value, dtype=np.float32) for name, value in grads.items()}

    # -- weights ------------------------------------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of every canonical weight, moving statistics included, in ``spec.param_shapes()`` order."""
        if not self.state:
            return {name: np.array(value, dtype=np.float32) for name, value in self.params.items()}  # copies
        held = {**self.params, **self.state}
        return {name: np.array(held[name], dtype=np.float32) for name in self.param_shapes}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load canonical weights (moving statistics included); the optimizer state and the dropout step counter
        restart."""
        missing = sorted(set(self.param_shapes) - set(weights))
        if missing:
            raise BackendError(f"missing weights: {', '.join(missing)}")
        host = {}
        for name, shape in self.param_shapes.items():
            value = np.asarray(weights[name], dtype=np.float32)
            if value.shape != tuple(shape):
                raise BackendError(f"{name}: expected shape {tuple(shape)}, got {value.shape}")
            host[name] = np.array(value)  # own copy: donation may reuse the device buffer
        state = {name: host.pop(name) for name in self.state_names}
        self.params = {name: self._put(value) for name, value in host.items()}
        self.state = {name: self._put(value) for name, value in state.items()}
        # Placed like the parameters (committed), as the step's outputs are, or the second step compiles
        # again: docs/decisions.md#jax-optimizer-state-placement.
        # Adam's and SGD's fresh state is zeros (moments, step count): made on the host from the state's abstract
        # shapes, which skips the per-shape compiles of op-by-op zeros_like that optax's init dispatches.
        fresh_state = self.jax.eval_shape(self.optimizer.init, host)
        self.opt_state = self.jax.tree_util.tree_map(
            lambda leaf: self._put(np.zeros(leaf.shape, leaf.dtype)), fresh_state
        )
        self._step_number = 0

    # -- harness hooks ------------------------------------------------------------------------

    def sync(self) -> None:
        JAX.sync(on_gpu=self.dev.platform != "cpu", values=(self.params, self.opt_state, self.state))

    def peak_device_memory_mb(self) -> float | None:
        return None if self.dev.platform == "cpu" else JAX.peak_device_memory_mb(self.dev)

    def settings(self) -> dict[str, Any]:
        return {
            **JAX.thread_settings(),
            "precision": "float32",
            "matmul_precision": self.precision_name,
            "jax.default_matmul_precision": self.jax.config.jax_default_matmul_precision,
            "mode": "jit + scan" if self.use_scan else "jit",
            "donated_buffers": (
                ("params, optimizer state" + (", moving statistics" if self.has_batch_norm else ""))
                if self.donate
                else "none (XLA CPU would copy them)"
            ),
            "layout": "NHWC, HWIO kernels",
            "max_pool": "reshape + max" if self.pool == "reshape" else "lax.reduce_window",
            "conv": (
                "training: im2col (patches + one dot); inference: lax.conv_general_dilated"
                if self.conv == "im2col"
                else "lax.conv_general_dilated"
            ),
            "dropout_rng": f"{self.jax.config.jax_default_prng_impl} key from (seed, step)",
            **(
                {"batch_norm": "jnp mean and biased variance (two passes), moving statistics carried by the step"}
                if self.has_batch_norm
                else {}
            ),
            "platform": self.dev.platform,
            **JAX.recorded_environment(),
        }

    def close(self) -> None:
        held = (self.params, self.opt_state, self.state, self.x_train, self.y_train, self.x_test, self.y_test)
        for array in self.jax.tree_util.tree_leaves(held):
            if not array.is_deleted():
                array.delete()
        self.params = self.opt_state = self.x_train = self.y_train = self.x_test = self.y_test = None
        self.state = {}


class JaxBackend(Backend):
    name = "jax"
    framework = "JAX"
    deterministic = True
    layers = frozenset(LAYER_TYPES)
    options = (
        BackendOption(OPTION_SCAN, bool, False, "true: one jitted lax.scan per chunk of batches, not a Python loop"),
        BackendOption(
            OPTION_PRECISION,
            ("default", "high", "highest"),
            DEFAULT_PRECISION,
            "lax.Precision of convolutions and matmuls (highest: true fp32 on GPUs, no TF32)",
        ),
        BackendOption(
            OPTION_POOL,
            POOL_CHOICES,
            POOL_CHOICES[0],
            "max pooling as reshape + max (fast gradient on CPU) or lax.reduce_window (select-and-scatter)",
        ),
        BackendOption(
            OPTION_CONV,
            CONV_CHOICES,
            CONV_CHOICES[0],
            "convolutions as patches + one dot (im2col) or lax.conv_general_dilated; auto: im2col on AVX2 CPUs only",
        ),
    )
    modes = (
        ExecutionMode("jit", {OPTION_SCAN: "false"}, "a Python loop over one jax.jit step", default=True),
        ExecutionMode("scan", {OPTION_SCAN: "true"}, "one jax.jit of lax.scan over each chunk of batches"),
    )

    def unavailable_reason(self) -> str | None:
        return missing_module_reason("jax", "jaxlib", "optax", extra="jax")

    def framework_version(self, variant: str | None = None) -> str:
        return JAX.version() or "not installed"

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """Read by jax when its client starts, so they must be set before the worker imports it."""
        return JAX.process_environment(config)

    def import_framework(self, variant: str | None = None) -> None:
        import jax  # noqa: F401
        import optax  # noqa: F401

    def devices_unsupported_reason(self, variant: str | None, config: TrainConfig) -> str | None:
        return None  # jax.sharding on any number of local devices; jax.distributed across hosts

    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        from cnnbench import distributed

        where = distributed.cluster()
        if distributed.is_data_parallel(config, where):
            from cnnbench_jax.sharded import ShardedJaxSession, initialize_cluster

            initialize_cluster(where)  # before any device is touched
            return ShardedJaxSession(spec, config, where)
        return JaxSession(spec, config)
