"""Keras 3 data-parallel: ``keras.distribution.DataParallel``, on the engine that implements it (JAX).

The distribution is set before the model is built, so every variable is created replicated over
the device mesh; ``train_on_batch`` then shards each batch over the mesh's batch axis and the
JAX trainer's jitted step all-reduces the gradients (XLA SPMD). The session is otherwise the
single-device ``KerasSession``: the same model, optimizer and per-batch ``train_on_batch`` loop.

Keras' TensorFlow engine only has an unfinished prototype of ``keras.distribution`` (its module
says "DO NOT USE") and the torch engine none, so those engines report "unsupported".

Batch normalisation is refused with several devices: whether the sharded step normalises each replica's
share or the global batch, and updates the moving statistics once, is not checked against the spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster, SharedLifetime, shard_bounds
from cnnbench.errors import BackendUnavailable
from cnnbench.frameworks import JAX, mesh_label
from cnnbench.spec import ModelSpec
from cnnbench_keras.backend import KerasSession

#: The Keras engines whose ``keras.distribution`` is implemented.
DATA_PARALLEL_ENGINES = ("jax",)


def unsupported_engine_reason(engine: str) -> str | None:
    if engine in DATA_PARALLEL_ENGINES:
        return None
    what = "is an unfinished prototype (marked DO NOT USE)" if engine == "tensorflow" else "does not exist"
    return (
        "keras.distribution.DataParallel is implemented for Keras' JAX engine only; "
        f"on the {engine} engine it {what}: use keras:jax"
    )


def data_parallel_devices(config: TrainConfig, where: Cluster) -> list[str]:
    """Keras device names ("cpu:0", "gpu:1", ...) of the mesh the jax backend would use."""
    return [f"{device.platform}:{device.id}" for device in JAX.mesh_devices(config, where)]


class KerasDataParallelSession(KerasSession):
    """A ``KerasSession`` built under ``keras.distribution.DataParallel``."""

    #: The sessions of this process under the global distribution: cleared when the last one closes.
    distribution_users = SharedLifetime()

    def __init__(self, spec: ModelSpec, config: TrainConfig, engine: str, where: Cluster):
        import keras

        if spec.has_batch_norm:
            raise BackendUnavailable(
                "batch norm with --devices > 1 is not implemented on the keras backend "
                "(batch statistics across replicas are not checked against the spec)"
            )
        reason = unsupported_engine_reason(engine)
        if reason:
            raise BackendUnavailable(reason)
        if where.multi_host:
            keras.distribution.initialize(
                job_addresses=",".join(where.hosts), num_processes=where.num_hosts, process_id=where.index
            )
        self.cluster = where
        self.mesh_devices = data_parallel_devices(config, where)
        # Each process passes its own share of every batch (train_batches): no dataset auto-sharding.
        self.distribution = keras.distribution.DataParallel(devices=self.mesh_devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(self.distribution)  # before the model: replicated variables
        super().__init__(spec, config, engine)
        self.uses_model_evaluate = True  # model.evaluate shards each batch over the mesh, a ragged last one too
        KerasDataParallelSession.distribution_users.opened()
        self.device = mesh_label(len(self.mesh_devices), self.device, self.mesh_devices[0].split(":")[0], where)

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """Keras takes each process's share of the global batch and shards it over local devices."""
        rows = batch_indices
        if self.cluster.multi_host:
            start, stop = shard_bounds(rows.shape[1], self.cluster.num_hosts, self.cluster.index)
            rows = rows[:, start:stop]
        with self.distribution.scope():
            return super()._train_batches(rows)

    def eval_loop(self) -> str:
        return "model.evaluate on resident tensors (Keras' input pipeline), batches sharded over the mesh"

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings.update(
            data_parallel=f"keras.distribution.DataParallel over {len(self.mesh_devices)} devices "
            f"({', '.join(self.mesh_devices)})"
            + (f", {self.cluster.num_hosts} processes" if self.cluster.multi_host else ""),
        )
        return settings

    def close(self) -> None:
        super().close()
        if KerasDataParallelSession.distribution_users.closed():
            self.keras.distribution.set_distribution(None)
