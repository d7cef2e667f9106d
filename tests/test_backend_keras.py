"""The Keras backend: the conformance kit, then what is specific to it (engines, environment, settings).

Keras fixes its engine when it is first imported, so the kit runs on the tensorflow engine in this
process, and the jax and torch engines each go through ``cnnbench check`` (the same conformance
engine, in a worker started with the environment ``KerasBackend.process_environment`` gives).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench.backend import missing_module_reason
from cnnbench.cli import cli
from cnnbench.config import TrainConfig
from cnnbench.errors import BackendUnavailable, UsageError
from cnnbench.frameworks import TENSORFLOW
from cnnbench.initializers import initial_weights
from cnnbench.spec import MNIST_LENET
from cnnbench.testing import BackendConformance
from cnnbench_keras.backend import KerasBackend

BACKEND = KerasBackend()
CONFIG = TrainConfig(threads=2)

pytestmark = pytest.mark.skipif(BACKEND.unavailable_reason() is not None, reason=str(BACKEND.unavailable_reason()))


class TestKerasConformance(BackendConformance):
    backend = KerasBackend()
    variant = "tensorflow"


@pytest.fixture(scope="module")
def keras_tf():
    """keras on its tensorflow engine in this process (KERAS_BACKEND is read once, at import)."""
    if "keras" not in sys.modules:
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "tensorflow"
        try:
            import keras
        finally:
            if previous is None:
                del os.environ["KERAS_BACKEND"]
            else:
                os.environ["KERAS_BACKEND"] = previous
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"keras was imported on {keras.backend.backend()!r} before this module")
    return keras


@pytest.fixture
def session_for(keras_tf):
    sessions = []

    def make(spec, config=CONFIG):
        session = BACKEND.create_session(spec, config, "tensorflow")
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


# --- Without keras: selection of engines, environment, versions -------------------------------


def test_process_environment_selects_the_engine_and_its_threads():
    assert BACKEND.variants[0] == "tensorflow"
    for engine in BACKEND.variants:
        assert BACKEND.process_environment(engine, TrainConfig())["KERAS_BACKEND"] == engine
    assert BACKEND.process_environment(None, TrainConfig())["KERAS_BACKEND"] == "tensorflow"
    assert BACKEND.process_environment("jax", TrainConfig(threads=3))["PJRT_NPROC"] == "3"
    assert BACKEND.process_environment("torch", TrainConfig(device="cpu"))["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(UsageError, match="unknown Keras engine"):
        BACKEND.process_environment("numpy", TrainConfig())
    with pytest.raises(UsageError, match=r"keras\.jit_compile"):
        BACKEND.process_environment("tensorflow", TrainConfig(backend_options={"keras.jit_compile": "maybe"}))


def test_framework_version_names_keras_and_the_engine():
    for engine in BACKEND.variants:
        version = BACKEND.framework_version(engine)
        assert version.startswith(BACKEND.framework_version().split(" ")[0]) and f"({engine} " in version


# --- The tensorflow engine, in this process ---------------------------------------------------


def test_weights_round_trip_and_shape_errors(session_for):
    session = session_for(MNIST_LENET)
    weights = initial_weights(MNIST_LENET, "normal", seed=3)
    session.set_weights(weights)
    for name, value in session.get_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    weights["dense1/kernel"] = weights["dense1/kernel"].T
    with pytest.raises(ValueError, match="dense1/kernel"):
        session.set_weights(weights)


def test_settings_record_engine_threads_and_jit_compile(session_for):
    settings = session_for(MNIST_LENET).settings()
    assert settings["engine"] == "tensorflow" and settings["layout"] == "NHWC"
    assert settings["jit_compile"] is False and settings["mode"] == "graph (tf.function)"
    assert settings["intra_op_threads"] >= 1 and settings["precision"] == "float32"
    xla = session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "true"})).settings()
    assert xla["jit_compile"] is True and xla["mode"] == "graph + XLA" and xla["jit_compile_requested"] == "true"
    with pytest.raises(UsageError, match=r"keras\.jit_compile"):
        session_for(MNIST_LENET, TrainConfig(backend_options={"keras.jit_compile": "fast"}))


def test_cuda_request_without_a_gpu_is_unavailable(keras_tf):
    if TENSORFLOW.gpu_name() is not None:
        pytest.skip("a GPU is visible to TensorFlow")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        BACKEND.create_session(MNIST_LENET, TrainConfig(device="cuda"), "tensorflow")


# --- The jax and torch engines, each in its own worker ------------------------------------------


@pytest.mark.parametrize("engine", ["jax", "torch"])
def test_engine_passes_the_conformance_engine_in_its_own_worker(tmp_path, engine):
    if reason := missing_module_reason(engine, extra=engine):
        pytest.skip(reason)
    out = tmp_path / "check.json"
    result = CliRunner().invoke(
        cli,
        [
            "check",
            "-f",
            f"keras:{engine}",
            "--dataset",
            "cifar10",
            "--steps",
            "2",
            "--threads",
            "2",
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    (row,) = json.loads(out.read_text())
    assert result.exit_code == 0 and row["status"] == "PASS", row["message"]
    probes = {"adam hyper-parameters: update rule", "optimizer reset by set_weights", "dropout scaling"}
    assert probes <= set(row["checks"])
    settings = row["settings"]
    assert settings["engine"] == engine and settings["layout"] == "NHWC"
    assert settings["mode"] == {"jax": "jit (XLA)", "torch": "eager"}[engine]
    assert settings["intra_op_threads"] == 2
