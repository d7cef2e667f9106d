"""Initial weights drawn by the harness, in the canonical layout, from the run's seed.

Every backend loads the very same arrays (``Session.set_weights``), so for the shared
schemes the frameworks start from identical weights: a fair race and a basis for parity.
Only the ``framework`` scheme leaves initialisation to each framework.
"""

from __future__ import annotations

import math

import numpy as np

from cnnbench.spec import ModelSpec

#: Batch-norm weights start as the identity in every scheme: gamma and moving variance 1, beta and moving mean 0.
BATCH_NORM_STARTS = {"/gamma": 1.0, "/beta": 0.0, "/moving_mean": 0.0, "/moving_variance": 1.0}


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 4:  # HWIO
        receptive = shape[0] * shape[1]
        return shape[2] * receptive, shape[3] * receptive
    return shape[0], shape[1]


def initial_weights(spec: ModelSpec, scheme: str, seed: int) -> dict[str, np.ndarray] | None:
    """Canonical float32 weights for ``scheme``, or None for ``framework`` (backend decides)."""
    if scheme == "framework":
        return None
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in spec.param_shapes().items():
        is_bias = name.endswith("/bias")
        start = next((value for suffix, value in BATCH_NORM_STARTS.items() if name.endswith(suffix)), None)
        if start is not None:  # the same in every scheme and framework: the identity transform
            weights[name] = np.full(shape, start, dtype=np.float32)
            continue
        if scheme == "glorot-uniform":
            if is_bias:
                value = np.zeros(shape)
            else:
                fan_in, fan_out = _fans(shape)
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                value = rng.uniform(-limit, limit, size=shape)
        elif scheme == "normal":
            value = rng.normal(0.0, 1.0 if is_bias else 0.1, size=shape)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        weights[name] = value.astype(np.float32)
    return weights
