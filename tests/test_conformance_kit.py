"""The conformance kit fails each classic porting bug with a message that names it.

The backends in kit_bad_backends.py are the NumPy example backend with one fault each (no
framework needed). The checks are called directly, as plain functions; the author's view through
pytest (pytester) and the worker run are tested once at the end.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnnbench import testing
from cnnbench.conformance.threads import ThreadUse

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "cnnbench-numpy"
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def bad() -> Any:
    """tests/kit_bad_backends.py, with the NumPy example importable (here and in worker processes)."""
    for folder in (EXAMPLE, HERE):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import kit_bad_backends

    return kit_bad_backends


@pytest.fixture
def kit_for() -> Iterator[Callable[..., testing.ConformanceKit]]:
    kits: list[testing.ConformanceKit] = []

    def make(backend: Any, threads: int | None = 1) -> testing.ConformanceKit:
        kit = testing.ConformanceKit(backend, threads=threads).__enter__()
        kits.append(kit)
        return kit

    yield make
    for kit in kits:
        kit.close()


def failure(check: Callable[..., Any], *args: Any) -> str:
    """The message of the ConformanceError ``check(*args)`` must raise."""
    with pytest.raises(testing.ConformanceError) as caught:
        check(*args)
    return str(caught.value)


def assert_names(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


# --- structure and layout -------------------------------------------------------------------------


def test_wrong_parameter_count_names_the_count_and_the_shape(bad, kit_for):
    trial = kit_for(bad.WrongParameterCountBackend()).built("mnist")
    message = failure(testing.check_parameter_count, trial.spec, trial.created_weights, "after create_session")
    assert_names(
        message,
        "parameter count 3,255,914 expected",
        "backend has 3,256,955",
        "conv1/kernel shape (4, 4, 1, 33) != (4, 4, 1, 32)",
        "conv2/kernel shape (4, 4, 33, 64) != (4, 4, 32, 64)",
    )


def test_valid_padding_is_named_from_the_shapes(bad, kit_for):
    trial = kit_for(bad.ValidPaddingBackend()).built("mnist")
    message = failure(testing.check_parameter_count, trial.spec, trial.created_weights, "after create_session")
    assert_names(message, "dense1/kernel shape (1024, 1024) != (3136, 1024)", "conv1 VALID instead of SAME")


@pytest.mark.parametrize(
    ("backend", "fragment"),
    [
        ("WrongFlattenBackend", "flatten after the last pool is in (C, H, W) order"),
        ("PadBeforeBackend", "SAME padding puts the odd extra row/column before"),
        ("TransposedKernelBackend", "used with height and width swapped"),
    ],
)
def test_layout_and_convention_bugs_are_named_by_the_logits(bad, kit_for, backend, fragment):
    trial = kit_for(getattr(bad, backend)()).trial("mnist")
    assert_names(failure(testing.check_predict_matches_spec, trial), "logits:", fragment)


def test_symmetric_padding_raising_is_a_kit_failure_naming_padding(bad, kit_for):
    """The framework's raw ValueError (a matmul of 2,304 against 3,136 features) becomes a named failure."""
    trial = kit_for(bad.SymmetricPaddingBackend()).trial("mnist")
    through_the_engine = failure(testing.check_predict_matches_spec, trial)
    assert_names(
        through_the_engine,
        "predict raised ValueError",
        "likely cause: the flattened size 2304",
        "symmetric padding ((k - 1) // 2 on each side",
    )
    raw = failure(testing.check_output_shapes, trial)  # the kit calls predict itself here
    assert_names(raw, "check_output_shapes: predict raised ValueError", "symmetric padding")


def test_get_weights_returning_live_arrays_is_named(bad, kit_for):
    trial = kit_for(bad.LiveWeightsBackend()).trial("mnist")
    assert_names(failure(testing.check_weights_round_trip, trial), "view of the live weights")


# --- loss, evaluate, batches ----------------------------------------------------------------------


def test_summed_loss_is_named(bad, kit_for):
    trial = kit_for(bad.SummedLossBackend()).trial("mnist")
    assert_names(failure(testing.check_loss_and_gradients, trial), "loss:", "8x the reference: the sum over the batch")


@pytest.mark.parametrize(
    ("backend", "fragment"),
    [
        ("BatchMeansBackend", "batch means are averaged, so the partial last batch (64 images) weighs as a full one"),
        ("DroppedLastBatchBackend", "the partial last batch (64 of 96 images) is dropped"),
    ],
)
def test_partial_evaluate_batches_are_named(bad, kit_for, backend, fragment):
    trial = kit_for(getattr(bad, backend)()).trial("mnist")
    assert_names(failure(testing.check_evaluate, trial), "evaluate loss (partial last batch)", fragment)


def test_shuffled_rows_fail_the_batch_order_checks(bad, kit_for):
    trial = kit_for(bad.BatchOrderIgnoringBackend()).trial("mnist")
    assert_names(
        failure(testing.check_batch_order, trial),
        "does not run the rows in the given order: after one call with 8 rows",
    )
    assert re.search(
        r"trained row [1-7] of batch_indices first .* rows must run in the given order",
        failure(testing.check_losses_belong_to_rows, trial),
    )


def test_reversed_rows_fail_the_batch_order_and_step_checks(bad, kit_for):
    kit = kit_for(bad.ReversedBatchesBackend())
    assert_names(failure(testing.check_batch_order, kit.trial("mnist")), "does not run the rows in the given order")
    assert_names(
        failure(testing.check_optimizer_step, kit.trial("mnist", "sgd")),
        "3 batches in one call",
        "rows run in another order than given",
    )


def test_ignored_indices_are_named(bad, kit_for):
    trial = kit_for(bad.IndexIgnoringBackend()).trial("mnist")
    assert_names(
        failure(testing.check_losses_belong_to_rows, trial), "is not the loss of the images in batch_indices[0]"
    )


# --- optimizers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "fragments"),
    [
        (
            "KerasEpsilonBackend",
            ["Adam epsilon is 1e-07 (Keras' default), added to sqrt(v_hat)", "ADAM_EPSILON is 1e-08"],
        ),
        ("KerasFormEpsilonBackend", ["Adam epsilon is 1e-07 (Keras' default) in Keras' form"]),
        ("NoBiasCorrectionBackend", ["no bias correction of m and v", "3.16 x lr"]),
    ],
)
def test_adam_hyper_parameters_are_named(bad, kit_for, backend, fragments):
    message = failure(testing.check_adam_hyper_parameters, kit_for(getattr(bad, backend)()))
    assert_names(message, "adam hyper-parameters: update rule:", *fragments)


def test_wrong_beta1_is_fitted_from_the_steps(bad, kit_for):
    message = failure(testing.check_optimizer_step, kit_for(bad.WrongBeta1Backend()).trial("mnist", "adam"))
    assert_names(message, "adam: update rule:", "beta1 0.5", "cnnbench's are 0.9 and 0.999")


def test_sgd_momentum_is_named(bad, kit_for):
    message = failure(testing.check_optimizer_step, kit_for(bad.MomentumBackend()).trial("mnist", "sgd"))
    assert_names(message, "sgd: update rule:", "SGD with momentum 0.9")


def test_set_weights_without_optimizer_reset_is_caught_on_its_own_session(bad, kit_for):
    """Whatever ran before: the check builds its own session."""
    kit = kit_for(bad.NoResetBackend())
    kit.trial("mnist", "adam").train(kit.trial("mnist", "adam").rows(1)[:2])  # a shared session that trained
    assert_names(
        failure(testing.check_optimizer_reset, kit),
        "set_weights did not reset the optimizer",
        "continues Adam's moments and step count",
    )


# --- dropout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "fragments"),
    [
        ("UnscaledDropoutBackend", ["dropout scaling:", "not scaled by 1/(1 - rate) = 1.25"]),
        ("HalfDropoutBackend", ["dropout rate:", "dropout3 drops 0.", "of units, the spec's rate is 0.2"]),
        ("RepeatingDropoutBackend", ["dropout masks:", "the dropout mask repeats every step"]),
        ("SharedMaskDropoutBackend", ["dropout masks:", "one dropout mask is shared by the whole batch"]),
    ],
)
def test_dropout_bugs_are_measured_and_named(bad, kit_for, backend, fragments):
    assert_names(failure(testing.check_dropout_statistics, kit_for(getattr(bad, backend)())), *fragments)


def test_unseeded_dropout_breaks_the_seed_contract(bad, kit_for):
    kit = kit_for(bad.UnseededDropoutBackend())
    assert_names(
        failure(testing.check_dropout_seed, kit),
        "dropout follows config.seed:",
        "two fresh sessions with seed 3 drew different dropout masks",
    )
    assert_names(failure(testing.check_seed_determinism, kit), "although backend.deterministic is True")


def test_dropout_left_on_in_predict_is_named(bad, kit_for):
    trial = kit_for(bad.PredictDropoutBackend()).trial("cifar")
    assert_names(
        failure(testing.check_predict_matches_spec, trial),
        "predict repeatable:",
        "dropout or other randomness is active in inference",
    )


def test_dropout_left_on_in_evaluate_is_named(bad, kit_for):
    trial = kit_for(bad.EvaluateDropoutBackend()).trial("cifar")
    assert_names(failure(testing.check_evaluate, trial), "evaluate loss (whole)", "dropout is active in evaluate")
    assert_names(failure(testing.check_dropout_only_in_training, trial), "dropout must be off in evaluate")


def test_the_correct_backend_passes_every_probe(bad, kit_for):
    """The probes are not vacuous the other way: the example backend passes them all."""
    kit = kit_for(bad.BadBackend())
    testing.check_adam_hyper_parameters(kit)
    testing.check_optimizer_reset(kit)
    testing.check_dropout_statistics(kit)
    testing.check_dropout_seed(kit)
    testing.check_optimizer_step(kit.trial("mnist", "adam"))
    testing.check_optimizer_step(kit.trial("mnist", "sgd"))
    testing.check_evaluate(kit.trial("cifar"))


# --- threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "cpu_s", "warned"), [(1, 1.0, False), (1, 3.0, True), (2, 1.0, True), (2, 1.9, False)]
)
def test_threads_used_against_requested_warns_on_disagreement(bad, kit_for, monkeypatch, requested, cpu_s, warned):
    """The meter is replaced by fixed numbers (the machine is shared): the kit warns exactly when they disagree."""
    from contextlib import contextmanager

    import cnnbench.conformance.kit as kit_module

    @contextmanager
    def fixed() -> Iterator[ThreadUse]:
        yield ThreadUse(cpu_s=cpu_s, wall_s=1.0)

    monkeypatch.setattr(kit_module, "measure_threads", fixed)
    monkeypatch.setattr("cnnbench.frameworks.available_cores", lambda: 4)
    trial = kit_for(bad.BadBackend(), threads=requested).trial("mnist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = testing.check_threads(trial)
    assert used == pytest.approx(cpu_s)
    messages = [str(w.message) for w in caught if issubclass(w.category, testing.ConformanceWarning)]
    assert bool(messages) == warned, messages
    if warned:
        assert f"asked for {requested} thread" in messages[0] and f"kept {cpu_s:.1f} busy" in messages[0]


def test_threads_are_measured_for_real(bad, kit_for):
    used = testing.check_threads(kit_for(bad.BadBackend()).trial("mnist"))
    assert used is not None and 0.2 < used < 4


# --- the worker and the author's view -------------------------------------------------------------


def test_backend_defined_in_a_test_module_runs_in_the_worker(bad, tmp_path):
    """Not registered through any entry point: the kit generates a plugin module for the worker."""
    backend = bad.BatchOrderIgnoringBackend()  # wrong training order, but it runs and serialises
    env = testing.worker_environment(backend, tmp_path)
    module = env["CNNBENCH_PLUGIN_MODULES"].split(",")[-1]
    assert (tmp_path / f"{module}.py").is_file()
    testing.check_results_serialise(backend, None, tmp_path, timeout_s=300)
    assert list(tmp_path.glob("*.json")), "no result file was written"


def test_a_taken_name_is_refused(tmp_path, numpy_backend):
    from cnnbench_numpy.backend import NumpyBackend

    class Impostor(NumpyBackend):
        pass

    with pytest.raises(testing.ConformanceError, match="'numpy' is already registered by plugin 'numpy'"):
        testing.worker_environment(Impostor(), tmp_path)


def test_plugin_author_view_through_pytest(bad, pytester):
    """What an author sees: failures naming the fault, and a skip with the reason when unavailable."""
    for folder in (HERE, EXAMPLE):
        pytester.syspathinsert(folder)
    pytester.makepyfile(
        test_mine="""
        from cnnbench.testing import BackendConformance
        from kit_bad_backends import KerasEpsilonBackend, MissingFrameworkBackend, WrongParameterCountBackend

        class TestWrongCount(BackendConformance):
            backend = WrongParameterCountBackend()

        class TestEpsilon(BackendConformance):
            backend = KerasEpsilonBackend()

        class TestMissing(BackendConformance):
            backend = MissingFrameworkBackend()
        """
    )
    result = pytester.runpytest(
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-k",
        "TestWrongCount and test_parameter_count or TestEpsilon and test_adam or TestMissing and test_identity",
    )
    result.assert_outcomes(failed=3, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*ConformanceError: parameter count 3,255,914 expected (lenet, 8 arrays), backend has 3,256,955*",
            "*ConformanceError: adam hyper-parameters: update rule: Adam epsilon is 1e-07 (Keras' default)*",
            "*bad-missing unavailable: moonlib is not installed (pip install moonlib)*",
        ]
    )
