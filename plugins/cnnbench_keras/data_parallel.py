"""Keras 3 data-parallel: ``keras.distribution.DataParallel``, on the engine that implements it (JAX).

The distribution is set before the model is built, so every variable is created replicated over
the device mesh; ``train_on_batch`` then shards each batch over the mesh's batch axis and the
JAX trainer's jitted step all-reduces the gradients (XLA SPMD). The session is otherwise the
single-device ``KerasSession``: the same model, optimizer and per-batch ``train_on_batch`` loop.

Keras' TensorFlow engine only has an unfinished prototype of ``keras.distribution`` (its module
says "DO NOT USE") and the torch engine none, so those engines report "unsupported".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench.backend import BackendUnavailable
from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster, shard_bounds
from cnnbench.spec import ModelSpec

from cnnbench_keras.backend import KerasSession

#: The Keras engines whose ``keras.distribution`` is implemented.
DATA_PARALLEL_ENGINES = ("jax",)


def unsupported_engine_reason(engine: str) -> str | None:
    if engine in DATA_PARALLEL_ENGINES:
        return None
    what = "is an unfinished prototype (marked DO NOT USE)" if engine == "tensorflow" else "does not exist"
    return f"keras.distribution.DataParallel is implemented for Keras' JAX engine only; on the {engine} engine it {what}: use keras:jax"


def data_parallel_devices(config: TrainConfig, where: Cluster) -> list[str]:
    """Keras device names ("cpu:0", "gpu:1", ...) of the first ``config.devices`` devices of every process."""
    import jax

    platform = "cpu"
    if config.device in ("auto", "cuda"):
        try:
            platform = "gpu" if jax.devices("gpu") else "cpu"
        except RuntimeError:
            if config.device == "cuda":
                raise BackendUnavailable("CUDA requested but Keras' jax engine sees no GPU") from None
    if len(jax.local_devices(backend=platform)) < config.devices:
        raise BackendUnavailable(f"{config.devices} {platform} devices per host requested, jax sees {len(jax.local_devices(backend=platform))}")
    names = []
    for process in range(where.num_hosts):
        mine = sorted((d for d in jax.devices(platform) if d.process_index == process), key=lambda d: d.id)
        names.extend(f"{platform}:{d.id}" for d in mine[: config.devices])
    return names


class KerasDataParallelSession(KerasSession):
    """A ``KerasSession`` built under ``keras.distribution.DataParallel``."""

    #: Open sessions in this process (the parity check opens a second one): the global
    #: distribution is cleared when the last one closes.
    _open_sessions = 0

    def __init__(self, spec: ModelSpec, config: TrainConfig, engine: str, where: Cluster):
        import keras

        reason = unsupported_engine_reason(engine)
        if reason:
            raise BackendUnavailable(reason)
        if where.multi_host:
            keras.distribution.initialize(job_addresses=",".join(where.hosts), num_processes=where.num_hosts, process_id=where.index)
        self.cluster = where
        self.mesh_devices = data_parallel_devices(config, where)
        # Each process passes its own share of every batch (train_batches): no dataset auto-sharding.
        self.distribution = keras.distribution.DataParallel(devices=self.mesh_devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(self.distribution)  # before the model: replicated variables
        super().__init__(spec, config, engine)
        KerasDataParallelSession._open_sessions += 1
        platform = self.mesh_devices[0].split(":")[0]
        simulated = " (simulated host devices)" if platform == "cpu" and not where.multi_host else ""
        self.device = f"{len(self.mesh_devices)} x {self.device}{simulated}" + (f", {where.num_hosts} processes" if where.multi_host else "")

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """Keras takes each process's share of the global batch and shards it over local devices."""
        rows = np.asarray(batch_indices, dtype=np.int64)
        if self.cluster.multi_host and rows.ndim == 2:
            start, stop = shard_bounds(rows.shape[1], self.cluster.num_hosts, self.cluster.index)
            rows = rows[:, start:stop]
        with self.distribution.scope():
            return super().train_batches(rows)

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings.update(
            data_parallel=f"keras.distribution.DataParallel over {len(self.mesh_devices)} devices ({', '.join(self.mesh_devices)})"
            + (f", {self.cluster.num_hosts} processes" if self.cluster.multi_host else ""),
        )
        return settings

    def close(self) -> None:
        super().close()
        KerasDataParallelSession._open_sessions -= 1
        if KerasDataParallelSession._open_sessions == 0:
            self.keras.distribution.set_distribution(None)
