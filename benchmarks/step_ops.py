"""Where a training step's time goes: each op of the MNIST LeNet step alone, JAX (XLA CPU) against TF (oneDNN).

Every op runs with the step's shapes (batch 100), compiled (jax.jit / tf.function), median of REPEATS calls
after a warm-up; GFLOP/s where the op's FLOPs are counted. The per-op figures of docs/performance.md#jax.
Usage: python benchmarks/step_ops.py jax|jax-nchw|tf [REPEATS]; prints one JSON line (milliseconds per op).
Run each in a fresh process with the harness's threads (OMP_NUM_THREADS / PJRT_NPROC), alternating.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BATCH = 100
#: FLOPs (a multiply-add counts 2) of the ops whose count is clear; the backward passes cost a forward each.
FLOPS = {
    "conv1 forward": 2 * BATCH * 28 * 28 * 32 * 16,
    "conv2 forward": 2 * BATCH * 14 * 14 * 64 * 16 * 32,
    "dense1 forward": 2 * BATCH * 3136 * 1024,
}
FLOPS["conv1 kernel grad"] = FLOPS["conv1 forward"]
FLOPS["conv2 kernel grad"] = FLOPS["conv2 forward"]
FLOPS["conv2 input grad"] = FLOPS["conv2 forward"]
FLOPS["dense1 grads"] = 2 * FLOPS["dense1 forward"]


def arrays() -> dict[str, np.ndarray]:
    """The step's tensors in NHWC / HWIO, seeded."""
    rng = np.random.default_rng(0)
    return {
        "x1": rng.standard_normal((BATCH, 28, 28, 1), dtype=np.float32),
        "k1": rng.standard_normal((4, 4, 1, 32), dtype=np.float32) * 0.1,
        "a1": rng.standard_normal((BATCH, 28, 28, 32), dtype=np.float32),
        "x2": rng.standard_normal((BATCH, 14, 14, 32), dtype=np.float32),
        "k2": rng.standard_normal((4, 4, 32, 64), dtype=np.float32) * 0.1,
        "h": rng.standard_normal((BATCH, 3136), dtype=np.float32),
        "w1": rng.standard_normal((3136, 1024), dtype=np.float32) * 0.01,
        "w2": rng.standard_normal((1024, 10), dtype=np.float32) * 0.01,
    }


def median_seconds(fn: Callable[..., Any], sync: Callable[[Any], None], args: tuple[Any, ...], repeats: int) -> float:
    """Median wall time of ``fn(*args)`` after three warm-up calls, each call synchronised."""
    for _ in range(3):
        sync(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_ops(nchw: bool, repeats: int) -> dict[str, float]:
    """Seconds per op in JAX; NCHW / OIHW dimension numbers with ``nchw``."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    a = arrays()
    if nchw:
        numbers = ("NCHW", "OIHW", "NCHW")
        for key in ("x1", "a1", "x2"):
            a[key] = np.ascontiguousarray(a[key].transpose(0, 3, 1, 2))
        for key in ("k1", "k2"):
            a[key] = np.ascontiguousarray(a[key].transpose(3, 2, 0, 1))
        window: tuple[int, ...] = (1, 1, 2, 2)
    else:
        numbers, window = ("NHWC", "HWIO", "NHWC"), (1, 2, 2, 1)
    x1, k1, a1, x2, k2, h, w1, w2 = (jnp.asarray(a[k]) for k in ("x1", "k1", "a1", "x2", "k2", "h", "w1", "w2"))

    def conv(x: Any, k: Any) -> Any:
        return lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=numbers, precision=lax.Precision.HIGHEST
        )

    def pool_window(x: Any) -> Any:
        return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")

    def pool_reshape(x: Any) -> Any:
        if nchw:
            n, c, rows, cols = x.shape
            return x.reshape(n, c, rows // 2, 2, cols // 2, 2).max(axis=(3, 5))
        n, rows, cols, c = x.shape
        return x.reshape(n, rows // 2, 2, cols // 2, 2, c).max(axis=(2, 4))

    def sync(out: Any) -> None:
        jax.block_until_ready(out)

    def kernel_grad(k: Any, x: Any) -> Any:
        return conv(x, k).sum()

    def input_grad(x: Any, k: Any) -> Any:
        return conv(x, k).sum()

    params = {"k1": k1, "k2": k2, "w1": w1, "w2": w2}
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)

    def adam(p: Any, s: Any, g: Any) -> Any:
        updates, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, updates), s

    ops: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
        "conv1 forward": (jax.jit(conv), (x1, k1)),
        "conv2 forward": (jax.jit(conv), (x2, k2)),
        "conv1 kernel grad": (jax.jit(jax.grad(kernel_grad)), (k1, x1)),
        "conv2 kernel grad": (jax.jit(jax.grad(kernel_grad)), (k2, x2)),
        "conv2 input grad": (jax.jit(jax.grad(input_grad)), (x2, k2)),
        "pool1 forward (reduce_window)": (jax.jit(pool_window), (a1,)),
        "pool1 grad (reduce_window)": (jax.jit(jax.grad(lambda x: pool_window(x).sum())), (a1,)),
        "pool1 forward (reshape)": (jax.jit(pool_reshape), (a1,)),
        "pool1 grad (reshape)": (jax.jit(jax.grad(lambda x: pool_reshape(x).sum())), (a1,)),
        "dense1 forward": (jax.jit(lambda x, w: jnp.maximum(x @ w, 0)), (h, w1)),
        "dense1 grads": (jax.jit(jax.grad(lambda w, x: jnp.maximum(x @ w, 0).sum(), argnums=(0, 1))), (w1, h)),
        "adam update (all weights)": (jax.jit(adam), (params, state, params)),
    }
    return {name: median_seconds(fn, sync, args, repeats) for name, (fn, args) in ops.items()}


def tf_ops(repeats: int) -> dict[str, float]:
    """Seconds per op in TensorFlow (tf.function graphs, TF's default oneDNN kernels)."""
    import tensorflow as tf

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    a = {key: tf.constant(value) for key, value in arrays().items()}

    def sync(out: Any) -> None:
        tf.nest.map_structure(lambda t: t.numpy(), out)

    def conv(x: Any, k: Any) -> Any:
        return tf.nn.conv2d(x, k, 1, "SAME")

    def pool(x: Any) -> Any:
        return tf.nn.max_pool2d(x, 2, 2, "VALID")

    def grad_of(f: Callable[..., Any], argnums: tuple[int, ...]) -> Callable[..., Any]:
        @tf.function
        def gradient(*args: Any) -> Any:
            with tf.GradientTape() as tape:
                for index in argnums:
                    tape.watch(args[index])
                total = tf.reduce_sum(f(*args))
            return tape.gradient(total, [args[index] for index in argnums])

        return gradient

    variables = [tf.Variable(a[key]) for key in ("k1", "k2", "w1", "w2")]
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]

    @tf.function
    def adam(grads: Any) -> Any:
        for var, (m, v), grad in zip(variables, slots, grads, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=0.9,
                beta2_power=0.999,
                lr=1e-3,
                beta1=0.9,
                beta2=0.999,
                epsilon=1e-8,
                grad=grad,
                use_locking=False,
            )
        return variables[0].read_value()

    ops: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
        "conv1 forward": (tf.function(conv), (a["x1"], a["k1"])),
        "conv2 forward": (tf.function(conv), (a["x2"], a["k2"])),
        "conv1 kernel grad": (grad_of(conv, (1,)), (a["x1"], a["k1"])),
        "conv2 kernel grad": (grad_of(conv, (1,)), (a["x2"], a["k2"])),
        "conv2 input grad": (grad_of(conv, (0,)), (a["x2"], a["k2"])),
        "pool1 forward (max_pool2d)": (tf.function(pool), (a["a1"],)),
        "pool1 grad (max_pool2d)": (grad_of(pool, (0,)), (a["a1"],)),
        "dense1 forward": (tf.function(lambda x, w: tf.nn.relu(x @ w)), (a["h"], a["w1"])),
        "dense1 grads": (grad_of(lambda x, w: tf.nn.relu(x @ w), (0, 1)), (a["h"], a["w1"])),
        "adam update (all weights)": (adam, ([a["k1"], a["k2"], a["w1"], a["w2"]],)),
    }
    return {name: median_seconds(fn, sync, args, repeats) for name, (fn, args) in ops.items()}


def main(argv: list[str]) -> int:
    """Time every op of one framework and print ms and GFLOP/s as one JSON line."""
    which = argv[0] if argv else "jax"
    repeats = int(argv[1]) if len(argv) > 1 else 20
    if which not in ("jax", "jax-nchw", "tf"):
        print("usage: python benchmarks/step_ops.py jax|jax-nchw|tf [REPEATS]", file=sys.stderr)
        return 2
    seconds = tf_ops(repeats) if which == "tf" else jax_ops(which == "jax-nchw", repeats)
    print(
        json.dumps(
            {
                "framework": which,
                "ms": {name: round(1e3 * s, 3) for name, s in seconds.items()},
                "gflops": {name: round(FLOPS[name] / s / 1e9, 1) for name, s in seconds.items() if name in FLOPS},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
