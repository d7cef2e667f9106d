"""The conformance engine: one set of checks and one tolerance table for every consumer.

``cnnbench check`` and the run's parity column call ``check_backend`` / ``check_session`` (through
the worker's check job); plugin authors use the kit (``cnnbench.testing``: plain ``check_*``
functions and the pytest class ``BackendConformance``); the built-in backends run that same kit.

Modules: ``tolerances`` (the table), ``outcome`` (a check's record and the summary), ``data``
(seeded inputs), ``numerics`` (parity with the float64 reference), ``probes`` (Adam's
hyper-parameters, the optimizer reset, dropout), ``optimizers`` and ``diagnose`` (naming the bug),
``threads`` (threads used against requested), ``engine`` (the checks in order), ``kit`` and
``suite`` (for plugin authors). Why each bound is what it is: docs/decisions.md#conformance.
"""

from __future__ import annotations

from cnnbench.conformance.data import DEFAULT_BATCH, DEFAULT_STEPS, CheckData, make_check_data, without_dropout
from cnnbench.conformance.engine import DEFAULT_LEARNING_RATES, check_backend, check_session
from cnnbench.conformance.numerics import evaluate_checks, forward_checks, gradient_checks, logits_checks, step_checks
from cnnbench.conformance.outcome import FAIL, PASS, UNAVAILABLE, Check, compare, structural, summarize
from cnnbench.conformance.threads import ThreadUse, measure_threads, threads_disagreement
from cnnbench.conformance.tolerances import GRAD_REL, KINK_REL, LOGITS_REL, LOSS_REL, ROUNDING, TABLE

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
    "TABLE",
    "UNAVAILABLE",
    "Check",
    "CheckData",
    "ThreadUse",
    "check_backend",
    "check_session",
    "compare",
    "evaluate_checks",
    "forward_checks",
    "gradient_checks",
    "logits_checks",
    "make_check_data",
    "measure_threads",
    "step_checks",
    "structural",
    "summarize",
    "threads_disagreement",
    "without_dropout",
]
