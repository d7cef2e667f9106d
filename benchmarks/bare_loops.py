"""Bare training loops, one per framework, written as a user would without cnnbench.

The yardstick for harness overhead: ``harness_overhead.py`` runs each of these and the same
framework through ``cnnbench run`` in one session, with the same threads, allocator and data,
and prints the ratio. Usage: ``python benchmarks/bare_loops.py torch|tf|jax EPOCHS N_TRAIN``;
prints one JSON line with the per-epoch samples/s.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

BATCH = 100
LR = 0.001


def load_mnist(n_train: int):
    from cnnbench.config import DataConfig
    from cnnbench.datasets.mnist import MNIST
    from cnnbench.preprocess import prepare

    data = prepare(MNIST().load(DataConfig(dataset="mnist")), DataConfig(dataset="mnist", limit_train=n_train))
    return data.x_train, data.y_train


def epochs_of_batches(n: int, epochs: int):
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        yield rng.permutation(n)[: n // BATCH * BATCH].reshape(-1, BATCH)


def torch_loop(x, y, epochs):
    import torch
    from torch import nn

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    model = nn.Sequential(
        nn.Conv2d(1, 32, 4, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 4, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    ).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)  # PyTorch's fastest Adam, as cnnbench's
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y)
    rates = []
    for batches in epochs_of_batches(len(y), epochs):
        start = time.perf_counter()
        for row in torch.from_numpy(batches):
            loss = nn.functional.cross_entropy(model(xt[row]), yt[row])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(batches.size / (time.perf_counter() - start))
    return rates


def tf_loop(x, y, epochs):
    import tensorflow as tf

    threads = int(__import__("os").environ.get("OMP_NUM_THREADS", "2"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    shapes = [(4, 4, 1, 32), (32,), (4, 4, 32, 64), (64,), (3136, 1024), (1024,), (1024, 10), (10,)]
    params = [tf.Variable(tf.random.normal(s, stddev=0.05, seed=i)) for i, s in enumerate(shapes)]
    ms = [tf.Variable(tf.zeros_like(p)) for p in params]
    vs = [tf.Variable(tf.zeros_like(p)) for p in params]
    t = tf.Variable(0.0)
    xt, yt = tf.constant(x), tf.constant(y)

    def forward(xb):
        h = tf.nn.relu(tf.nn.conv2d(xb, params[0], 1, "SAME") + params[1])
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.conv2d(h, params[2], 1, "SAME") + params[3])
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.reshape(h, (-1, 3136))
        h = tf.nn.relu(h @ params[4] + params[5])
        return h @ params[6] + params[7]

    @tf.function(input_signature=[tf.TensorSpec([BATCH], tf.int64)])
    def step(idx):
        xb, yb = tf.gather(xt, idx), tf.gather(yt, idx)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, forward(xb)))
        grads = tape.gradient(loss, params)
        t.assign_add(1.0)
        for p, g, m, v in zip(params, grads, ms, vs, strict=True):
            m.assign(0.9 * m + 0.1 * g)
            v.assign(0.999 * v + 0.001 * g * g)
            m_hat = m / (1 - 0.9**t)
            v_hat = v / (1 - 0.999**t)
            p.assign_sub(LR * m_hat / (tf.sqrt(v_hat) + 1e-8))
        return loss

    rates = []
    for batches in epochs_of_batches(len(y), epochs):
        start = time.perf_counter()
        for row in batches:
            loss = step(tf.constant(row))
        float(loss)  # materialise: the device is done
        rates.append(batches.size / (time.perf_counter() - start))
    return rates


def jax_loop(x, y, epochs):
    import jax
    import jax.numpy as jnp
    import optax

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "c1": jax.random.normal(keys[0], (4, 4, 1, 32)) * 0.05,
        "b1": jnp.zeros(32),
        "c2": jax.random.normal(keys[1], (4, 4, 32, 64)) * 0.05,
        "b2": jnp.zeros(64),
        "d1": jax.random.normal(keys[2], (3136, 1024)) * 0.02,
        "e1": jnp.zeros(1024),
        "d2": jax.random.normal(keys[3], (1024, 10)) * 0.05,
        "e2": jnp.zeros(10),
    }
    opt = optax.adam(LR)
    state = opt.init(params)
    dn = ("NHWC", "HWIO", "NHWC")

    def pool(h):
        # As the jax backend pools by default: 2x2 windows as a reshape and a max. lax.reduce_window, what flax's
        # max_pool writes, has a select-and-scatter gradient that takes most of the step on XLA CPU
        # (docs/performance.md#jax); BARE_JAX_POOL=reduce_window measures that one.
        if os.environ.get("BARE_JAX_POOL") == "reduce_window":
            return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        n, rows, cols, c = h.shape
        return h.reshape(n, rows // 2, 2, cols // 2, 2, c).max(axis=(2, 4))

    def forward(p, xb):
        h = jax.nn.relu(jax.lax.conv_general_dilated(xb, p["c1"], (1, 1), "SAME", dimension_numbers=dn) + p["b1"])
        h = pool(h)
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["c2"], (1, 1), "SAME", dimension_numbers=dn) + p["b2"])
        h = pool(h)
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["d1"] + p["e1"])
        return h @ p["d2"] + p["e2"]

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, xb), yb).mean()

    @jax.jit
    def step(p, s, idx, xs, ys):
        loss, grads = jax.value_and_grad(loss_fn)(p, xs[idx], ys[idx])
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    xs, ys = jnp.asarray(x), jnp.asarray(y)
    rates = []
    for batches in epochs_of_batches(len(y), epochs):
        start = time.perf_counter()
        for row in batches:
            params, state, loss = step(params, state, row, xs, ys)
        loss.block_until_ready()
        rates.append(batches.size / (time.perf_counter() - start))
    return rates


LOOPS = {"torch": torch_loop, "tf": tf_loop, "jax": jax_loop}

if __name__ == "__main__":
    framework, epochs, n_train = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x, y = load_mnist(n_train)
    print(json.dumps({"framework": framework, "samples_per_s": LOOPS[framework](x, y, epochs)}))
