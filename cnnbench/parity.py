"""Cross-framework parity, kept as a name: the engine is ``cnnbench.conformance`` (one set of checks, one table).

``cnnbench check`` and the run's parity column use it through the worker's check job; what is
compared and why: docs/decisions.md#parity-checks; the tolerances: docs/decisions.md#conformance.
"""

from __future__ import annotations

from cnnbench.conformance import (
    DEFAULT_BATCH,
    DEFAULT_LEARNING_RATES,
    DEFAULT_STEPS,
    FAIL,
    GRAD_REL,
    KINK_REL,
    LOGITS_REL,
    LOSS_REL,
    PASS,
    ROUNDING,
    UNAVAILABLE,
    Check,
    CheckData,
    check_backend,
    check_session,
    compare,
    evaluate_checks,
    forward_checks,
    make_check_data,
    step_checks,
    structural,
    summarize,
    without_dropout,
)

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_STEPS",
    "FAIL",
    "GRAD_REL",
    "KINK_REL",
    "LOGITS_REL",
    "LOSS_REL",
    "PASS",
    "ROUNDING",
    "UNAVAILABLE",
    "Check",
    "CheckData",
    "check_backend",
    "check_session",
    "compare",
    "evaluate_checks",
    "forward_checks",
    "make_check_data",
    "step_checks",
    "structural",
    "summarize",
    "without_dropout",
]
