"""TensorFlow raw-ops data-parallel: tf.distribute.MirroredStrategy, MultiWorkerMirroredStrategy on several hosts.

The same variables, forward pass and fused optimizer kernels as ``TFRawSession``, created under
the strategy's scope (mirrored variables). One ``tf.function`` per global batch calls
``strategy.run``: each replica gathers its contiguous share of the row, computes the gradient of
its share-weighted loss, the strategy's cross-device ops all-reduce (sum) the gradients, and every
replica applies the same update to its own copy with ``ResourceApplyAdam`` on the local handle.

On a CPU machine the devices are logical CPU devices (``tf.config.set_logical_device_configuration``):
they share the cores, so this tests the engine, not a speed-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster
from cnnbench.errors import BackendError, BackendUnavailable
from cnnbench.frameworks import TENSORFLOW
from cnnbench.spec import ModelSpec
from cnnbench_tf.backend import TFRawSession, resolve_device


def _cpu_replica_devices(tf, devices: int) -> list[str]:
    """``devices`` logical CPU devices; configured now if TF's runtime has not started yet."""
    physical = tf.config.list_physical_devices("CPU")[0]
    try:
        logical_devices = [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        tf.config.set_logical_device_configuration(physical, logical_devices)
    except RuntimeError:  # runtime already started (a second session in this process): use what exists
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < devices:
        started = f"TensorFlow's runtime already started with {len(logical)}"
        raise BackendUnavailable(f"{devices} CPU devices requested but {started}")
    return [device.name for device in logical[:devices]]


def create_strategy(tf, config: TrainConfig, where: Cluster):
    """(strategy, description, first replica device) for ``config.devices`` devices on each host."""
    gpus = tf.config.list_physical_devices("GPU") if config.device in ("auto", "cuda") else []
    if config.device == "cuda" and not gpus:
        raise BackendUnavailable(TENSORFLOW.no_gpu_reason())
    if gpus and len(gpus) < config.devices:
        raise BackendUnavailable(f"{config.devices} GPUs per host requested, TensorFlow sees {len(gpus)}")
    if where.multi_host:
        if gpus:
            tf.config.set_visible_devices(gpus[: config.devices], "GPU")
        elif config.devices > 1:
            raise BackendUnavailable(
                "MultiWorkerMirroredStrategy drives one CPU device per worker: use --devices 1 on each CPU host"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG (set by the backend's environment)
        kind = f"{config.devices} GPU(s)" if gpus else "the CPU"
        description = f"tf.distribute.MultiWorkerMirroredStrategy, {where.num_hosts} workers x {kind} (TF_CONFIG)"
        return strategy, description, "/GPU:0" if gpus else "/CPU:0"
    if gpus:
        devices = [f"/GPU:{i}" for i in range(config.devices)]
        strategy = tf.distribute.MirroredStrategy(devices)
        return strategy, f"tf.distribute.MirroredStrategy over {config.devices} GPUs", devices[0]
    devices = _cpu_replica_devices(tf, config.devices)
    strategy = tf.distribute.MirroredStrategy(devices)
    return strategy, f"tf.distribute.MirroredStrategy over {config.devices} logical CPU devices", devices[0]


class TFMirroredSession(TFRawSession):
    """Mirrored variables and one distributed step per global batch."""

    #: (images, labels) as every replica sees them, None until ``load_data``.
    replicated_train: Any

    def __init__(self, spec: ModelSpec, config: TrainConfig, runtime_notes: dict[str, Any], where: Cluster):
        import tensorflow as tf

        if config.flag("tf", "xla"):
            raise BackendError("tf.xla=true is not supported with more than one device")
        if spec.has_batch_norm:
            raise BackendUnavailable(
                "batch norm with --devices > 1 is not implemented in the tf backend "
                "(per-replica batch statistics would not be the spec's global-batch ones)"
            )
        self.tf, self.spec, self.config = tf, spec, config
        self.runtime_notes = runtime_notes
        self.xla = False
        self.strategy, self.strategy_description, self.device_name = create_strategy(tf, config, where)
        self.replica_devices = list(self.strategy.extended.worker_devices)
        on_gpu = "GPU" in self.device_name.upper()
        if on_gpu:
            tf.config.experimental.enable_tensor_float_32_execution(False)
            _, name = resolve_device("cuda")
            self.device = f"{len(self.replica_devices)} x {name}"
        else:
            replicas = len(self.replica_devices)
            self.device = f"cpu ({replicas} logical devices)" if replicas > 1 else "cpu"
        if where.multi_host:
            self.device += f", worker {where.index} of {where.num_hosts}"
        tf.random.set_seed(config.seed)
        only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # counters advance once per step, not per replica
        with self.strategy.scope():
            self.variables, self.state = self._build_variables()
            self.slots = self._build_slots()
            self.adam_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam_step", aggregation=only_first)
            self.dropout_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="dropout_step", aggregation=only_first
            )
        self._compile_functions()  # evaluate / predict / gradients: cross-replica, on the first replica's copy
        self._compile_distributed_step()
        self.x_train = self.y_train = self.x_test = self.y_test = None
        self.replicated_train = None

    def _compile_distributed_step(self) -> None:
        tf = self.tf
        variables = list(self.variables.values())
        seed, has_dropout = self.config.seed, self.spec.has_dropout
        strategy = self.strategy

        def replica_step(x_all, y_all, row):
            context = tf.distribute.get_replica_context()
            replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
            replicas = context.num_replicas_in_sync
            global_batch = tf.shape(row)[0]
            start, stop = (replica * global_batch) // replicas, ((replica + 1) * global_batch) // replicas
            local = row[start:stop]
            x, y = tf.gather(x_all, local), tf.gather(y_all, local)
            dropout_seed = None
            if has_dropout:
                step_seed = tf.stack([tf.constant(seed, tf.int64), self.dropout_step.assign_add(1)])
                dropout_seed = tf.random.experimental.stateless_fold_in(step_seed, tf.cast(replica, tf.int64))
            with tf.GradientTape() as tape:
                logits = self._forward(x, training=True, dropout_seed=dropout_seed)
                # This replica's share of the global mean: summed across replicas it is the global mean.
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                loss = tf.reduce_sum(losses) / tf.cast(global_batch, tf.float32)
            grads = tape.gradient(loss, variables)
            *grads, loss = context.all_reduce(tf.distribute.ReduceOp.SUM, [*grads, loss])
            self._apply_gradients(grads)
            return loss

        def distributed_step(x_all, y_all, row):
            return strategy.run(replica_step, args=(x_all, y_all, row))

        self._distributed_step = tf.function(distributed_step, reduce_retracing=True)

    def _on_every_replica(self, tensor):
        """The tensor for each replica: shared on CPU devices (one host memory), a copy per GPU."""
        tf = self.tf
        if all("CPU" in device.upper() for device in self.replica_devices):
            return tensor
        devices = iter(self.replica_devices)

        def copy_to_replica_device(context):
            with tf.device(next(devices)):
                return tf.identity(tensor)

        return self.strategy.experimental_distribute_values_from_function(copy_to_replica_device)

    def _load_data(self, x_train, y_train, x_test, y_test) -> None:
        super()._load_data(x_train, y_train, x_test, y_test)
        self.replicated_train = (self._on_every_replica(self.x_train), self._on_every_replica(self.y_train))

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        tf = self.tf
        rows = batch_indices
        x_all, y_all = self.replicated_train
        with tf.device("/CPU:0"):
            row_tensors = tf.unstack(tf.convert_to_tensor(rows))
        local_results = self.strategy.experimental_local_results
        losses = [local_results(self._distributed_step(x_all, y_all, row))[0] for row in row_tensors]
        return tf.stack(losses).numpy().astype(np.float64)

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings.update(
            data_parallel=self.strategy_description,
            replicas=self.strategy.num_replicas_in_sync,
            cross_device_ops=type(getattr(self.strategy.extended, "_cross_device_ops", None) or object()).__name__,
            train_loop="one tf.function per global batch: strategy.run on every replica, "
            "gradients all-reduced (sum of share-weighted losses)",
        )
        return settings

    def close(self) -> None:
        self.replicated_train = None
        super().close()
        self._distributed_step = None
