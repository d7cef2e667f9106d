"""The conformance kit: what every backend must pass before anyone trusts its numbers.

A plugin author opts in from a pytest file (the pattern of pandas' extension tests)::

    from cnnbench.testing import BackendConformance
    from cnnbench_mine.backend import MyBackend

    class TestMyBackend(BackendConformance):
        backend = MyBackend()          # or: backend_name = "mine" (looked up through entry points)

or overrides the class-scoped ``conformance_backend`` fixture (parametrize it to run several).
The built-in backends run this very suite (tests/test_conformance_builtin.py).

Every check is also a plain ``check_*`` function raising ``ConformanceError`` (an
``AssertionError``) whose message names the bug, so the kit works outside pytest too. The
checks, tolerances and probes are those of ``cnnbench check`` (``cnnbench.conformance``); this
module is the authors' entry point and re-exports them.
"""

from __future__ import annotations

from cnnbench.conformance.data import MODELS, N_TEST, N_TRAIN, NOISE, model_spec, synthetic_data
from cnnbench.conformance.kit import (
    ADAM_LR,
    BATCH_SIZE,
    CHUNK_ROWS,
    REQUIRED_SETTINGS,
    SGD_LR,
    WEIGHT_SEED,
    ConformanceError,
    ConformanceKit,
    ConformanceWarning,
    KitUsageError,
    Trial,
    check_accuracy,
    check_adam_hyper_parameters,
    check_batch_order,
    check_dropout_only_in_training,
    check_dropout_seed,
    check_dropout_statistics,
    check_evaluate,
    check_identity,
    check_loss_and_gradients,
    check_loss_decreases,
    check_losses_belong_to_rows,
    check_optimizer_reset,
    check_optimizer_step,
    check_output_shapes,
    check_parameter_count,
    check_predict_matches_spec,
    check_results_serialise,
    check_seed_determinism,
    check_settings,
    check_threads,
    check_weights_round_trip,
    cross_entropy,
    worker_environment,
)
from cnnbench.conformance.suite import BackendConformance, models
from cnnbench.conformance.tolerances import GRAD_REL, KINK_REL, LOGITS_REL, LOSS_REL, MIN_ACCURACY

__all__ = [
    "ADAM_LR",
    "BATCH_SIZE",
    "CHUNK_ROWS",
    "GRAD_REL",
    "KINK_REL",
    "LOGITS_REL",
    "LOSS_REL",
    "MIN_ACCURACY",
    "MODELS",
    "NOISE",
    "N_TEST",
    "N_TRAIN",
    "REQUIRED_SETTINGS",
    "SGD_LR",
    "WEIGHT_SEED",
    "BackendConformance",
    "ConformanceError",
    "ConformanceKit",
    "ConformanceWarning",
    "KitUsageError",
    "Trial",
    "check_accuracy",
    "check_adam_hyper_parameters",
    "check_batch_order",
    "check_dropout_only_in_training",
    "check_dropout_seed",
    "check_dropout_statistics",
    "check_evaluate",
    "check_identity",
    "check_loss_and_gradients",
    "check_loss_decreases",
    "check_losses_belong_to_rows",
    "check_optimizer_reset",
    "check_optimizer_step",
    "check_output_shapes",
    "check_parameter_count",
    "check_predict_matches_spec",
    "check_results_serialise",
    "check_seed_determinism",
    "check_settings",
    "check_threads",
    "check_weights_round_trip",
    "cross_entropy",
    "model_spec",
    "models",
    "synthetic_data",
    "worker_environment",
]
