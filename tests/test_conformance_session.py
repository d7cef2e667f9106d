"""The Session template: bad input is refused once, in the core, the same way for every backend."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnbench.backend import Session, checked_batch_indices, missing_module_reason
from cnnbench.config import TrainConfig
from cnnbench.errors import BackendError
from cnnbench.spec import lenet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cnnbench-numpy"
SESSION_MODULES = [
    "cnnbench_torch.backend",
    "cnnbench_torch.ddp",
    "cnnbench_tf.backend",
    "cnnbench_tf.mirrored",
    "cnnbench_jax.backend",
    "cnnbench_jax.sharded",
    "cnnbench_keras.backend",
    "cnnbench_keras.data_parallel",
    "cnnbench_numpy.backend",
]


@pytest.fixture(scope="module")
def numpy_session_class() -> type[Session]:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    from cnnbench_numpy.backend import NumpySession

    return NumpySession


@pytest.mark.parametrize("module", SESSION_MODULES)
def test_every_session_implements_the_hooks_and_keeps_the_templates(module, numpy_session_class):
    """Importing a plugin module does not import its framework, so this runs everywhere."""
    sessions = [
        cls
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass)
        if issubclass(cls, Session) and cls is not Session and cls.__module__ == module
    ]
    assert sessions, f"no Session subclass in {module}"
    for cls in sessions:
        assert "train_batches" not in vars(cls) and "load_data" not in vars(cls), f"{cls.__name__} overrides a template"
        assert not getattr(cls, "__abstractmethods__", None), (
            f"{cls.__name__} leaves {cls.__abstractmethods__} abstract"
        )


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.zeros((1, 4), np.float32), "must be integers, got dtype float32"),
        (np.zeros((1, 4), bool), "must be integers, got dtype bool"),
        (np.zeros(4, np.int64), "must be 2-D [n_batches, batch_size], got shape (4,)"),
        (np.zeros((2, 2, 2), np.int64), "got shape (2, 2, 2)"),
        (np.zeros((0, 4), np.int64), "is empty (shape (0, 4))"),
        (np.zeros((3, 0), np.int64), "is empty (shape (3, 0))"),
        (np.array([[0, 10]]), "10 is not in [0, 10)"),
        (np.array([[-1, 0]]), "-1 is not in [0, 10)"),
    ],
)
def test_bad_batch_indices_are_refused_with_one_message(numpy_session_class, indices, message):
    session = numpy_session_class(lenet((28, 28, 1)), TrainConfig(threads=1))
    x, y = np.zeros((10, 28, 28, 1), np.float32), np.zeros(10, np.int64)
    with pytest.raises(BackendError, match="called before load_data"):
        session.train_batches(np.zeros((1, 2), np.int64))
    session.load_data(x, y, x[:2], y[:2])
    with pytest.raises(BackendError, match=re.escape(message)):
        session.train_batches(indices)
    assert session.train_batches(np.array([[0, 9]], dtype=np.int32)).shape == (1,)


def test_good_indices_arrive_as_contiguous_int64():
    rows = checked_batch_indices(np.arange(12, dtype=np.uint16).reshape(4, 3)[:, ::-1], 12)
    assert rows.dtype == np.int64 and rows.flags.c_contiguous and rows[0].tolist() == [2, 1, 0]


def test_load_data_refuses_mismatched_arrays(numpy_session_class):
    session = numpy_session_class(lenet((28, 28, 1)), TrainConfig(threads=1))
    x = np.zeros((10, 28, 28, 1), np.float32)
    with pytest.raises(BackendError, match=r"training images must be \[n, H, W, C\] and labels \[n\], got shapes"):
        session.load_data(x, np.zeros(9, np.int64), x, np.zeros(10, np.int64))
    with pytest.raises(BackendError, match="test images"):
        session.load_data(x, np.zeros(10, np.int64), x[0], np.zeros(10, np.int64))


def test_missing_module_reason_gives_third_parties_their_own_hint():
    absent = "cnnbench_no_such_module"
    assert missing_module_reason("numpy", hint="pip install numpy") is None
    assert (
        missing_module_reason(absent, hint="pip install paddlepaddle")
        == f"{absent} is not installed (pip install paddlepaddle)"
    )
    assert missing_module_reason(absent) == f"{absent} is not installed (pip install {absent})"
    assert missing_module_reason(absent, extra="torch") == f"{absent} is not installed (pip install 'cnnbench[torch]')"
    with pytest.raises(TypeError, match="not both"):
        missing_module_reason(absent, extra="torch", hint="pip install x")
