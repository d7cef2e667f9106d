"""The conformance kit itself: it fails broken backends with messages that say what is wrong.

The backends in kit_bad_backends.py are PyTorch with one fault each. The checks are called
directly (fast), and once through pytest (pytester) as a plugin author would run them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnbench.backend import missing_module_reason

pytestmark = pytest.mark.skipif(missing_module_reason("torch", extra="torch") is not None, reason="the bad backends are built on the PyTorch backend")
pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def bad():
    import kit_bad_backends

    return kit_bad_backends


@pytest.fixture
def kit_for():
    from cnnbench.testing import ConformanceKit

    kits = []

    def make(backend):
        kit = ConformanceKit(backend).__enter__()
        kits.append(kit)
        return kit

    yield make
    for kit in kits:
        kit.close()


def test_wrong_parameter_count_names_the_count_and_the_shape(bad, kit_for):
    from cnnbench.testing import ConformanceError, check_parameter_count

    trial = kit_for(bad.WrongParameterCountBackend()).built("mnist")
    with pytest.raises(ConformanceError) as caught:
        check_parameter_count(trial.spec, trial.created_weights, "after create_session")
    message = str(caught.value)
    assert "parameter count 3,255,914 expected" in message
    assert "backend has 3,256,955" in message  # conv1 +1 filter: +17, conv2 +1 input channel: +1,024
    assert "conv1/kernel shape (4, 4, 1, 33) != (4, 4, 1, 32)" in message
    assert "conv2/kernel shape (4, 4, 33, 64) != (4, 4, 32, 64)" in message


def test_shuffling_backend_fails_the_batch_order_checks(bad, kit_for):
    from cnnbench.testing import ConformanceError, check_batch_order, check_losses_belong_to_rows

    trial = kit_for(bad.BatchOrderIgnoringBackend()).trial("mnist")
    with pytest.raises(ConformanceError, match=r"does not run the rows in the given order: after one call with 8 rows"):
        check_batch_order(trial)
    with pytest.raises(ConformanceError, match=r"trained row [1-7] of batch_indices first .* rows must run in the given order"):
        check_losses_belong_to_rows(trial)


def test_backend_ignoring_the_indices_is_told_to_use_them(bad, kit_for):
    from cnnbench.testing import ConformanceError, check_losses_belong_to_rows

    trial = kit_for(bad.IndexIgnoringBackend()).trial("mnist")
    with pytest.raises(ConformanceError, match=re.escape("is not the loss of the images in batch_indices[0]")):
        check_losses_belong_to_rows(trial)


def test_wrong_flatten_order_is_diagnosed(bad, kit_for):
    from cnnbench.testing import ConformanceError, check_predict_matches_spec

    trial = kit_for(bad.WrongFlattenBackend()).trial("mnist")
    with pytest.raises(ConformanceError, match=re.escape("the backend flattens in (C, H, W) order")):
        check_predict_matches_spec(trial)


def test_backend_defined_in_a_test_module_runs_in_the_worker(bad, tmp_path):
    """Not registered through any entry point: the kit generates a plugin module for the worker."""
    from cnnbench.testing import check_results_serialise, worker_environment

    backend = bad.BatchOrderIgnoringBackend()  # wrong training order, but it runs and serialises
    env = worker_environment(backend, tmp_path)
    module = env["CNNBENCH_PLUGIN_MODULES"].split(",")[-1]
    assert (tmp_path / f"{module}.py").is_file()
    check_results_serialise(backend, None, tmp_path, timeout_s=300)
    assert list(tmp_path.glob("*.json")), "no result file was written"


def test_a_taken_name_is_refused(tmp_path):
    from cnnbench.testing import ConformanceError, worker_environment
    from cnnbench_torch.backend import TorchBackend

    class Impostor(TorchBackend):
        pass

    with pytest.raises(ConformanceError, match="'torch' is already registered by plugin 'torch'"):
        worker_environment(Impostor(), tmp_path)


def test_plugin_author_view_through_pytest(pytester):
    """What an author sees: failures naming the fault, and a skip with the reason when unavailable."""
    pytester.syspathinsert(HERE)
    pytester.makepyfile(
        test_mine="""
        from cnnbench.testing import BackendConformance
        from kit_bad_backends import MissingFrameworkBackend, WrongParameterCountBackend

        class TestWrongCount(BackendConformance):
            backend = WrongParameterCountBackend()

        class TestMissing(BackendConformance):
            backend = MissingFrameworkBackend()
        """
    )
    result = pytester.runpytest("-q", "-rs", "-p", "no:cacheprovider", "-k", "test_parameter_count or test_identity")
    result.assert_outcomes(passed=1, failed=2, skipped=3)
    result.stdout.fnmatch_lines([
        "*ConformanceError: parameter count 3,255,914 expected (lenet, 8 arrays), backend has 3,256,955*conv1/kernel shape (4, 4, 1, 33) != (4, 4, 1, 32)*",
        "*bad-missing unavailable: moonlib is not installed (pip install moonlib)*",
    ])
