"""Framework facts written once, so the native backends and the Keras engines cannot drift apart.

Threads, process environment, GPU visibility, synchronisation, peak device memory and the
distributions that provide each framework. No framework is imported at module level: every
method imports its framework when called, so listing backends never pays for one.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

from cnnbench.backend import distribution_version
from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster
from cnnbench.errors import BackendUnavailable

#: Distributions that provide the ``tensorflow`` module, in the order their version is looked up.
TF_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-macos",
    "tf-nightly",
    "tf-nightly-cpu",
)
#: Sizes XLA's CPU thread pool: PJRT reads it (then ``NPROC``) when its CPU client starts.
PJRT_THREADS_ENV = "PJRT_NPROC"
#: What PJRT falls back to after ``PJRT_NPROC``.
PJRT_FALLBACK_ENV = "NPROC"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Framework:
    """What one framework does about threads, devices and memory; subclasses fill in each fact."""

    #: The module and Keras engine name ("tensorflow", "torch", "jax").
    name = ""
    #: Distributions whose version identifies the framework (the first installed one is reported).
    distributions: tuple[str, ...] = ()
    #: The framework as a message names it.
    title = ""

    def version(self) -> str | None:
        """The installed version, read from package metadata without importing the framework."""
        return distribution_version(*self.distributions)

    def apply_threads(self, threads: int) -> dict[str, Any]:
        """Size the thread pools where the framework allows it at run time; notes on what was not applied."""
        return {}

    def thread_settings(self) -> dict[str, Any]:
        """The thread pools the framework actually uses (not the requested numbers)."""
        raise NotImplementedError

    def process_environment(self, config: TrainConfig) -> dict[str, str]:
        """Variables the framework reads at import or start-up, so a worker must have them from its start."""
        return {}

    def recorded_environment(self) -> dict[str, str]:
        """Start-up variables worth recording in a run's settings."""
        return {}

    def gpu_name(self) -> str | None:
        """The name of the GPU the framework would use by default, or None."""
        raise NotImplementedError

    def no_gpu_reason(self) -> str:
        """Why ``--device cuda`` cannot run: the framework sees no GPU."""
        return f"CUDA requested but {self.title} sees no GPU"

    def sync(self, on_gpu: bool, values: Any = None) -> None:
        """Block until queued device work is done (``values``: the arrays whose computation to wait for)."""

    def peak_device_memory_mb(self, device: Any = None) -> float | None:
        """Peak GPU memory in MiB on ``device`` (None: the default one), as the framework's allocator saw it."""
        raise NotImplementedError

    def mode(self, compiled: bool) -> str:
        """The execution mode as recorded in settings, compiled or not."""
        raise NotImplementedError


#: TensorFlow's switch for its oneDNN kernels, read at import: docs/decisions.md#tensorflow-onednn.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


class TensorFlow(Framework):
    """TensorFlow fixes its thread pools when its runtime starts and queues GPU work asynchronously."""

    name = "tensorflow"
    distributions = TF_DISTRIBUTIONS
    title = "TensorFlow"

    def process_environment(self, config: TrainConfig) -> dict[str, str]:
        """oneDNN on for an x86 CPU (TF turns it on by itself only on AVX-512-class ones), unless already set."""
        if ONEDNN_ENV in os.environ or platform.machine().lower() not in ("x86_64", "amd64"):
            return {}
        return {ONEDNN_ENV: "1"}

    def recorded_environment(self) -> dict[str, str]:
        return {ONEDNN_ENV: os.environ.get(ONEDNN_ENV, "unset (TensorFlow's own default)")}

    def apply_threads(self, threads: int) -> dict[str, Any]:
        import tensorflow as tf

        notes: dict[str, Any] = {}
        for what, setter in (
            ("intra_op", tf.config.threading.set_intra_op_parallelism_threads),
            ("inter_op", tf.config.threading.set_inter_op_parallelism_threads),
        ):
            try:
                setter(threads)
            except RuntimeError as exc:  # "... cannot be modified after initialization"
                notes[f"{what}_threads_not_applied"] = str(exc).splitlines()[0]
        return notes

    def thread_settings(self) -> dict[str, Any]:
        import tensorflow as tf

        cores = available_cores()  # 0 means TF's default: one thread per schedulable core
        return {
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or cores,
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or cores,
        }

    def gpu_name(self) -> str | None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        name: str = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return name

    def no_gpu_reason(self) -> str:
        return "CUDA requested but TensorFlow sees no GPU (tensorflow-cpu, or no CUDA build)"

    def sync(self, on_gpu: bool, values: Any = None) -> None:
        if on_gpu:  # eager CPU execution is synchronous
            import tensorflow as tf

            tf.test.experimental.sync_devices()

    def peak_device_memory_mb(self, device: Any = None) -> float | None:
        import tensorflow as tf

        peak = tf.config.experimental.get_memory_info(device or "GPU:0").get("peak")
        return None if peak is None else float(peak) / 2**20

    def mode(self, compiled: bool) -> str:
        return "graph + XLA" if compiled else "graph (tf.function)"


class Torch(Framework):
    """PyTorch sets its pools at any time (inter-op only before parallel work) and has a CUDA allocator."""

    name = "torch"
    distributions = ("torch",)
    title = "PyTorch"

    def apply_threads(self, threads: int) -> dict[str, Any]:
        import torch

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
            torch.set_num_interop_threads(threads)
        return {}

    def thread_settings(self) -> dict[str, Any]:
        import torch

        return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads()}

    def gpu_name(self) -> str | None:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None

    def no_gpu_reason(self) -> str:
        return "CUDA requested but torch.cuda.is_available() is False"

    def sync(self, on_gpu: bool, values: Any = None) -> None:
        if on_gpu:
            import torch

            torch.cuda.synchronize()

    def peak_device_memory_mb(self, device: Any = None) -> float | None:
        import torch

        return float(torch.cuda.max_memory_allocated(device)) / 2**20

    def mode(self, compiled: bool) -> str:
        return "torch.compile" if compiled else "eager"


class Jax(Framework):
    """jax sizes XLA's pool and picks its platforms when its client starts: from the environment only."""

    name = "jax"
    distributions = ("jax",)
    title = "jax"

    def apply_threads(self, threads: int) -> dict[str, Any]:
        if os.environ.get(PJRT_THREADS_ENV) == str(threads):
            return {}
        why = f"jax sizes its pool from ${PJRT_THREADS_ENV} at start; set it before the process starts"
        return {"threads_not_applied": why}

    def thread_settings(self) -> dict[str, Any]:
        # XLA runs the operations of one compiled step on a single pool of this size.
        found = [name for name in (PJRT_THREADS_ENV, PJRT_FALLBACK_ENV) if os.environ.get(name, "").isdigit()]
        variable = found[0] if found else None
        threads = int(os.environ[variable]) if variable else available_cores()
        return {
            "intra_op_threads": threads,
            "inter_op_threads": threads,
            "threads_from": f"{variable}={threads}" if variable else "schedulable CPUs (XLA default)",
        }

    def process_environment(self, config: TrainConfig) -> dict[str, str]:
        """Preallocation off (comparable GPU memory), CPU only when asked, the pool size and simulated devices."""
        from cnnbench.distributed import with_forced_host_devices

        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # allocate as needed, like the other frameworks
        if config.device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        if config.threads:
            env[PJRT_THREADS_ENV] = str(config.threads)  # see docs/decisions.md#jax-threads
        if config.devices > 1:  # simulated host devices for the mesh; harmless where GPUs are used
            env["XLA_FLAGS"] = with_forced_host_devices(os.environ.get("XLA_FLAGS", ""), config.devices)
        return env

    def recorded_environment(self) -> dict[str, str]:
        return {
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "true (jax default)"),
            "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        }

    def gpu_name(self) -> str | None:
        import jax

        device = jax.devices()[0]
        return str(device.device_kind) if device.platform == "gpu" else None

    def no_gpu_reason(self) -> str:
        return "CUDA requested but jax sees no GPU (is jax[cuda] installed?)"

    def sync(self, on_gpu: bool, values: Any = None) -> None:
        import jax

        jax.block_until_ready(values)  # dispatch is asynchronous on the CPU too

    def peak_device_memory_mb(self, device: Any = None) -> float | None:
        import jax

        peak = ((device or jax.devices()[0]).memory_stats() or {}).get("peak_bytes_in_use")
        return None if peak is None else float(peak) / 2**20

    def mode(self, compiled: bool) -> str:
        return "jit (XLA)" if compiled else "eager (no jax.jit)"

    def platform(self, requested: str) -> str:
        """The jax platform for ``--device``: "gpu" for auto/cuda when jax sees one, else "cpu"."""
        import jax

        if requested in ("auto", "cuda"):
            try:
                if jax.devices("gpu"):
                    return "gpu"
            except RuntimeError:  # no GPU backend in this jaxlib, or no device
                pass
            if requested == "cuda":
                raise BackendUnavailable(self.no_gpu_reason())
        return "cpu"

    def mesh_devices(self, config: TrainConfig, where: Cluster) -> list[Any]:
        """The first ``config.devices`` local devices of every process (GPUs for auto/cuda when present)."""
        import jax

        platform = self.platform(config.device)
        local = jax.local_devices(backend=platform)
        if len(local) < config.devices:
            hint = " (XLA_FLAGS --xla_force_host_platform_device_count is set by the harness before jax starts)"
            seen = f"jax sees {len(local)}{hint if platform == 'cpu' else ''}"
            raise BackendUnavailable(f"{config.devices} {platform} devices per host requested, {seen}")
        chosen: list[Any] = []
        for process in range(where.num_hosts):
            mine = sorted((d for d in jax.devices(platform) if d.process_index == process), key=lambda d: d.id)
            chosen.extend(mine[: config.devices])
        return chosen


def mesh_label(devices: int, kind: str, platform: str, where: Cluster) -> str:
    """``"2 x cpu (simulated host devices)"``: a data-parallel session's device column."""
    simulated = " (simulated host devices)" if platform == "cpu" and not where.multi_host else ""
    return f"{devices} x {kind}{simulated}" + (f", {where.num_hosts} processes" if where.multi_host else "")


TENSORFLOW, TORCH, JAX = TensorFlow(), Torch(), Jax()
#: Each framework by module name, which is also its Keras engine name.
FRAMEWORKS: dict[str, Framework] = {framework.name: framework for framework in (TENSORFLOW, JAX, TORCH)}
