"""Naming the bug behind a failed check: the classic porting mistakes, tried one by one against the reference.

A number that is off says little to a plugin author; "flatten in (C, H, W) order" says what to fix.
Each function returns a hint (a phrase, or "" when no known mistake explains what was seen).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from cnnbench import elementwise
from cnnbench import reference as ref
from cnnbench.conformance.outcome import Array, Weights
from cnnbench.conformance.tolerances import LOGITS_REL
from cnnbench.spec import Conv2D, Dense, Flatten, MaxPool2D, ModelSpec


def scaled_error(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """max |actual - expected| / max |expected|: relative error that ignores near-zero elements."""
    got, want = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    got_flat, want_flat = elementwise.flat(got), elementwise.flat(want)

    def part(piece: slice) -> float:
        return float(np.max(np.abs(np.subtract(np.asarray(got_flat[piece], np.float64), want_flat[piece]))))

    return float(np.max(elementwise.run(part, got_flat.size)) / max(elementwise.max_abs(want), 1e-30))


def shape_hint(spec: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> str:
    """Name the SAME/VALID padding switch that would explain the backend's weight shapes, if one does."""
    groups: list[list[Conv2D | MaxPool2D]] = []
    for kind in (Conv2D, MaxPool2D):
        layers = [layer for layer in spec.layers if isinstance(layer, kind)]
        groups += [layers] + [[layer] for layer in layers] if len(layers) > 1 else [layers]
    for group in groups:
        names = {layer.name for layer in group}
        switched_layers = tuple(
            replace(layer, padding="VALID" if layer.padding == "SAME" else "SAME")
            if isinstance(layer, (Conv2D, MaxPool2D)) and layer.name in names
            else layer
            for layer in spec.layers
        )
        if replace(spec, layers=switched_layers).param_shapes() == shapes:
            switched = ", ".join(
                f"{layer.name} {'VALID' if layer.padding == 'SAME' else 'SAME'} instead of {layer.padding}"
                for layer in group
            )
            return f" (they match the spec with padding {switched})"
    return ""


def _kernel_variants(spec: ModelSpec, weights: Weights) -> list[tuple[str, Weights]]:
    """Weights with one kernel in a wrong but shape-preserving layout: what a bad conversion produces."""
    variants: list[tuple[str, Weights]] = []
    convs = [layer for layer in spec.layers if isinstance(layer, Conv2D)]
    if len(convs) > 1:
        kernels = [f"{layer.name}/kernel" for layer in convs]
        variants.append(
            (
                "every conv kernel is used with height and width swapped (HWIO read as WHIO)",
                {**weights, **{name: np.swapaxes(weights[name], 0, 1) for name in kernels}},
            )
        )
        variants.append(
            (
                "every conv kernel is flipped (a true convolution; the spec is a cross-correlation)",
                {**weights, **{name: weights[name][::-1, ::-1] for name in kernels}},
            )
        )
    for layer in spec.layers:
        if isinstance(layer, Conv2D):
            kernel = weights[f"{layer.name}/kernel"]
            variants.append(
                (
                    f"{layer.name}'s kernel is used with height and width swapped (HWIO read as WHIO)",
                    {**weights, f"{layer.name}/kernel": np.swapaxes(kernel, 0, 1)},
                )
            )
            variants.append(
                (
                    f"{layer.name}'s kernel is flipped (a true convolution; the spec is a cross-correlation)",
                    {**weights, f"{layer.name}/kernel": kernel[::-1, ::-1]},
                )
            )
            if kernel.shape[2] == kernel.shape[3] and kernel.shape[2] > 1:
                variants.append(
                    (
                        f"{layer.name}'s kernel has input and output channels swapped",
                        {**weights, f"{layer.name}/kernel": np.swapaxes(kernel, 2, 3)},
                    )
                )
        elif isinstance(layer, Dense):
            kernel = weights[f"{layer.name}/kernel"]
            if kernel.shape[0] == kernel.shape[1] and kernel.shape[0] > 1:
                variants.append(
                    (
                        f"{layer.name}'s kernel is transposed ((out, in) instead of (in, out))",
                        {**weights, f"{layer.name}/kernel": kernel.T},
                    )
                )
    return variants


def logits_hint(spec: ModelSpec, weights: Weights, x: Array, logits: Array) -> str:
    """If the backend matches the reference under another convention or kernel layout, say which."""
    got = np.asarray(logits, dtype=np.float64)
    if got.shape != (len(x), spec.num_classes) or not np.isfinite(got).all():
        return ""
    tried: list[tuple[str, Callable[[], Array]]] = [
        (
            "the flatten after the last pool is in (C, H, W) order; the spec flattens NHWC in (H, W, C) order",
            lambda: ref.forward(spec, weights, x, ref.Conventions(flatten="CHW")),
        ),
        (
            "SAME padding puts the odd extra row/column before; the spec puts it after (1 before, 2 after for 4x4)",
            lambda: ref.forward(spec, weights, x, ref.Conventions(same_extra="before")),
        ),
        (
            "flatten in (C, H, W) order and SAME padding's extra row/column before",
            lambda: ref.forward(spec, weights, x, ref.Conventions(flatten="CHW", same_extra="before")),
        ),
    ]
    for meaning, variant in _kernel_variants(spec, weights):
        tried.append((meaning, lambda variant=variant: ref.forward(spec, variant, x)))  # type: ignore[misc]
    for meaning, alternative in tried:
        if scaled_error(got, alternative()) <= LOGITS_REL:
            return f"they match the reference when {meaning}"
    return ""


def scale_hint(got: npt.ArrayLike, want: npt.ArrayLike, n: int, what: str) -> str:
    """Name a gradient or loss that is the reference's times n, 1/n or -1 (sum instead of mean, a sign)."""
    got64, want64 = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got64.shape != want64.shape:
        return ""
    if not np.all(np.isfinite(got64)):
        return f"{what} is not finite"
    denominator = float(np.sum(want64 * want64))
    if denominator == 0:
        return ""
    scale = float(np.sum(got64 * want64)) / denominator  # got ~ scale * want?
    if scaled_error(got64, scale * want64) > 1e-3:
        return ""
    if n > 1 and abs(scale / n - 1) < 0.01:
        return f"{what} is {n}x the reference: the sum over the batch, not the mean"
    if n > 1 and abs(scale * n - 1) < 0.01:
        return f"{what} is 1/{n} of the reference: divided by the batch size twice?"
    if abs(scale + 1) < 0.01:
        return f"{what} has its sign flipped"
    return f"{what} is {scale:.4g}x the reference"


# --- an exception inside a check -----------------------------------------------------------------


def _padded_size(size: int, window: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - window) // stride + 1


def alternative_flatten_sizes(spec: ModelSpec) -> dict[int, str]:
    """The flattened size the spec's convolutions give under other paddings: size -> what gives it."""
    schemes: dict[str, Callable[[int], tuple[int, int]]] = {
        "symmetric padding ((k - 1) // 2 on each side: 1 for a 4x4 kernel)": lambda k: ((k - 1) // 2, (k - 1) // 2),
        "symmetric padding (k // 2 on each side: 2 for a 4x4 kernel)": lambda k: (k // 2, k // 2),
        "VALID padding (none)": lambda k: (0, 0),
    }
    found: dict[int, str] = {}
    for meaning, pads in schemes.items():
        h, w, c = spec.input_shape
        flat = None
        for layer in spec.layers:
            if isinstance(layer, Conv2D):
                if layer.padding == "SAME":
                    before, after = pads(layer.kernel_size)
                    h = _padded_size(h, layer.kernel_size, layer.stride, before, after)
                    w = _padded_size(w, layer.kernel_size, layer.stride, before, after)
                else:
                    h, w = (h - layer.kernel_size) // layer.stride + 1, (w - layer.kernel_size) // layer.stride + 1
                c = layer.filters
            elif isinstance(layer, MaxPool2D):
                if layer.padding == "SAME":
                    h, w = -(-h // layer.stride), -(-w // layer.stride)
                else:
                    h, w = (h - layer.pool_size) // layer.stride + 1, (w - layer.pool_size) // layer.stride + 1
            elif isinstance(layer, Flatten):
                flat = h * w * c
                break
        if flat is not None and flat > 0:
            found.setdefault(flat, meaning)
    return found


def likely_cause(spec: ModelSpec | None, call: str, error: BaseException) -> str:
    """A guess at why ``call`` raised ``error``, from its type and message; "" when nothing fits."""
    text = f"{type(error).__name__}: {error}"
    numbers = {int(number) for number in re.findall(r"(?<![\d.])\d+(?![\d.])", text)}
    if spec is not None:
        flat = next((info.output_shape[0] for info in spec.layer_infos() if isinstance(info.layer, Flatten)), None)
        for size, meaning in alternative_flatten_sizes(spec).items():
            if size in numbers and size != flat:
                return (
                    f"the flattened size {size} in the error is what the convolutions give with {meaning}; "
                    f"the spec's SAME padding keeps the size (odd extra row/column after) and flattens {flat}"
                )
    lowered = text.lower()
    if re.search(r"shape|size|dimension|mismatch|broadcast|reshape", lowered):
        return (
            "a layer's output shape differs from the spec's: compare with spec.layer_infos() "
            "(padding, strides, pooling, flatten order)"
        )
    if re.search(r"dtype|float64|double|int32|long|expected scalar type", lowered):
        return "a dtype: images are float32 NHWC, labels int64, weights float32"
    if isinstance(error, (KeyError,)) and call in ("set_weights", "get_weights", "loss_and_gradients"):
        return "a weight name: use the canonical names of spec.param_shapes()"
    if isinstance(error, IndexError) or "index" in lowered or "out of range" in lowered:
        return "indexing the data: batch_indices index the training set given to load_data"
    if "device" in lowered or "cuda" in lowered:
        return "device placement: keep the model, the data and the indices on the session's device"
    return ""
