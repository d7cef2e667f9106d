"""The timing protocol: divergence (NaN/inf, a finite loss that runs away and stays there), the evaluation warm-up."""

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


class CountingEvaluations(ScriptedSession):
    """Evaluation passes advance a fake clock, the first by 5 s (tracing, first touch), the others by 1 s."""

    def __init__(self, now: list[float]) -> None:
        super().__init__(lambda step: 2.3)
        self.now, self.passes = now, 0

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        self.now[0] += 0.1 * len(batch_indices)
        return super().train_batches(batch_indices)

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        self.passes += 1
        self.now[0] += 5.0 if self.passes == 1 else 1.0
        return 2.3, 0.1 * self.passes


def _measure_evaluations(
    monkeypatch: pytest.MonkeyPatch, each_epoch: bool = False, **config: object
) -> tuple[timing.TimingOutcome, int]:
    now = [0.0]
    monkeypatch.setattr(timing, "clock", lambda: now[0])
    session = CountingEvaluations(now)
    settings: dict = {"epochs": 2, "batch_size": 10, "warmup_steps": 0, **config}
    outcome = timing.measure(
        session,  # type: ignore[arg-type]
        _data(),
        TrainConfig(**settings),
        evaluate_each_epoch=each_epoch,
    )
    return outcome, session.passes


def test_the_first_evaluation_pass_is_a_warm_up_reported_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, passes = _measure_evaluations(monkeypatch)
    assert passes == 2
    assert outcome.eval_warmup_s == 5.0 and outcome.eval_s == 1.0  # the steady pass is the one timed
    assert outcome.eval_throughput == 10 / 1.0
    assert outcome.test_accuracy == pytest.approx(0.2)  # the metrics of the timed pass


def test_without_the_warm_up_the_first_pass_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, passes = _measure_evaluations(monkeypatch, eval_warmup=False)
    assert passes == 1 and outcome.eval_warmup_s is None and outcome.eval_s == 5.0


def test_evaluating_every_epoch_warms_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, passes = _measure_evaluations(monkeypatch, each_epoch=True, epochs=3)
    assert passes == 1 + 3 and outcome.eval_warmup_s == 5.0 and outcome.eval_s == 1.0
    assert [record.test_accuracy for record in outcome.epochs] == pytest.approx([0.2, 0.3, 0.4])
