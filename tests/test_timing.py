"""The timing protocol's divergence rules: NaN/inf, and a finite loss that runs away and stays there."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cnnbench import timing
from cnnbench.config import TrainConfig
from cnnbench.preprocess import PreparedData
from cnnbench.results import DIVERGED, OK


class ScriptedSession:
    """A session whose batch losses follow a script (step -> loss); nothing is trained."""

    device = "cpu"

    def __init__(self, loss_at: Callable[[int], float]) -> None:
        self.loss_at, self.step = loss_at, 0

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        losses = [self.loss_at(self.step + i) for i in range(len(batch_indices))]
        self.step += len(batch_indices)
        return np.asarray(losses)

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        return 2.3, 0.1

    def sync(self) -> None:
        pass


def _data(n_train: int = 400) -> PreparedData:
    x = np.zeros((n_train, 4, 4, 1), np.float32)
    y = np.zeros(n_train, np.int64)
    return PreparedData(x, y, x[:10], y[:10], record={})


def _measure(loss_at: Callable[[int], float], epochs: int = 2, batch_size: int = 10) -> timing.TimingOutcome:
    config = TrainConfig(epochs=epochs, batch_size=batch_size, warmup_steps=0)
    return timing.measure(ScriptedSession(loss_at), _data(), config)  # type: ignore[arg-type]


def test_a_runaway_finite_loss_is_diverged_with_the_rule_in_the_reason() -> None:
    outcome = _measure(lambda step: 2.3 if step < 5 else 2e12)  # SGD lr 10: finite, astronomically high
    assert outcome.status == DIVERGED
    assert "runaway loss" in outcome.reason and "20 consecutive batches" in outcome.reason
    assert "epoch 1, batch 6" in outcome.reason and "2e+12" in outcome.reason
    assert outcome.test_accuracy is None  # nothing evaluated on a diverged model


def test_the_streak_carries_across_epochs() -> None:
    outcome = _measure(lambda step: 2.3 if step < 30 else 1e6, epochs=3)  # 10 runaway batches in epoch 1
    assert outcome.status == DIVERGED and "from epoch 1, batch 31" in outcome.reason
    assert len(outcome.epochs) == 2


def test_a_spike_that_recovers_is_not_divergence() -> None:
    outcome = _measure(lambda step: 5e3 if step % 20 < 19 and 40 <= step < 59 else 2.3)
    assert outcome.status == OK, outcome.reason


def test_a_high_but_bounded_loss_is_not_divergence() -> None:
    outcome = _measure(lambda step: 2.3 * 50)
    assert outcome.status == OK


def test_nan_is_still_diverged() -> None:
    outcome = _measure(lambda step: float("nan") if step == 7 else 2.3)
    assert outcome.status == DIVERGED and "loss became nan at epoch 1, batch 8" in outcome.reason


@pytest.mark.parametrize("first", [0.0, 1e-6])
def test_a_near_zero_first_batch_does_not_make_noise_a_runaway(first: float) -> None:
    outcome = _measure(lambda step: first if step == 0 else 50.0)
    assert outcome.status == OK
