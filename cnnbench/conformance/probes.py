"""Probes: weights and data built so that one hidden property of a backend shows in what it returns.

- the Adam probe shrinks the gradients of most tensors to a few x epsilon, where epsilon's value
  and placement decide the first update (1e-7 and 1e-8 differ by 2x there);
- the reset probe trains, calls ``set_weights`` and checks that the next step is a first step;
- the dropout probe routes one unit through the last Dropout layer into a logit, so each batch's
  loss counts the images whose unit was kept: the rate, the 1 / (1 - rate) scaling and the masks'
  independence (per image, per step, per seed) are read from the losses ``train_batches`` returns.

How each was derived, and its bounds: docs/decisions.md#conformance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnnbench import reference as ref
from cnnbench.backend import Session
from cnnbench.config import ADAM_EPSILON
from cnnbench.conformance.calls import call
from cnnbench.conformance.numerics import _judge, best_form, judge_steps, run_checks, take_steps
from cnnbench.conformance.optimizers import MIN_ELEMENTS
from cnnbench.conformance.outcome import Array, Check, Weights, structural
from cnnbench.conformance.tolerances import (
    DROPOUT_COUNT_SLACK,
    DROPOUT_SCALE_REL,
    DROPOUT_SIGMAS,
    PROBE_GRADIENT_EPSILONS,
)
from cnnbench.spec import Dense, Dropout, ModelSpec

#: Learning rate of the dropout probe's session: its weights must barely move over the probe's steps.
DROPOUT_PROBE_LEARNING_RATE = 1e-5
#: Images per probe batch and batches per probe: 1,536 kept-or-dropped draws.
DROPOUT_WIDTH, DROPOUT_ROWS = 32, 48
#: Batches compared between sessions for the seed contract.
SEED_ROWS = 8
#: The probed unit's activation and its weight into logit 0: a kept unit adds about 20 to the loss.
UNIT_VALUE, UNIT_WEIGHT = 4.0, 4.0
ROWS_PER_CALL = 8


# --- Adam's hyper-parameters ----------------------------------------------------------------------


def _last_dense_pair(spec: ModelSpec) -> tuple[Dense, Dense] | None:
    dense = [layer for layer in spec.layers if isinstance(layer, Dense)]
    return (dense[-2], dense[-1]) if len(dense) >= 2 else None


def adam_probe_weights(spec: ModelSpec, weights: Weights, x: Array, y: Array) -> Weights | None:
    """``weights`` with the hidden dense layer shrunk until the last kernel's median |gradient| is a few x epsilon."""
    pair = _last_dense_pair(spec)
    if pair is None:
        return None
    hidden, last = pair

    def shrunk(scale: float) -> Weights:
        return {
            **weights,
            f"{hidden.name}/kernel": (weights[f"{hidden.name}/kernel"] * scale).astype(np.float32),
            f"{hidden.name}/bias": (weights[f"{hidden.name}/bias"] * scale).astype(np.float32),
        }

    trial = 1e-5  # small enough that the logits are the last bias: the gradient is then linear in the scale
    _, grads, _ = ref.loss_and_gradients(spec, shrunk(trial), x, y)
    kernel = np.abs(grads[f"{last.name}/kernel"])
    if not (kernel > 0).any():
        return None
    return shrunk(trial * PROBE_GRADIENT_EPSILONS * ADAM_EPSILON / float(np.median(kernel[kernel > 0])))


def adam_probe_checks(
    session: Session,
    spec: ModelSpec,
    learning_rate: float,
    weights: Weights,
    x_train: Array,
    y_train: Array,
    rows: Array,
) -> tuple[list[Check], str]:
    """The first Adam step from the probe weights (``x_train`` loaded), where epsilon decides the update.

    One step: it fixes epsilon's value and placement and the bias correction; the betas show in the
    regular step checks. (After it the hidden layer holds +-lr, and its dead units sit so close to
    their kink that the reference's near-tie accounting would take minutes.)
    """
    first = rows[0]
    probe = adam_probe_weights(spec, weights, x_train[first], y_train[first])
    if probe is None:
        return [], "adam hyper-parameters (the spec has no hidden dense layer to shrink)"

    def body(checks: list[Check]) -> None:
        call("set_weights", session.set_weights, probe, spec=spec)
        checks.extend(
            judge_steps(
                session, spec, "adam", learning_rate, probe, x_train, y_train, rows[:1], label="adam hyper-parameters"
            )
        )

    return run_checks(spec, body), ""


# --- set_weights resets the optimizer -------------------------------------------------------------


def _median_miss(observed: Weights, predicted: Weights, learning_rate: float) -> float:
    """Median |observed - predicted| / lr over every element that moved."""
    got = np.concatenate([np.asarray(observed[name], np.float64).ravel() for name in predicted])
    want = np.concatenate([np.asarray(predicted[name], np.float64).ravel() for name in predicted])
    moved = np.abs(want) > 0
    return float(np.median(np.abs(got - want)[moved])) / learning_rate if moved.sum() >= MIN_ELEMENTS else math.inf


def reset_checks(
    session: Session,
    spec: ModelSpec,
    learning_rate: float,
    weights: Weights,
    x_train: Array,
    y_train: Array,
    rows: Array,
) -> list[Check]:
    """On a fresh Adam session (``x_train`` loaded): two steps, ``set_weights``, then a first step is expected."""
    if len(rows) < 3:
        raise ValueError("the reset check needs three batch rows")

    def body(checks: list[Check]) -> None:
        call("set_weights", session.set_weights, weights, spec=spec)
        before = take_steps(session, spec, rows[:2], x_train, y_train)
        call("set_weights", session.set_weights, weights, spec=spec)
        after = take_steps(session, spec, rows[2:3], x_train, y_train)
        form = best_form(_judge(after, "adam", learning_rate, weights))
        if form.failed() == 0:
            checks.append(
                structural(
                    "optimizer reset by set_weights",
                    True,
                    "the step after set_weights is a first Adam step from the new weights",
                )
            )
            return
        step = after[0]
        start = {name: np.asarray(value, np.float64) for name, value in weights.items()}
        carried = ref.Adam(learning_rate, epsilon_form=form.name)
        for record in before:
            carried.step(record.before, record.grads)
        counted = ref.Adam(learning_rate, epsilon_form=form.name)
        counted.t = len(before)
        fresh = ref.Adam(learning_rate, epsilon_form=form.name)
        misses = {
            "set_weights did not reset the optimizer: the step after it continues Adam's moments and step count "
            "from the steps before (reset m, v and the step count in set_weights)": carried.step(start, step.grads),
            "set_weights reset Adam's moments but not its step count (the bias correction continues from step "
            f"{len(before) + 1})": counted.step(start, step.grads),
            "the step after set_weights is not a first Adam step from the new weights (see the adam update rule "
            "checks)": fresh.step(start, step.grads),
        }
        meaning = min(misses, key=lambda text: _median_miss(step.after, misses[text], learning_rate))
        checks.append(structural("optimizer reset by set_weights", False, meaning))

    return run_checks(spec, body)


# --- dropout --------------------------------------------------------------------------------------


def dropout_probe_layers(spec: ModelSpec) -> tuple[Dense, Dropout, Dense] | None:
    """(hidden dense, last dropout, output dense) when the spec ends hidden -> dropout -> output, else None."""
    layers = list(spec.layers)
    drops = [i for i, layer in enumerate(layers) if isinstance(layer, Dropout)]
    if not drops:
        return None
    index = drops[-1]
    before = [layer for layer in layers[:index] if not isinstance(layer, Dropout)]
    after = [layer for layer in layers[index + 1 :] if not isinstance(layer, Dropout)]
    if (
        len(after) == 1
        and isinstance(after[0], Dense)
        and before
        and isinstance(before[-1], Dense)
        and before[-1].activation == "relu"
        and spec.num_classes >= 2
    ):
        dropout = layers[index]
        assert isinstance(dropout, Dropout)
        return before[-1], dropout, after[0]
    return None


def dropout_probe_weights(spec: ModelSpec) -> Weights:
    """All zero but one hidden unit (bias UNIT_VALUE, the others dead) wired to logit 0 by UNIT_WEIGHT."""
    found = dropout_probe_layers(spec)
    if found is None:
        raise ValueError("the spec does not end hidden dense -> dropout -> output dense")
    hidden, _, output = found
    weights = {name: np.zeros(shape, np.float32) for name, shape in spec.param_shapes().items()}
    weights[f"{hidden.name}/bias"][:] = -1.0
    weights[f"{hidden.name}/bias"][0] = UNIT_VALUE
    weights[f"{output.name}/kernel"][0, 0] = UNIT_WEIGHT
    return weights


def dropout_probe_data(spec: ModelSpec) -> tuple[Array, Array]:
    """Blank images, all labelled class 1: a kept unit raises logit 0 and with it the loss."""
    x = np.zeros((DROPOUT_WIDTH, *spec.input_shape), np.float32)
    return x, np.ones(DROPOUT_WIDTH, np.int64)


def dropout_losses(session: Session, spec: ModelSpec, rows: int) -> Array:
    """Set the probe weights and data in ``session``, train ``rows`` batches and return their losses."""
    x, y = dropout_probe_data(spec)
    call("set_weights", session.set_weights, dropout_probe_weights(spec), spec=spec)
    call("load_data", session.load_data, x, y, x[:2], y[:2], spec=spec)
    batches = np.tile(np.arange(DROPOUT_WIDTH, dtype=np.int64), (rows, 1))
    losses = [
        np.asarray(
            call("train_batches", session.train_batches, batches[i : i + ROWS_PER_CALL], spec=spec), dtype=np.float64
        ).ravel()
        for i in range(0, rows, ROWS_PER_CALL)
    ]
    return np.concatenate(losses)


@dataclass(frozen=True)
class DropoutReading:
    """What the probe's losses say: kept units per batch, the scale of a kept unit, or why they cannot say."""

    counts: Array | None
    scale: float | None
    problem: str = ""


def read_dropout(losses: Array, classes: int) -> DropoutReading:
    """Kept units per batch from the losses: each loss is log(classes) plus a whole number of kept-unit steps."""
    dropped = math.log(classes)
    excess = np.asarray(losses, np.float64) - dropped
    if not np.all(np.isfinite(excess)):
        return DropoutReading(None, None, f"train_batches returned non-finite losses {losses.tolist()[:8]}")
    top = float(excess.max())
    no_dropout = math.log(math.exp(UNIT_VALUE * UNIT_WEIGHT) + classes - 1) - dropped
    if top <= 1e-3:
        return DropoutReading(None, None, "the probed unit was dropped in every image of every batch")
    if float(np.ptp(excess)) <= 1e-3 * top:
        if abs(top - no_dropout) <= 1e-3 * no_dropout:
            return DropoutReading(None, None, "no unit was ever dropped: dropout is not applied in train_batches")
        return DropoutReading(
            None,
            None,
            "every batch kept the same number of units: the dropout mask repeats every "
            "step (advance the dropout RNG at every step)",
        )
    if np.all((excess <= 1e-3 * top) | (excess >= top * (1 - 1e-3))):
        return DropoutReading(
            None,
            None,
            "each batch kept the probed unit in all of its images or in none: one "
            "dropout mask is shared by the whole batch (draw one per image)",
        )
    # The largest step that makes every loss a whole number of steps; the slack is a fraction of the
    # smallest possible step (top / width), so a coarse candidate cannot pass by rounding.
    for kept_max in range(1, DROPOUT_WIDTH + 1):
        counts = excess * kept_max / top
        if np.all(np.abs(counts - np.round(counts)) <= DROPOUT_COUNT_SLACK * kept_max / DROPOUT_WIDTH):
            step = top / kept_max  # the loss added by one more kept image
            kept_loss = step * DROPOUT_WIDTH + dropped
            logit = math.log(max(math.exp(min(kept_loss, 700.0)) - (classes - 1), 1e-300))
            return DropoutReading(np.round(counts), logit / (UNIT_VALUE * UNIT_WEIGHT))
    return DropoutReading(
        None,
        None,
        "the batch losses are not whole numbers of kept units: dropout is not an independent keep-or-drop of each unit",
    )


def dropout_checks(losses: Array, spec: ModelSpec) -> list[Check]:
    """Rate, inverted scaling and mask independence of the last Dropout layer from the probe's losses."""
    found = dropout_probe_layers(spec)
    assert found is not None
    rate = found[1].rate
    reading = read_dropout(losses, spec.num_classes)
    if reading.counts is None or reading.scale is None:
        return [structural("dropout masks", False, reading.problem)]
    draws = reading.counts.size * DROPOUT_WIDTH
    kept = float(reading.counts.sum()) / draws
    keep = 1 - rate
    spread = DROPOUT_SIGMAS * math.sqrt(keep * (1 - keep) / draws)
    rate_check = Check(
        "dropout rate",
        abs(kept - keep) <= spread,
        abs(kept - keep),
        None,
        spread,
        abs(kept - keep) / spread if spread else math.inf,
        f"kept fraction within {DROPOUT_SIGMAS:g} binomial sigmas of 1 - rate ({draws} draws)",
        f"{found[1].name}: kept {kept:.3f} of units, 1 - rate = {keep:g}",
    )
    if not rate_check.passed:
        swapped = " (rate and keep probability swapped?)" if abs(kept - rate) <= spread else ""
        rate_check.detail = (
            f"{found[1].name} drops {1 - kept:.3f} of units, the spec's rate is {rate:g}{swapped}: "
            "use Dropout.rate from the spec"
        )
    inverted = 1 / keep
    miss = abs(reading.scale / inverted - 1)
    scale_check = Check(
        "dropout scaling",
        miss <= DROPOUT_SCALE_REL,
        abs(reading.scale - inverted),
        None,
        DROPOUT_SCALE_REL * inverted,
        miss / DROPOUT_SCALE_REL,
        f"kept units x 1/(1 - rate), within {DROPOUT_SCALE_REL:g} relative",
        f"kept units scaled by {reading.scale:.4g}, 1/(1 - rate) = {inverted:.4g}",
    )
    if not scale_check.passed:
        if abs(reading.scale - 1) <= DROPOUT_SCALE_REL:
            scale_check.detail = (
                f"kept units are not scaled by 1/(1 - rate) = {inverted:.4g} (inverted dropout): "
                "training sees smaller activations than inference"
            )
        else:
            scale_check.detail = (
                f"kept units are scaled by {reading.scale:.4g}; inverted dropout scales them by "
                f"1/(1 - rate) = {inverted:.4g}"
            )
    varied = len(set(reading.counts.tolist())) > 1
    masks = structural(
        "dropout masks",
        varied,
        "a new mask per image and per step"
        if varied
        else "every batch kept the same number of units: the mask repeats every step",
    )
    return [rate_check, scale_check, masks]


def dropout_seed_checks(counts_by_seed: list[tuple[int, Array | None]]) -> list[Check]:
    """Fresh sessions: the same seed draws the same masks, another seed other masks (the probe's counts)."""
    (seed_a, first), (_, second), (seed_b, other) = counts_by_seed
    if first is None or second is None or other is None:
        return [structural("dropout follows config.seed", False, "the dropout probe could not read the masks")]
    if not np.array_equal(first, second):
        return [
            structural(
                "dropout follows config.seed",
                False,
                f"two fresh sessions with seed {seed_a} drew different dropout masks: seed the dropout RNG "
                "from config.seed (not the clock or a global RNG)",
            )
        ]
    if np.array_equal(first, other):
        return [
            structural(
                "dropout follows config.seed",
                False,
                f"seeds {seed_a} and {seed_b} drew the same dropout masks: the dropout RNG must be seeded "
                "from config.seed",
            )
        ]
    return [structural("dropout follows config.seed", True, f"seed {seed_a} twice: same masks; seed {seed_b}: others")]
