"""JAX data-parallel: jax.sharding with a one-axis Mesh, the batch sharded, parameters replicated.

The train step is the single-device one (same forward, optax optimizer, dropout key from
(seed, step)), jitted with explicit shardings: every global-batch row is placed sharded over
the ``data`` axis, the gathered images are constrained to that sharding, and params, optimizer
state and the resident dataset are replicated. XLA's SPMD partitioner inserts the gradient
all-reduce. Random bits are partitionable (``jax_threefry_partitionable``), so dropout masks do
not depend on the number of devices. Batch norm needs nothing more: the step is one global
computation, so its batch statistics are the global batch's (XLA all-reduces the partial sums),
exactly the single-device function; the moving statistics are replicated like the parameters.

Simulated devices on a CPU machine come from ``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
set in the worker's environment before jax is imported (``JaxBackend.process_environment``);
several hosts join with ``jax.distributed.initialize`` (``initialize_cluster``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster
from cnnbench.frameworks import JAX, mesh_label
from cnnbench.spec import ModelSpec
from cnnbench_jax.backend import JaxSession

AXIS = "data"


def initialize_cluster(where: Cluster) -> None:
    """``jax.distributed.initialize`` with host 0 as coordinator, before any device is touched."""
    import jax

    if not where.multi_host or jax.distributed.is_initialized():
        return
    address, port = where.coordinator
    jax.distributed.initialize(
        coordinator_address=f"{address}:{port}", num_processes=where.num_hosts, process_id=where.index
    )


class ShardedJaxSession(JaxSession):
    """A ``JaxSession`` whose arrays live on a mesh: replicated state, batch-sharded steps."""

    def __init__(self, spec: ModelSpec, config: TrainConfig, where: Cluster):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.cluster = where
        self.mesh_device_list = JAX.mesh_devices(config, where)
        self.mesh = Mesh(np.array(self.mesh_device_list), (AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))
        super().__init__(spec, config)
        first = self.mesh_device_list[0]
        # Simulated CPU devices wait for each step, or a collective may time out: docs/decisions.md#jax-cpu-collectives
        self.one_step_in_flight = first.platform == "cpu"
        kind = "cpu" if first.platform == "cpu" else f"{first.platform} ({first.device_kind})"
        self.device = mesh_label(len(self.mesh_device_list), kind, first.platform, where)

    # -- placement: everything resident is replicated over the mesh --------------------------------

    def _global(self, array: np.ndarray, sharding):
        """A global array from the same host value on every process (each keeps its addressable shards)."""
        return self.jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    def _put(self, array: np.ndarray):
        return self._global(np.asarray(array), self.replicated)

    def _compile(self) -> None:
        super()._compile()  # evaluate / predict / gradients: replicated inputs, replicated results
        import optax

        jax = self.jax
        forward, optimizer, seed = self.train_forward, self.optimizer, self.config.seed
        batch_sharded, replicated = self.batch_sharded, self.replicated

        def mean_loss(params, x, y, key):
            return optax.softmax_cross_entropy_with_integer_labels(forward(params, x, key), y).mean()

        def step(params, opt_state, x_train, y_train, row, step_number, shard_batch):
            key = jax.random.fold_in(jax.random.key(seed), step_number)
            x, y = x_train[row], y_train[row]
            if shard_batch:
                x = jax.lax.with_sharding_constraint(x, batch_sharded)
                y = jax.lax.with_sharding_constraint(y, batch_sharded)
            loss, grads = jax.value_and_grad(mean_loss)(params, x, y, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def jitted(shard_batch: bool):
            row_sharding = batch_sharded if shard_batch else replicated
            return jax.jit(
                lambda params, opt_state, x_train, y_train, row, step_number: step(
                    params, opt_state, x_train, y_train, row, step_number, shard_batch
                ),
                in_shardings=(replicated, replicated, replicated, replicated, row_sharding, replicated),
                out_shardings=(replicated, replicated, replicated),
                donate_argnums=(0, 1),
            )

        # A row that does not divide over the mesh (e.g. the parity check's small batches) runs
        # replicated: the same result, without the speed-up.
        self._sharded_steps = {True: jitted(True), False: jitted(False)}
        if self.has_batch_norm:
            self._compile_sharded_batch_norm()

    def _compile_sharded_batch_norm(self) -> None:
        """The batch-norm step (``JaxSession._compile_batch_norm``) with the moving statistics replicated."""
        import optax

        jax = self.jax
        optimizer, seed = self.optimizer, self.config.seed
        training_loss, updated_state = self.training_loss, self.updated_state
        batch_sharded, replicated = self.batch_sharded, self.replicated

        def step(params, opt_state, state, x_train, y_train, row, step_number, shard_batch):
            key = jax.random.fold_in(jax.random.key(seed), step_number)
            x, y = x_train[row], y_train[row]
            if shard_batch:
                x = jax.lax.with_sharding_constraint(x, batch_sharded)
                y = jax.lax.with_sharding_constraint(y, batch_sharded)
            (loss, batch_stats), grads = jax.value_and_grad(training_loss, has_aux=True)(params, x, y, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, updated_state(state, batch_stats), loss

        def jitted(shard_batch: bool):
            row_sharding = batch_sharded if shard_batch else replicated
            return jax.jit(
                lambda params, opt_state, state, x_train, y_train, row, step_number: step(
                    params, opt_state, state, x_train, y_train, row, step_number, shard_batch
                ),
                in_shardings=(replicated, replicated, replicated, replicated, replicated, row_sharding, replicated),
                out_shardings=(replicated, replicated, replicated, replicated),
                donate_argnums=(0, 1, 2),
            )

        self._sharded_steps = {True: jitted(True), False: jitted(False)}

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        rows = batch_indices.astype(np.int32)  # checked by Session.train_batches
        shard_batch = rows.shape[1] % len(self.mesh_device_list) == 0
        step = self._sharded_steps[shard_batch]
        row_sharding = self.batch_sharded if shard_batch else self.replicated
        losses = []
        for row in rows:
            step_number = self._global(np.asarray(self._step_number, dtype=np.int32), self.replicated)
            global_row = self._global(row, row_sharding)
            if self.has_batch_norm:
                self.params, self.opt_state, self.state, loss = step(
                    self.params,
                    self.opt_state,
                    self.state,
                    self.x_train,
                    self.y_train,
                    global_row,
                    step_number,
                )
            else:
                self.params, self.opt_state, loss = step(
                    self.params, self.opt_state, self.x_train, self.y_train, global_row, step_number
                )
            self._step_number += 1
            if self.one_step_in_flight:
                loss.block_until_ready()
            losses.append(loss)
        return np.asarray([float(np.asarray(loss.addressable_data(0))) for loss in losses], dtype=np.float64)

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings.update(
            data_parallel=f"jax.sharding: Mesh(({len(self.mesh_device_list)},), ('{AXIS}',)), "
            "batch sharded, params replicated"
            + (" (batch norm: global batch statistics, moving statistics replicated)" if self.has_batch_norm else "")
            + (f", jax.distributed over {self.cluster.num_hosts} processes" if self.cluster.multi_host else ""),
            mode="jit (SPMD-partitioned)",
            threefry_partitionable=bool(self.jax.config.jax_threefry_partitionable),
            dispatch="one step in flight (CPU collectives)" if self.one_step_in_flight else "asynchronous",
        )
        if self.use_scan:
            settings["scan"] = "not used with several devices (one sharded step per batch)"
        return settings
