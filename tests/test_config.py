import math

import numpy as np
import pytest

from cnnbench.config import DataConfig, TrainConfig, override
from cnnbench.errors import UsageError
from cnnbench.initializers import initial_weights
from cnnbench.spec import MNIST_LENET


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"learning_rate": -1.0}, "learning rate"),
        ({"learning_rate": float("nan")}, "learning rate"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose from: adam, sgd"),
        ({"init": "zeros"}, "unknown init scheme"),
        ({"dropout": 1.0}, "dropout"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_training_values_are_usage_errors_naming_the_problem(changes, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**changes).validate()


def test_bad_data_values_are_usage_errors():
    with pytest.raises(UsageError, match="limit-train"):
        DataConfig(limit_train=0).validate()


def test_override_ignores_unset_flags():
    base = TrainConfig(epochs=10, optimizer="sgd")
    assert override(base, epochs=None, learning_rate=0.1) == TrainConfig(epochs=10, optimizer="sgd", learning_rate=0.1)


def test_backend_options_and_flags():
    config = TrainConfig(backend_options={"tf.xla": "true", "torch.layout": "nchw"})
    assert config.flag("tf", "xla") and not config.flag("jax", "scan")
    assert config.option("torch", "layout") == "nchw"


def test_glorot_uniform_weights_have_the_expected_statistics():
    weights = initial_weights(MNIST_LENET, "glorot-uniform", seed=0)
    kernel = weights["dense1/kernel"]
    limit = math.sqrt(6 / (3136 + 1024))
    assert kernel.dtype == np.float32 and np.abs(kernel).max() <= limit
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.01)
    assert not weights["conv1/bias"].any()
    assert (
        initial_weights(MNIST_LENET, "glorot-uniform", seed=0)["conv2/kernel"].tobytes()
        == weights["conv2/kernel"].tobytes()
    )


def test_normal_scheme_is_the_chapters_and_framework_leaves_it_to_backends():
    weights = initial_weights(MNIST_LENET, "normal", seed=1)
    assert weights["dense1/kernel"].std() == pytest.approx(0.1, rel=0.01)
    assert weights["dense1/bias"].std() == pytest.approx(1.0, rel=0.1)
    assert initial_weights(MNIST_LENET, "framework", seed=1) is None
