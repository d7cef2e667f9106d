"""The timing protocol: the one place that reads the clock, the same for every backend.

Every clock read follows ``session.sync()``. The first epoch (compile, JIT, autotune, cache
warm-up) is reported apart from steady state: with several epochs, steady-state throughput is
the median over epochs 2..N; with one epoch, the first ``warmup_steps`` batches are excluded.
Evaluation (after each epoch when a target accuracy is set) is never counted as training time;
with ``eval_warmup`` (the default) one untimed pass over the test set precedes the first timed one, so
evaluation throughput is a steady state too and the first pass's seconds are reported apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cnnbench import stats
from cnnbench.backend import Session
from cnnbench.config import TrainConfig
from cnnbench.preprocess import PreparedData
from cnnbench.results import DIVERGED, OK, EpochRecord

clock = time.perf_counter

#: Batches per ``train_batches`` call: small enough for a live progress bar, large enough that
#: the call overhead is negligible (measured by benchmarks/harness_overhead.py).
CHUNK_BATCHES = 50

#: progress(epoch, batches_done, batches_total)
ProgressCallback = Callable[[int, int, int], None]


def epoch_batch_indices(seed: int, epoch: int, n_train: int, batch_size: int) -> np.ndarray:
    """The batch order of one epoch: a permutation drawn from (seed, epoch) only, so every
    framework trains on exactly the same batches. A final partial batch is dropped."""
    n_batches = n_train // batch_size
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[: n_batches * batch_size].reshape(n_batches, batch_size).astype(np.int64)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


#: Runaway loss counts as divergence: the batch loss stayed above RUNAWAY_FACTOR times the initial
#: loss for RUNAWAY_BATCHES consecutive batches (the rule and its reasons: docs/decisions.md).
RUNAWAY_FACTOR = 100.0
RUNAWAY_BATCHES = 20
#: The initial loss is the first batch's (from the harness's initial weights, before any update),
#: floored here so that a lucky near-zero first batch cannot make ordinary noise look like a runaway.
RUNAWAY_MIN_REFERENCE = 1.0


class RunawayWatch:
    """Finds a runaway loss across epochs: finite, but far above where training started and staying there."""

    def __init__(self) -> None:
        self.reference: float | None = None
        self.streak = 0
        self.streak_start: tuple[int, int] | None = None
        self.peak = 0.0

    def update(self, epoch: int, losses: np.ndarray) -> str | None:
        """Feed one epoch's batch losses; returns why training diverged, or None."""
        for index, loss in enumerate(losses):
            if self.reference is None:
                self.reference = max(float(loss), RUNAWAY_MIN_REFERENCE)
            if loss > RUNAWAY_FACTOR * self.reference:
                if self.streak == 0:
                    self.streak_start, self.peak = (epoch, index + 1), 0.0
                self.streak += 1
                self.peak = max(self.peak, float(loss))
                if self.streak >= RUNAWAY_BATCHES and self.streak_start is not None:
                    start_epoch, start_batch = self.streak_start
                    return (
                        f"runaway loss: above {RUNAWAY_FACTOR:g}x the initial loss ({self.reference:.3g}) for "
                        f"{RUNAWAY_BATCHES} consecutive batches from epoch {start_epoch}, batch {start_batch} "
                        f"(peak {self.peak:.3g})"
                    )
            else:
                self.streak = 0
        return None


@dataclass
class TimingOutcome:
    status: str = OK
    reason: str = ""
    epochs: list[EpochRecord] = field(default_factory=list)
    first_epoch_s: float | None = None
    train_s: float = 0.0
    eval_s: float | None = None
    #: Seconds of the untimed first evaluation pass (``TrainConfig.eval_warmup``); None without one.
    eval_warmup_s: float | None = None
    train_throughput: float | None = None
    train_throughput_samples: list[float] = field(default_factory=list)
    eval_throughput: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    time_to_accuracy_s: float | None = None


def _train_chunks(session: Session, batches: np.ndarray, on_chunk: Callable[[int], None]) -> np.ndarray:
    losses = []
    for start in range(0, len(batches), CHUNK_BATCHES):
        chunk = batches[start : start + CHUNK_BATCHES]
        losses.append(np.asarray(session.train_batches(chunk), dtype=np.float64))
        on_chunk(len(chunk))
    return np.concatenate(losses) if losses else np.zeros(0)


def _timed_evaluation(session: Session, config: TrainConfig) -> tuple[float, float, float]:
    session.sync()
    start = clock()
    loss, accuracy = session.evaluate(config.eval_batch_size)
    session.sync()
    return loss, accuracy, clock() - start


def _evaluate(session: Session, config: TrainConfig, outcome: TimingOutcome) -> float:
    """The test loss, accuracy and timed seconds into ``outcome``, after the warm-up pass on the first call."""
    if config.eval_warmup and outcome.eval_warmup_s is None:
        outcome.eval_warmup_s = _timed_evaluation(session, config)[2]
    outcome.test_loss, accuracy, outcome.eval_s = _timed_evaluation(session, config)
    outcome.test_accuracy = accuracy
    return accuracy


def measure(
    session: Session,
    data: PreparedData,
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    target_accuracy: float | None = None,
    evaluate_each_epoch: bool = False,
) -> TimingOutcome:
    """Train ``config.epochs`` epochs and evaluate, returning timings and metrics.

    With ``target_accuracy`` or ``evaluate_each_epoch`` the test set is evaluated after every
    epoch (outside the training clock) for time-to-accuracy and accuracy curves.
    """
    outcome = TimingOutcome()
    n_train, batch = len(data.y_train), config.batch_size
    if n_train < batch:
        raise ValueError(f"the training set ({n_train} images) is smaller than one batch ({batch})")
    evaluate_each_epoch = evaluate_each_epoch or target_accuracy is not None
    per_epoch_rates: list[float] = []
    single_epoch_steady: float | None = None
    runaway = RunawayWatch()

    for epoch in range(1, config.epochs + 1):
        batches = epoch_batch_indices(config.seed, epoch, n_train, batch)
        done = 0

        def on_chunk(n: int, _epoch: int = epoch, _total: int = len(batches)) -> None:
            nonlocal done
            done += n
            if progress:
                progress(_epoch, done, _total)

        warmup = min(config.warmup_steps, len(batches) - 1) if (config.epochs == 1 and epoch == 1) else 0
        session.sync()
        start = clock()
        losses = [_train_chunks(session, batches[:warmup], on_chunk)] if warmup else []
        if warmup:
            session.sync()
        after_warmup = clock()
        losses.append(_train_chunks(session, batches[warmup:], on_chunk))
        session.sync()
        end = clock()

        seconds = end - start
        epoch_losses = np.concatenate(losses)
        mean_loss = float(np.mean(epoch_losses))
        samples = len(batches) * batch
        outcome.train_s += seconds
        if epoch == 1:
            outcome.first_epoch_s = seconds
            if warmup:
                single_epoch_steady = (len(batches) - warmup) * batch / (end - after_warmup)
        else:
            per_epoch_rates.append(samples / seconds)
        record_accuracy = None
        if not math.isfinite(mean_loss) or not np.all(np.isfinite(epoch_losses)):
            bad = int(np.argmax(~np.isfinite(epoch_losses)))
            outcome.epochs.append(EpochRecord(epoch, mean_loss, seconds, samples, samples / seconds))
            outcome.status = DIVERGED
            outcome.reason = f"loss became {epoch_losses[bad]} at epoch {epoch}, batch {bad + 1}"
            break
        runaway_reason = runaway.update(epoch, epoch_losses)
        if runaway_reason:
            outcome.epochs.append(EpochRecord(epoch, mean_loss, seconds, samples, samples / seconds))
            outcome.status, outcome.reason = DIVERGED, runaway_reason
            break
        if evaluate_each_epoch:
            record_accuracy = _evaluate(session, config, outcome)
            reached = target_accuracy is not None and record_accuracy >= target_accuracy
            if reached and outcome.time_to_accuracy_s is None:
                outcome.time_to_accuracy_s = outcome.train_s
        outcome.epochs.append(EpochRecord(epoch, mean_loss, seconds, samples, samples / seconds, record_accuracy))

    if outcome.status == OK and not evaluate_each_epoch:
        _evaluate(session, config, outcome)
    if outcome.eval_s:
        outcome.eval_throughput = len(data.y_test) / outcome.eval_s
    outcome.train_throughput_samples = per_epoch_rates or ([single_epoch_steady] if single_epoch_steady else [])
    if not outcome.train_throughput_samples and outcome.epochs:  # one epoch, no warm-up excluded
        outcome.train_throughput_samples = [outcome.epochs[0].samples_per_s]
    outcome.train_throughput = stats.median(outcome.train_throughput_samples)
    return outcome
