"""Framework facts are written once: the native backends and the Keras engines read the same ones, and
reading them needs no framework installed (every test here runs on the core dependencies alone)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnnbench import frameworks
from cnnbench.config import TrainConfig
from cnnbench.distributed import Cluster, SharedLifetime
from cnnbench.frameworks import JAX, PJRT_THREADS_ENV, TENSORFLOW, available_cores, mesh_label
from cnnbench_jax.backend import JaxBackend
from cnnbench_keras.backend import KerasBackend
from cnnbench_tf.backend import TFRawBackend
from cnnbench_torch.backend import TorchBackend


def test_importing_the_facts_and_the_backends_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import cnnbench.frameworks, cnnbench_tf.backend, cnnbench_jax.backend, cnnbench_torch.backend\n"
        "import cnnbench_keras.backend, cnnbench_keras.data_parallel, cnnbench_jax.sharded\n"
        "print(sorted(m for m in ('tensorflow', 'torch', 'jax', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_available_cores_are_the_schedulable_ones() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected


def test_every_tensorflow_distribution_identifies_tensorflow_for_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"tf-nightly-cpu": "2.99.0.dev1", "keras": "3.99.0", "torch": "9.9.9", "jax": "0.99.0"}

    def fake_version(*names: str) -> str | None:
        return next((installed[name] for name in names if name in installed), None)

    monkeypatch.setattr(frameworks, "distribution_version", fake_version)
    assert "tf-nightly-cpu" in TENSORFLOW.distributions
    assert TFRawBackend().framework_version() == "2.99.0.dev1"
    assert KerasBackend().framework_version("tensorflow").endswith("(tensorflow 2.99.0.dev1)")
    assert TorchBackend().framework_version() == "9.9.9"
    assert KerasBackend().framework_version("torch").endswith("(torch 9.9.9)")
    assert JaxBackend().framework_version() == "0.99.0"


@pytest.mark.parametrize(
    ("environ", "threads", "source"),
    [
        ({PJRT_THREADS_ENV: "3", "NPROC": "5"}, 3, f"{PJRT_THREADS_ENV}=3"),
        ({"NPROC": "5"}, 5, "NPROC=5"),
        ({PJRT_THREADS_ENV: "many"}, None, "schedulable CPUs (XLA default)"),
    ],
)
def test_jax_threads_come_from_pjrt_nproc_then_nproc_then_the_cores(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], threads: int | None, source: str
) -> None:
    for name in (PJRT_THREADS_ENV, "NPROC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = JAX.thread_settings()
    assert settings["intra_op_threads"] == settings["inter_op_threads"] == (threads or available_cores())
    assert settings["threads_from"] == source


def test_jax_threads_cannot_change_after_start_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PJRT_THREADS_ENV, "2")
    assert JAX.apply_threads(2) == {}
    assert "PJRT_NPROC" in JAX.apply_threads(1)["threads_not_applied"]


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(device="cpu", threads=2),
        TrainConfig(device="cuda", devices=2),
        TrainConfig(threads=1, devices=4),
    ],
    ids=["default", "cpu-threads", "cuda-devices", "auto-threads-devices"],
)
def test_keras_on_jax_starts_jax_as_the_jax_backend_does(config: TrainConfig) -> None:
    jax_env = JaxBackend().process_environment(None, config)
    keras_env = KerasBackend().process_environment("jax", config)
    hidden_gpu = {"CUDA_VISIBLE_DEVICES": ""} if config.device == "cpu" else {}
    assert keras_env == {"KERAS_BACKEND": "jax", **jax_env, **hidden_gpu}
    if config.threads:
        assert jax_env[PJRT_THREADS_ENV] == str(config.threads)
    else:
        assert PJRT_THREADS_ENV not in jax_env


def test_keras_on_tensorflow_and_torch_set_no_jax_variables() -> None:
    for engine in ("tensorflow", "torch"):
        env = KerasBackend().process_environment(engine, TrainConfig(threads=2, devices=2))
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # TensorFlow's oneDNN switch (test_backend_tf.py)
        assert env == {"KERAS_BACKEND": engine}
    assert "TF_ENABLE_ONEDNN_OPTS" not in KerasBackend().process_environment("torch", TrainConfig())


def test_a_shared_resource_is_released_by_the_last_session_only() -> None:
    users = SharedLifetime()
    users.opened()
    users.opened()  # the parity check's second session in the same process
    assert users.closed() is False
    assert users.closed() is True
    assert users.open_sessions == 0


def test_mesh_labels_say_when_devices_are_simulated() -> None:
    assert mesh_label(2, "cpu", "cpu", Cluster()) == "2 x cpu (simulated host devices)"
    assert mesh_label(4, "gpu (H100)", "gpu", Cluster()) == "4 x gpu (H100)"
    two_hosts = Cluster(("10.0.0.1:1234", "10.0.0.2:1234"), 1)
    assert mesh_label(4, "cpu", "cpu", two_hosts) == "4 x cpu, 2 processes"
