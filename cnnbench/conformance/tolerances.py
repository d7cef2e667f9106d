"""The one tolerance table of the conformance engine: every bound any check uses, each with its reason.

The derivations and measurements are in docs/decisions.md#conformance (a test checks that every
entry of ``TABLE`` is listed there); ``cnnbench check``, the run's parity column, the kit and the
built-in backends' tests all read these names, so no check restates a number.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """One row of the table: the constant's name, its value and what it bounds."""

    name: str
    value: float
    bounds: str


#: Logits of a float32 backend against the float64 reference, x max |reference logits|.
LOGITS_REL = 1e-5
#: A mean cross-entropy (``loss_and_gradients``, ``evaluate``, each training step's loss), x |reference loss|.
LOSS_REL = 1e-5
#: Each gradient tensor, x max |reference gradient| of that tensor (plus the near-tie allowance).
GRAD_REL = 1e-4
#: A ReLU input or a max-pool window's top-two gap within this x the layer's largest value is a near-tie.
KINK_REL = 1e-5
#: Batch-norm moving statistics after a step, x max |reference tensor| (float32 batch statistics).
STATE_REL = 1e-5
#: Rounding allowed per step on a float32 weight and on its update: 4 units in the last place.
ROUNDING = 4 * 2.0**-24
#: Accuracy: one sample per near-tie of its top two logits (within 2 x LOGITS_REL x max |logits|) may flip.
ACCURACY_TIE_LOGITS = 2 * LOGITS_REL
#: Adam probe: the median |gradient| of the last dense kernel is scaled to this many x ADAM_EPSILON.
PROBE_GRADIENT_EPSILONS = 3.0
#: Dropout probe: sigmas of the binomial spread of the kept fraction allowed around 1 - rate.
DROPOUT_SIGMAS = 5.0
#: Dropout probe: how far a batch's loss may sit from a whole number of kept units, in the smallest possible step.
DROPOUT_COUNT_SLACK = 0.25
#: Dropout probe: how far the measured scale of kept units may be from 1 / (1 - rate), relative.
DROPOUT_SCALE_REL = 0.02
#: Batch order: one call with K rows may differ from K one-row calls by this fraction of the reversed order's effect.
ORDER_GAP = 0.1
#: A few optimizer steps on learnable data bring the test loss below this fraction of where it started.
LOSS_DECREASE = 0.6
#: Accuracy a short run on the kit's synthetic data reaches (the reference backends reach about 1.0).
MIN_ACCURACY = 0.9
#: Threads: process CPU time / wall time over a training call may exceed the requested threads by this much.
THREADS_SLACK = 0.5
#: Threads: below this fraction of the requested threads (2 or more) the request was not honoured.
THREADS_FLOOR = 0.6

TABLE: tuple[Tolerance, ...] = (
    Tolerance("LOGITS_REL", LOGITS_REL, "logits, scale-relative"),
    Tolerance("LOSS_REL", LOSS_REL, "every mean cross-entropy, relative"),
    Tolerance("GRAD_REL", GRAD_REL, "gradients, scale-relative per tensor, plus near-tie allowances"),
    Tolerance("KINK_REL", KINK_REL, "what counts as a ReLU or max-pool near-tie"),
    Tolerance("STATE_REL", STATE_REL, "batch-norm moving statistics after a step, scale-relative per tensor"),
    Tolerance("ROUNDING", ROUNDING, "float32 rounding of a weight and of its update, per step"),
    Tolerance("ACCURACY_TIE_LOGITS", ACCURACY_TIE_LOGITS, "top-two logit gap under which a prediction may flip"),
    Tolerance("PROBE_GRADIENT_EPSILONS", PROBE_GRADIENT_EPSILONS, "size of the Adam probe's gradients"),
    Tolerance("DROPOUT_SIGMAS", DROPOUT_SIGMAS, "kept fraction around 1 - rate, in binomial sigmas"),
    Tolerance(
        "DROPOUT_COUNT_SLACK", DROPOUT_COUNT_SLACK, "a batch's loss from whole kept units, in smallest possible steps"
    ),
    Tolerance("DROPOUT_SCALE_REL", DROPOUT_SCALE_REL, "scale of kept units against 1 / (1 - rate)"),
    Tolerance("ORDER_GAP", ORDER_GAP, "one call against one-row calls, relative to the reversed order's effect"),
    Tolerance("LOSS_DECREASE", LOSS_DECREASE, "test loss after 16 steps, relative to before"),
    Tolerance("MIN_ACCURACY", MIN_ACCURACY, "accuracy after two short epochs on synthetic data"),
    Tolerance("THREADS_SLACK", THREADS_SLACK, "threads used above threads requested before the kit warns"),
    Tolerance("THREADS_FLOOR", THREADS_FLOOR, "fraction of requested threads below which the kit warns"),
)
