"""One data-parallel step against one single-device step on the same global batch, in one process.

Run by tests/test_distributed.py in a fresh interpreter with the backend's own worker environment
(and, for torch, under torchrun): ``python dp_step_check.py BACKEND[:VARIANT] DEVICES DEVICE OUT.npz``.
The data-parallel session (built first: TF fixes its logical devices at start-up) trains two SGD
steps on two global batches of 2 x 12 images, then a single-device session trains the same
steps from the same weights. The first local rank writes both weight sets and loss lists.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from cnnbench.config import TrainConfig
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.distributed import is_reporting_process
from cnnbench.initializers import initial_weights
from cnnbench.plugins import load_registry
from cnnbench.spec import spec_for

PER_DEVICE_BATCH = 12
LEARNING_RATE = 0.1


def train(backend, spec, config, variant, weights, data, rows):
    session = backend.create_session(spec, config, variant)
    try:
        session.set_weights(weights)
        session.load_data(*data)
        losses = np.asarray(session.train_batches(rows), dtype=np.float64)
        session.sync()
        return session.get_weights(), losses, session.device
    finally:
        session.close()


def main(target: str, devices: int, device: str, out: str) -> None:
    name, _, variant = target.partition(":")
    backend = load_registry().backend(name).item
    variant = variant or (backend.variants[0] if backend.variants else None)
    spec = spec_for((28, 28, 1), 10, None)  # no dropout: the steps are deterministic
    x, y = make_synthetic(200, (28, 28, 1), 10, seed=3)
    x = x.astype(np.float32) / 255.0
    data = (x, y, x[:50], y[:50])
    weights = initial_weights(spec, "glorot-uniform", 0)
    rng = np.random.default_rng(7)
    rows = np.stack([rng.permutation(len(y))[: PER_DEVICE_BATCH * devices] for _ in range(2)]).astype(np.int64)
    config = TrainConfig(
        optimizer="sgd",
        learning_rate=LEARNING_RATE,
        batch_size=PER_DEVICE_BATCH,
        threads=1,
        devices=devices,
        device=device,
    )
    backend.import_framework(variant)
    parallel_weights, parallel_losses, parallel_device = train(backend, spec, config, variant, weights, data, rows)
    single_weights, single_losses, _ = train(backend, spec, replace(config, devices=1), variant, weights, data, rows)
    if is_reporting_process():
        np.savez(
            out,
            parallel_losses=parallel_losses,
            single_losses=single_losses,
            parallel_device=np.array(parallel_device),
            **{f"initial/{k}": v for k, v in weights.items()},
            **{f"parallel/{k}": v for k, v in parallel_weights.items()},
            **{f"single/{k}": v for k, v in single_weights.items()},
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
