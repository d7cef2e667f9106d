"""A float64 NumPy network: the yardstick every backend is compared against (``cnnbench check``).

Built by walking ``ModelSpec.layers`` as a backend does, but written out by hand - im2col
convolutions with TensorFlow's SAME padding (for kernel 4: one row/column before, two after),
max pooling whose gradient goes to the first maximum of each window, flatten in (H, W, C)
order, dense layers, batch normalisation (the spec's convention), residual additions, global
average pooling, mean softmax cross-entropy and the backward pass of each - so that it shares
no kernel and no convention with any framework. Dropout layers are the identity: the reference
is the network with dropout inactive. ReLU's derivative at exactly 0 is 0, as in every framework.
``training=True`` normalises with the batch's statistics (what a training step and
``loss_and_gradients`` see); otherwise with the moving statistics (inference).

``Conventions`` lets the parity check ask "would the backend match if it had flattened in
(C, H, W) order / padded on the other side?", to name a mistake instead of only reporting it.

Also the two optimizers every backend uses, in their textbook form: plain SGD and
bias-corrected Adam (Kingma & Ba, algorithm 1) with ``cnnbench.config``'s beta1/beta2/epsilon.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from cnnbench import elementwise
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON
from cnnbench.spec import (
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

Array = npt.NDArray[Any]
Weights = dict[str, Array]
#: What a layer's forward keeps for its backward (inputs, pre-activations, argmaxes, shapes).
Cache = dict[str, Any]
#: The layers a forward pass went through, each with its cache (a residual block's cache holds its branches' tapes).
Tape = list[tuple[Layer, Cache]]
#: Where an entry sits in a tape: its index, or (index, "body" | "shortcut", index in that branch, ...).
Path = tuple[Any, ...]
#: Adds the change of one near-tie decision to the allowance: (sample, tape path, delta, at pre-activation).
FlipAdder = Callable[[int, Path, Array, bool], None]
#: Layers whose output passes through an activation after a pre-activation ``z`` kept in their cache.
ACTIVATED = (Conv2D, Dense, BatchNorm, Residual)


@dataclass(frozen=True)
class Conventions:
    """Choices a backend can get wrong without changing any shape. The defaults are the spec's."""

    #: Order in which the last pool's output is flattened: "HWC" (canonical) or "CHW" (PyTorch's native).
    flatten: str = "HWC"
    #: Where SAME padding puts the odd extra row/column: "after" (TensorFlow, canonical) or "before".
    same_extra: str = "after"


CANONICAL = Conventions()


def same_padding(size: int, window: int, stride: int, extra: str = "after") -> tuple[int, int]:
    """(before, after) padding of TensorFlow's SAME: output ceil(size / stride), odd extra after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if extra == "after" else (large, small)


def _windows(x: Array, window: int, stride: int, out_h: int, out_w: int) -> Array:
    """A view (N, out_h, out_w, window, window, C) of the windows of NHWC ``x``."""
    view = sliding_window_view(x, (window, window), axis=(1, 2))  # (N, H', W', C, kh, kw)
    view = view[:, : (out_h - 1) * stride + 1 : stride, : (out_w - 1) * stride + 1 : stride]
    return np.asarray(view.transpose(0, 1, 2, 4, 5, 3))


def _scatter_windows(
    target: Array, per_offset: Callable[[int, int], Array], window: int, stride: int, out_h: int, out_w: int
) -> None:
    """Add ``per_offset(i, j)`` (N, out_h, out_w, C) into the (i, j) element of every window of ``target``."""
    for i in range(window):
        for j in range(window):
            target[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride, :] += (
                per_offset(i, j)
            )


def _pads(
    layer: Conv2D | MaxPool2D, height: int, width: int, window: int, conventions: Conventions
) -> tuple[tuple[int, int], tuple[int, int]]:
    if layer.padding == "SAME":
        return same_padding(height, window, layer.stride, conventions.same_extra), same_padding(
            width, window, layer.stride, conventions.same_extra
        )
    if layer.padding == "VALID":
        return (0, 0), (0, 0)
    raise ValueError(f"{layer.name}: unknown padding {layer.padding!r}")


def _activate(name: str | None, z: Array) -> Array:
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    raise ValueError(f"unsupported activation {name!r}")


def _activation_grad(name: str | None, z: Array, upstream: Array) -> Array:
    if name is None:
        return upstream
    return upstream * (z > 0)  # relu'(0) = 0, as in every framework


def _conv_forward(
    layer: Conv2D, kernel: Array, bias: Array | None, x: Array, conventions: Conventions
) -> tuple[Array, Cache]:
    n, height, width, channels = x.shape
    k, s = layer.kernel_size, layer.stride
    (top, bottom), (left, right) = _pads(layer, height, width, k, conventions)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = (padded.shape[1] - k) // s + 1, (padded.shape[2] - k) // s + 1
    cols = _windows(padded, k, s, out_h, out_w).reshape(n * out_h * out_w, k * k * channels)
    z = cols @ kernel.reshape(k * k * channels, layer.filters)
    if bias is not None:
        z = z + bias
    z = z.reshape(n, out_h, out_w, layer.filters)
    return z, {"cols": cols, "padded_shape": padded.shape, "crop": (top, left, height, width)}


def _conv_backward(
    layer: Conv2D, kernel: Array, cache: Cache, dz: Array, need_input_grad: bool
) -> tuple[Array, Array, Array | None]:
    n, out_h, out_w, filters = dz.shape
    flat = dz.reshape(-1, filters)
    d_kernel = (cache["cols"].T @ flat).reshape(kernel.shape)
    d_bias = flat.sum(axis=0)
    if not need_input_grad:
        return d_kernel, d_bias, None
    k, s = layer.kernel_size, layer.stride
    channels = kernel.shape[2]
    d_cols = (flat @ kernel.reshape(-1, filters).T).reshape(n, out_h, out_w, k, k, channels)
    d_padded = np.zeros(cache["padded_shape"])
    _scatter_windows(d_padded, lambda i, j: d_cols[:, :, :, i, j, :], k, s, out_h, out_w)
    top, left, height, width = cache["crop"]
    return d_kernel, d_bias, d_padded[:, top : top + height, left : left + width, :]


def _pool_forward(layer: MaxPool2D, x: Array, conventions: Conventions) -> tuple[Array, Cache]:
    n, height, width, channels = x.shape
    p, s = layer.pool_size, layer.stride
    (top, bottom), (left, right) = _pads(layer, height, width, p, conventions)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    out_h, out_w = (padded.shape[1] - p) // s + 1, (padded.shape[2] - p) // s + 1
    windows = _windows(padded, p, s, out_h, out_w).reshape(n, out_h, out_w, p * p, channels)
    argmax = windows.argmax(axis=3)  # first maximum in row-major window order
    out = np.take_along_axis(windows, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return out, {
        "argmax": argmax,
        "windows": windows,
        "input_shape": x.shape,
        "padded_shape": padded.shape,
        "crop": (top, left, height, width),
    }


def _pool_backward(layer: MaxPool2D, cache: Cache, d_out: Array) -> Array:
    p, s = layer.pool_size, layer.stride
    _, out_h, out_w, _ = d_out.shape
    argmax = cache["argmax"]
    d_padded = np.zeros(cache["padded_shape"])
    _scatter_windows(d_padded, lambda i, j: np.where(argmax == i * p + j, d_out, 0.0), p, s, out_h, out_w)
    top, left, height, width = cache["crop"]
    return d_padded[:, top : top + height, left : left + width, :]


def _flatten(x: Array, conventions: Conventions) -> Array:
    if conventions.flatten == "HWC":
        return x.reshape(x.shape[0], -1)
    if conventions.flatten == "CHW":
        return np.asarray(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))
    raise ValueError(f"unknown flatten order {conventions.flatten!r}")


def _unflatten(d: Array, shape: tuple[int, ...], conventions: Conventions) -> Array:
    if conventions.flatten == "HWC":
        return d.reshape(shape)
    n, h, w, c = shape
    return np.asarray(d.reshape(n, c, h, w).transpose(0, 2, 3, 1))


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Any, Any], ...]:
    """(set, get) thread-count functions of every OpenBLAS loaded in this process (NumPy's among them)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(
                {line.split()[-1] for line in maps if "openblas" in line.lower() and line.split()[-1].startswith("/")}
            )
    except OSError:
        return ()
    controls = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (
            ("scipy_openblas", "64_"),
            ("scipy_openblas", ""),
            ("openblas", "64_"),
            ("openblas", ""),
        ):
            set_threads = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
            get_threads = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
            if set_threads is not None and get_threads is not None:
                controls.append((set_threads, get_threads))
                break
    return tuple(controls)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run NumPy's BLAS on one thread for a while.

    The reference's matrices are small; on a busy 2-core machine OpenBLAS's second thread
    waits for a core and a 6-MFLOP product took 0.5 s instead of 0.5 ms. A no-op where the
    BLAS is not OpenBLAS or /proc is absent.
    """
    controls = _openblas_thread_controls()
    previous = [(set_threads, get_threads()) for set_threads, get_threads in controls]
    for set_threads, _ in controls:
        set_threads(1)
    try:
        yield
    finally:
        for set_threads, threads in previous:
            set_threads(threads)


def _as64(weights: Weights) -> Weights:
    return {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}


def forward(
    spec: ModelSpec,
    weights: Weights,
    x: Array,
    conventions: Conventions = CANONICAL,
    tape: Tape | None = None,
    training: bool = False,
) -> Array:
    """Logits (float64) for NHWC ``x``; dropout inactive. ``tape`` collects what backward needs.

    ``training``: batch normalisation on the batch's statistics (else on the moving statistics).
    """
    with single_threaded_blas():
        return _forward(spec, _as64(weights), np.asarray(x, dtype=np.float64), conventions, tape, training=training)


def moving_statistics(spec: ModelSpec, weights: Weights, x: Array) -> Weights:
    """The batch-norm moving statistics after one training step on ``x`` (the spec's update rule, float64).

    Every state weight of ``spec``; empty for a spec without batch normalisation.
    """
    weights64 = _as64(weights)
    batch: dict[str, tuple[Array, Array]] = {}
    with single_threaded_blas():
        _forward(spec, weights64, np.asarray(x, dtype=np.float64), CANONICAL, None, training=True, batch=batch)
    out: Weights = {}
    for info in spec.walk():
        layer = info.layer
        if isinstance(layer, BatchNorm):
            mean, var = batch[layer.name]
            m = layer.momentum
            out[f"{layer.name}/moving_mean"] = m * weights64[f"{layer.name}/moving_mean"] + (1 - m) * mean
            out[f"{layer.name}/moving_variance"] = m * weights64[f"{layer.name}/moving_variance"] + (1 - m) * var
    return out


def _forward(
    spec: ModelSpec,
    weights: Weights,
    h: Array,
    conventions: Conventions,
    tape: Tape | None,
    training: bool = True,
    batch: dict[str, tuple[Array, Array]] | None = None,
) -> Array:
    return _forward_layers(spec.layers, weights, h, conventions, tape, training, batch)


def _forward_layers(
    layers: tuple[Layer, ...],
    weights: Weights,
    h: Array,
    conventions: Conventions,
    tape: Tape | None,
    training: bool,
    batch: dict[str, tuple[Array, Array]] | None,
) -> Array:
    entry: tuple[Layer, Cache]
    for layer in layers:
        if isinstance(layer, Conv2D):
            bias = weights[f"{layer.name}/bias"] if layer.use_bias else None
            z, cache = _conv_forward(layer, weights[f"{layer.name}/kernel"], bias, h, conventions)
            entry = (layer, {**cache, "z": z})
            h = _activate(layer.activation, z)
        elif isinstance(layer, MaxPool2D):
            h, cache = _pool_forward(layer, h, conventions)
            entry = (layer, cache)
        elif isinstance(layer, Flatten):
            entry = (layer, {"shape": h.shape})
            h = _flatten(h, conventions)
        elif isinstance(layer, Dense):
            z = h @ weights[f"{layer.name}/kernel"] + weights[f"{layer.name}/bias"]
            entry = (layer, {"x": h, "z": z})
            h = _activate(layer.activation, z)
        elif isinstance(layer, BatchNorm):
            z, cache = _batch_norm_forward(layer, weights, h, training)
            if batch is not None and training:
                batch[layer.name] = (cache["mean"], cache["var"])
            entry = (layer, {**cache, "z": z})
            h = _activate(layer.activation, z)
        elif isinstance(layer, GlobalAvgPool):
            entry = (layer, {"shape": h.shape})
            h = h.mean(axis=(1, 2))
        elif isinstance(layer, Residual):
            body: Tape = []
            shortcut: Tape = []
            z = _forward_layers(layer.body, weights, h, conventions, body, training, batch) + _forward_layers(
                layer.shortcut, weights, h, conventions, shortcut, training, batch
            )
            entry = (layer, {"body": body, "shortcut": shortcut, "z": z, "input_shape": h.shape})
            h = _activate(layer.activation, z)
        elif isinstance(layer, Dropout):
            continue
        else:
            raise TypeError(f"unknown layer {layer!r}")
        if tape is not None:
            tape.append(entry)
    return h


def _reduced_axes(x: Array) -> tuple[int, ...]:
    """Every axis but the channels (the last): what batch normalisation averages over."""
    return tuple(range(x.ndim - 1))


def _batch_norm_forward(layer: BatchNorm, weights: Weights, x: Array, training: bool) -> tuple[Array, Cache]:
    gamma, beta = weights[f"{layer.name}/gamma"], weights[f"{layer.name}/beta"]
    if training:
        mean = x.mean(axis=_reduced_axes(x))
        var = ((x - mean) ** 2).mean(axis=_reduced_axes(x))  # biased: divided by the count (the spec's convention)
    else:
        mean, var = weights[f"{layer.name}/moving_mean"], weights[f"{layer.name}/moving_variance"]
    inv_std = 1.0 / np.sqrt(var + layer.epsilon)
    xhat = (x - mean) * inv_std
    return gamma * xhat + beta, {"xhat": xhat, "inv_std": inv_std, "mean": mean, "var": var, "training": training}


def _batch_norm_backward(layer: BatchNorm, weights: Weights, cache: Cache, dz: Array) -> tuple[Array, Array, Array]:
    """(d gamma, d beta, d input); in training the batch statistics' own gradients included."""
    gamma, xhat, inv_std = weights[f"{layer.name}/gamma"], cache["xhat"], cache["inv_std"]
    axes = _reduced_axes(dz)
    d_gamma, d_beta = (dz * xhat).sum(axis=axes), dz.sum(axis=axes)
    d_xhat = dz * gamma
    if not cache["training"]:
        return d_gamma, d_beta, d_xhat * inv_std
    count = dz.size // dz.shape[-1]
    d_x = inv_std / count * (count * d_xhat - d_xhat.sum(axis=axes) - xhat * (d_xhat * xhat).sum(axis=axes))
    return d_gamma, d_beta, d_x


def softmax_cross_entropy(logits: Array, labels: Array) -> tuple[float, Array]:
    """Mean cross-entropy of integer ``labels`` and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    rows = np.arange(n)
    labels = np.asarray(labels, dtype=np.int64)
    loss = -log_probs[rows, labels].mean()
    d_logits = np.exp(log_probs)
    d_logits[rows, labels] -= 1.0
    return float(loss), d_logits / n


def loss_and_gradients(
    spec: ModelSpec, weights: Weights, x: Array, y: Array, conventions: Conventions = CANONICAL
) -> tuple[float, Weights, Array]:
    """(mean cross-entropy, gradients of the trainable weights, logits), all float64; dropout inactive and
    batch normalisation on the batch's statistics, as in a training step."""
    with single_threaded_blas():
        return _loss_and_gradients(spec, _as64(weights), np.asarray(x, dtype=np.float64), y, conventions)


def _loss_and_gradients(
    spec: ModelSpec, weights: Weights, x: Array, y: Array, conventions: Conventions
) -> tuple[float, Weights, Array]:
    tape: Tape = []
    logits = _forward(spec, weights, x, conventions, tape)
    loss, upstream = softmax_cross_entropy(logits, y)
    grads = _backward(tape, weights, upstream, len(tape) - 1, conventions)
    return loss, {name: grads[name] for name in spec.trainable_shapes()}, logits


def _has_weights(layer: Layer) -> bool:
    if isinstance(layer, Residual):
        return any(_has_weights(inner) for inner in (*layer.body, *layer.shortcut))
    return isinstance(layer, (Conv2D, Dense, BatchNorm))


def _backward(
    tape: Tape,
    weights: Weights,
    upstream: Array,
    start: int,
    conventions: Conventions,
    at_z: bool = False,
    record: dict[Path, Array] | None = None,
    need_input_grad: bool = False,
    prefix: Path = (),
) -> Weights:
    """Backpropagate ``upstream`` from ``tape[start]`` down to the first weighted layer.

    ``upstream`` is the gradient with respect to that entry's output, or to its pre-activation
    with ``at_z``. Returns the parameter gradients of the layers passed; ``record`` receives
    the gradient arriving at each entry's output, by path (residual branches included).
    """
    grads, _ = _backward_tape(tape, weights, upstream, start, conventions, at_z, record, need_input_grad, prefix)
    return grads


def _backward_tape(
    tape: Tape,
    weights: Weights,
    upstream: Array,
    start: int,
    conventions: Conventions,
    at_z: bool,
    record: dict[Path, Array] | None,
    need_input_grad: bool,
    prefix: Path,
) -> tuple[Weights, Array | None]:
    """``_backward``, also returning the gradient with respect to the tape's input (when ``need_input_grad``)."""
    grads: Weights = {}
    weighted = [i for i, (layer, _) in enumerate(tape) if _has_weights(layer)]
    stop = 0 if need_input_grad or not weighted else weighted[0]
    flowing: Array | None = upstream
    for index in range(start, stop - 1, -1):
        layer, cache = tape[index]
        assert flowing is not None  # only the first weighted layer (the loop's last) stops the gradient
        upstream = flowing
        if record is not None:
            path: Path = (*prefix, index)
            record[path] = upstream
        need_input = index > stop or need_input_grad
        z_given = at_z and index == start
        if isinstance(layer, (Dense, Conv2D)):
            dz = upstream if z_given else _activation_grad(layer.activation, cache["z"], upstream)
            kernel = weights[f"{layer.name}/kernel"]
            if isinstance(layer, Dense):
                grads[f"{layer.name}/kernel"] = cache["x"].T @ dz
                grads[f"{layer.name}/bias"] = dz.sum(axis=0)
                flowing = dz @ kernel.T if need_input else None
            else:
                d_kernel, d_bias, flowing = _conv_backward(layer, kernel, cache, dz, need_input)
                grads[f"{layer.name}/kernel"] = d_kernel
                if layer.use_bias:
                    grads[f"{layer.name}/bias"] = d_bias
        elif isinstance(layer, BatchNorm):
            dz = upstream if z_given else _activation_grad(layer.activation, cache["z"], upstream)
            d_gamma, d_beta, flowing = _batch_norm_backward(layer, weights, cache, dz)
            grads[f"{layer.name}/gamma"], grads[f"{layer.name}/beta"] = d_gamma, d_beta
        elif isinstance(layer, Residual):
            dz = upstream if z_given else _activation_grad(layer.activation, cache["z"], upstream)
            flowing = _residual_backward(layer, cache, weights, dz, conventions, record, (*prefix, index), grads)
        elif isinstance(layer, MaxPool2D):
            flowing = _pool_backward(layer, cache, upstream)
        elif isinstance(layer, Flatten):
            flowing = _unflatten(upstream, cache["shape"], conventions)
        elif isinstance(layer, GlobalAvgPool):
            _, height, width, _ = cache["shape"]
            flowing = np.broadcast_to(upstream[:, None, None, :] / (height * width), cache["shape"]).copy()
    return grads, (flowing if need_input_grad else None)


def _residual_backward(
    layer: Residual,
    cache: Cache,
    weights: Weights,
    dz: Array,
    conventions: Conventions,
    record: dict[Path, Array] | None,
    path: Path,
    grads: Weights,
) -> Array:
    """The gradient at a block's input: through its body plus through its shortcut (the identity when empty)."""
    total = np.zeros(cache["input_shape"])
    for branch in ("body", "shortcut"):
        branch_tape: Tape = cache[branch]
        if not branch_tape:
            total += dz
            continue
        branch_grads, d_input = _backward_tape(
            branch_tape, weights, dz, len(branch_tape) - 1, conventions, False, record, True, (*path, branch)
        )
        grads.update(branch_grads)
        assert d_input is not None
        total += d_input
    return total


def _entry(tape: Tape, path: Path) -> tuple[Layer, Cache]:
    """The tape entry at ``path`` (see ``Path``)."""
    layer, cache = tape[path[0]]
    if len(path) == 1:
        return layer, cache
    return _entry(cache[path[1]], path[2:])


def _entries(tape: Tape, prefix: Path = ()) -> Iterator[tuple[Path, Layer, Cache]]:
    """Every entry of ``tape`` with its path, residual branches' entries after their block's."""
    for index, (layer, cache) in enumerate(tape):
        yield (*prefix, index), layer, cache
        if isinstance(layer, Residual):
            for branch in ("body", "shortcut"):
                yield from _entries(cache[branch], (*prefix, index, branch))


def _backward_path(
    tape: Tape,
    weights: Weights,
    delta: Array,
    path: Path,
    conventions: Conventions,
    at_z: bool,
    need_input_grad: bool = False,
) -> tuple[Weights, Array | None]:
    """Parameter gradients (and the input gradient) of ``delta`` injected at the entry ``path``.

    A nested path backpropagates to its block's input first, then on down the enclosing tape.
    """
    if len(path) == 1:
        return _backward_tape(tape, weights, delta, path[0], conventions, at_z, None, need_input_grad, ())
    index, branch, rest = path[0], path[1], path[2:]
    _, cache = tape[index]
    grads, d_block = _backward_path(cache[branch], weights, delta, rest, conventions, at_z, True)
    assert d_block is not None
    if index == 0:
        return grads, (d_block if need_input_grad else None)
    below, d_input = _backward_tape(tape, weights, d_block, index - 1, conventions, False, None, need_input_grad, ())
    for name, value in below.items():
        grads[name] = grads[name] + value if name in grads else value
    return grads, d_input


def _passes_gradient(layer: Layer, cache: Cache, position: tuple[int, ...]) -> bool:
    """Whether the activation of ``layer`` lets a gradient through at ``position``."""
    if isinstance(layer, ACTIVATED) and layer.activation == "relu":
        return bool(cache["z"][position] > 0)
    return True


def gradients_and_kinks(
    spec: ModelSpec, weights: Weights, x: Array, y: Array, rel: float, conventions: Conventions = CANONICAL
) -> tuple[float, Weights, Array, Weights, int]:
    """``loss_and_gradients`` plus, per weight, how far the gradients can move at near-ties.

    The gradients of ReLU and max pooling jump where a pre-activation crosses 0 or where the
    two largest values of a pooling window swap. Where the float64 forward lies within
    ``rel`` x (largest magnitude in that layer) of such a point, a float32 forward can land on
    either side and both gradients are right. For each such decision the change it makes to
    every gradient is backpropagated through its own sample (first order, one decision at a
    time) and summed in absolute value.

    Returns (loss, gradients, logits, allowance per weight, number of near-tie decisions).
    """
    with single_threaded_blas():
        weights = _as64(weights)
        x = np.asarray(x, dtype=np.float64)
        tape: Tape = []
        logits = _forward(spec, weights, x, conventions, tape)
        loss, upstream = softmax_cross_entropy(logits, y)
        record: dict[Path, Array] = {}
        grads = _backward(tape, weights, upstream, len(tape) - 1, conventions, record=record)
        allowance, count = _kink_allowance(spec, weights, x, conventions, tape, record, rel)
        return loss, {name: grads[name] for name in spec.trainable_shapes()}, logits, allowance, count


def _kink_allowance(
    spec: ModelSpec,
    weights: Weights,
    x: Array,
    conventions: Conventions,
    tape: Tape,
    record: dict[Path, Array],
    rel: float,
) -> tuple[Weights, int]:
    """See ``gradients_and_kinks``; ``tape`` and ``record`` come from the full-batch pass.

    With batch normalisation a sample's decision moves the batch statistics, hence every sample's
    gradient: its change is then backpropagated through the whole batch's tape.
    """
    allowance = {name: np.zeros(shape) for name, shape in spec.trainable_shapes().items()}
    sample_tapes: dict[int, Tape] = {}
    coupled = spec.has_batch_norm
    count = 0

    def add_flip(sample: int, path: Path, delta: Array, at_z: bool) -> None:
        if coupled:
            full = np.zeros((len(x), *delta.shape[1:]))
            full[sample] = delta[0]
            changes, _ = _backward_path(tape, weights, full, path, conventions, at_z)
        else:
            if sample not in sample_tapes:
                sample_tapes[sample] = []
                _forward(spec, weights, x[sample : sample + 1], conventions, sample_tapes[sample])
            changes, _ = _backward_path(sample_tapes[sample], weights, delta, path, conventions, at_z)
        for name, change in changes.items():
            if name in allowance:
                allowance[name] += np.abs(change)

    for path, layer, cache in _entries(tape):
        if isinstance(layer, ACTIVATED) and layer.activation == "relu" and path in record:
            z, grad_out = cache["z"], record[path]
            for position in map(tuple, np.argwhere((np.abs(z) <= rel * np.abs(z).max()) & (grad_out != 0))):
                delta = np.zeros((1, *z.shape[1:]))
                at = (0, *position[1:])
                delta[at] = grad_out[position] * (-1.0 if z[position] > 0 else 1.0)
                add_flip(int(position[0]), path, delta, True)
                count += 1
        elif isinstance(layer, MaxPool2D) and path in record and path[-1] > 0:
            producer_path = (*path[:-1], path[-1] - 1)
            producer = _entry(tape, producer_path)
            count += _pool_flips(layer, cache, record[path], producer, rel, add_flip, producer_path)
    return allowance, count


def _pool_flips(
    layer: MaxPool2D,
    cache: Cache,
    grad_out: Array,
    producer_entry: tuple[Layer, Cache],
    rel: float,
    add_flip: FlipAdder,
    producer_index: Path,
) -> int:
    """Reroute each window's gradient to every other element that float32 could make its maximum.

    Candidates are the elements within ``rel`` x the layer's largest value of the window's
    maximum whose own ReLU may pass a gradient (pre-activation above -``rel`` x its largest),
    which covers the all-zero windows of dead ReLUs where one element sits on the kink.
    """
    producer, producer_cache = producer_entry
    windows, argmax = cache["windows"], cache["argmax"]
    p, s = layer.pool_size, layer.stride
    top_pad, left_pad = cache["crop"][:2]
    input_shape = cache["input_shape"]
    out_h, out_w = grad_out.shape[1:3]
    finite = windows[np.isfinite(windows)]
    scale = np.abs(finite).max() if finite.size else 0.0
    candidate = windows >= windows.max(axis=3, keepdims=True) - rel * scale
    has_z = isinstance(producer, ACTIVATED) and "z" in producer_cache
    if isinstance(producer, ACTIVATED) and has_z and producer.activation == "relu":
        z = producer_cache["z"]
        bottom = cache["padded_shape"][1] - top_pad - input_shape[1]
        right = cache["padded_shape"][2] - left_pad - input_shape[2]
        z_padded = np.pad(z, ((0, 0), (top_pad, bottom), (left_pad, right), (0, 0)), constant_values=-np.inf)
        can_pass = _windows(z_padded, p, s, out_h, out_w).reshape(windows.shape) > -rel * np.abs(z).max()
    else:
        can_pass = np.isfinite(windows)
    offsets = np.arange(p * p).reshape(1, 1, 1, p * p, 1)
    alternatives = candidate & can_pass & (offsets != argmax[:, :, :, None, :]) & (grad_out[:, :, :, None, :] != 0)
    count = 0
    for n, i, j, k, c in map(tuple, np.argwhere(alternatives)):
        chosen = int(argmax[n, i, j, c])
        pos_a = (i * s + chosen // p - top_pad, j * s + chosen % p - left_pad)
        pos_b = (i * s + k // p - top_pad, j * s + k % p - left_pad)
        dout = grad_out[n, i, j, c]
        delta = np.zeros((1, *input_shape[1:]))
        # With the producer's pre-activation as the target, b's ReLU counts as passing (it is near its kink).
        at_a, at_b = (0, pos_a[0], pos_a[1], c), (0, pos_b[0], pos_b[1], c)
        passes_a = _passes_gradient(producer, producer_cache, (n, pos_a[0], pos_a[1], c)) if has_z else True
        delta[at_a] -= dout * passes_a
        delta[at_b] += dout
        add_flip(int(n), producer_index, delta, has_z)
        count += 1
    return count


class SGD:
    """Plain SGD without momentum: w <- w - lr * g."""

    name = "sgd"

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate

    def step(self, weights: Weights, grads: Weights) -> Weights:
        """One step; a weight without a gradient (batch-norm state) is returned unchanged."""
        return {
            name: np.asarray(w, np.float64) - self.learning_rate * grads[name] if name in grads else w
            for name, w in weights.items()
        }


#: Where Adam adds epsilon: to sqrt(v_hat) (Kingma & Ba, PyTorch, optax), or to sqrt(v) before the
#: bias correction folded into the step size (Keras, TensorFlow's ApplyAdam: "epsilon hat").
EPSILON_FORMS = {
    "textbook": "epsilon added to sqrt(v_hat) (PyTorch, optax)",
    "hat": "epsilon added to sqrt(v) before bias correction (Keras, TensorFlow's ApplyAdam)",
}


class Adam:
    """Bias-corrected Adam: w <- w - lr * m_hat / (sqrt(v_hat) + epsilon_t), moments starting at 0.

    ``epsilon_t`` is epsilon in the "textbook" form and epsilon / sqrt(1 - beta2^t) in the "hat" form.
    """

    name = "adam"

    def __init__(
        self,
        learning_rate: float,
        beta1: float = ADAM_BETA1,
        beta2: float = ADAM_BETA2,
        epsilon: float = ADAM_EPSILON,
        epsilon_form: str = "textbook",
    ):
        if epsilon_form not in EPSILON_FORMS:
            raise ValueError(f"unknown epsilon form {epsilon_form!r}")
        self.learning_rate, self.beta1, self.beta2, self.epsilon = learning_rate, beta1, beta2, epsilon
        self.epsilon_form = epsilon_form
        self.t = 0
        self.m: Weights = {}
        self.v: Weights = {}

    def effective_epsilon(self, t: int | None = None) -> float:
        """The epsilon added to sqrt(v_hat) at step ``t`` (default: the latest step)."""
        t = self.t if t is None else t
        return self.epsilon if self.epsilon_form == "textbook" else self.epsilon / math.sqrt(1 - self.beta2**t)

    def corrected_moments(self) -> tuple[Weights, Weights]:
        """(m_hat, v_hat) after the latest step."""
        m_hat = {name: m / (1 - self.beta1**self.t) for name, m in self.m.items()}
        v_hat = {name: v / (1 - self.beta2**self.t) for name, v in self.v.items()}
        return m_hat, v_hat

    def step(self, weights: Weights, grads: Weights) -> Weights:
        # In place, over few temporaries, split over the cores (the parity check steps 3.2 M weights); the same
        # operations in the same order as m_hat = m / (1 - beta1^t), w - lr * m_hat / (sqrt(v_hat) + epsilon).
        self.t += 1
        m_scale, v_scale = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        epsilon = self.effective_epsilon()
        updated: Weights = {}
        for name, w in weights.items():
            if name not in grads:
                updated[name] = w  # no gradient (batch-norm state): unchanged
                continue
            g = elementwise.flat(grads[name], np.float64)
            m, v, out = (np.empty(g.size) for _ in range(3))
            part = functools.partial(
                _adam_part,
                self,
                (m_scale, v_scale, epsilon),
                g,
                elementwise.flat(w),
                None if name not in self.m else elementwise.flat(self.m[name]),
                None if name not in self.v else elementwise.flat(self.v[name]),
                (m, v, out),
            )
            elementwise.run(part, g.size)
            shape = np.shape(grads[name])
            self.m[name], self.v[name] = m.reshape(shape), v.reshape(shape)
            updated[name] = out.reshape(shape)
        return updated


def _adam_part(
    adam: Adam,
    scales: tuple[float, float, float],
    g: Array,
    w: Array,
    m_old: Array | None,
    v_old: Array | None,
    outputs: tuple[Array, Array, Array],
    piece: slice,
) -> None:
    """One slice of ``Adam.step`` for one tensor (flat arrays): new m, v and weights into ``outputs``."""
    m_scale, v_scale, epsilon = scales
    m, v, out = (array[piece] for array in outputs)
    gs = g[piece]
    np.multiply(gs, 1 - adam.beta1, out=m)
    m += adam.beta1 * (0.0 if m_old is None else m_old[piece])
    np.multiply(gs, 1 - adam.beta2, out=v)
    v *= gs
    v += adam.beta2 * (0.0 if v_old is None else v_old[piece])
    denominator = np.divide(v, v_scale)
    np.sqrt(denominator, out=denominator)
    denominator += epsilon
    update = np.divide(m, m_scale, out=out)
    update *= adam.learning_rate
    update /= denominator
    np.subtract(np.asarray(w[piece], np.float64), update, out=update)


def adam_update_bound(t: int, beta1: float = ADAM_BETA1, beta2: float = ADAM_BETA2) -> float:
    """The largest |m_hat / sqrt(v_hat)| any gradient history can give at step ``t`` (Cauchy-Schwarz).

    1 at the first step (the update is lr * sign(g)); an Adam step never moves a weight by
    more than ``learning_rate`` times this.
    """
    total = sum(((1 - beta1) * beta1 ** (t - j)) ** 2 / ((1 - beta2) * beta2 ** (t - j)) for j in range(1, t + 1))
    return math.sqrt(1 - beta2**t) / (1 - beta1**t) * math.sqrt(total)


def make_optimizer(name: str, learning_rate: float, epsilon_form: str = "textbook") -> SGD | Adam:
    """The reference optimizer ``name`` with cnnbench's hyper-parameters."""
    if name == "adam":
        return Adam(learning_rate, epsilon_form=epsilon_form)
    if name == "sgd":
        return SGD(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")
