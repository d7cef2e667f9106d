"""``BackendConformance``: the kit as a pytest class a plugin author subclasses (pandas' extension-test pattern).

Imported only by ``cnnbench.testing`` (it needs pytest); the checks themselves are in ``kit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from cnnbench.backend import Backend
from cnnbench.conformance.data import MODELS
from cnnbench.conformance.kit import (
    ConformanceError,
    ConformanceKit,
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
)
from cnnbench.conformance.tolerances import MIN_ACCURACY
from cnnbench.errors import BackendUnavailable
from cnnbench.plugins import load_registry

#: Parametrizes a test over the kit's two LeNet variants (for checks written outside ``BackendConformance``).
models = pytest.mark.parametrize("model", list(MODELS))


@contextmanager
def _skip_unavailable(kit: ConformanceKit) -> Iterator[None]:
    """A session the kit builds inside a check may find the device unusable: a skip with the reason."""
    try:
        yield
    except BackendUnavailable as exc:
        pytest.skip(f"{kit.backend.name} unavailable: {exc}")


class BackendConformance:
    """Subclass in a ``test_*.py`` file and set ``backend`` (or ``backend_name``); pytest runs the checks.

    Class attributes tune the kit; override the class-scoped fixtures ``conformance_backend``
    (and ``conformance_variant``) to supply backends another way, e.g. parametrized.
    """

    #: The backend under test (an instance). Or leave None and set ``backend_name``.
    backend: Backend | None = None
    #: A registered backend name, looked up through the ``cnnbench`` entry points.
    backend_name: str | None = None
    #: Which variant to test; None = the backend's first (default) variant.
    variant: str | None = None
    #: ``--backend-option`` values, without the ``name.`` prefix added: {"xla": "true"} -> "<name>.xla".
    backend_options: dict[str, str] = {}  # noqa: RUF012 - a class-level default authors override
    #: Accuracy a short run on synthetic data must reach.
    min_accuracy: float = MIN_ACCURACY
    #: Device for the kit's sessions ("auto", "cpu", "cuda").
    device: str = "auto"
    #: ``config.threads`` for the kit's sessions: one keeps the kit fast and repeatable on a shared
    #: machine (the kit checks correctness, not speed); None = all cores, as a real run.
    threads: int | None = 1
    #: A module that registers the backend in the worker process (only when it is not importable otherwise).
    worker_plugin_module: str | None = None
    #: Seconds the serialisation run's worker may take.
    worker_timeout_s: float = 600
    #: The models every check runs on: the chapter's LeNet variants "mnist" and "cifar", and any registered
    #: model on one of those shapes as "NAME:mnist" or "NAME:cifar" (e.g. "resnet20:cifar").
    kit_models: tuple[str, ...] = tuple(MODELS)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run each check that takes ``model`` on every model of ``kit_models``."""
        if "model" in metafunc.fixturenames:
            metafunc.parametrize("model", list(getattr(metafunc.cls, "kit_models", MODELS)))

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_backend(cls, request: Any) -> Backend:
        """The backend under test: ``backend``, or ``backend_name`` looked up through the entry points."""
        test_class = request.cls
        if test_class.backend is not None:
            return cast(Backend, test_class.backend)
        if test_class.backend_name:
            registry = load_registry()
            if test_class.backend_name not in registry.backends:
                plugins = ", ".join(
                    f"{p.name} ({p.status}{': ' + p.error if p.error else ''})" for p in registry.plugins
                )
                raise ConformanceError(
                    f"no backend named {test_class.backend_name!r} is registered; plugins found: {plugins or 'none'} "
                    "(entry points come from installed distributions: pip install -e <your plugin>)"
                )
            return cast(Backend, registry.backends[test_class.backend_name].item)
        raise ConformanceError(
            f"{test_class.__name__}: set `backend = YourBackend()` or `backend_name = '...'`, "
            "or override the conformance_backend fixture"
        )

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_variant(cls, request: Any, conformance_backend: Backend) -> str | None:
        """The variant under test (None: the backend's default)."""
        return request.cls.variant  # type: ignore[no-any-return]

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_kit(
        cls, request: Any, conformance_backend: Backend, conformance_variant: str | None
    ) -> Iterator[ConformanceKit]:
        """One kit per class: shared sessions, the backend's environment applied; skipped when unavailable."""
        reason = conformance_backend.unavailable_reason()
        if reason:
            pytest.skip(f"{conformance_backend.name} unavailable: {reason}")
        options = {f"{conformance_backend.name}.{k}": v for k, v in request.cls.backend_options.items()}
        kit = ConformanceKit(
            conformance_backend, conformance_variant, options, device=request.cls.device, threads=request.cls.threads
        )
        with kit:
            try:
                kit.import_framework()
            except BackendUnavailable as exc:
                pytest.skip(f"{conformance_backend.name} unavailable: {exc}")
            yield kit

    @staticmethod
    def _trial(kit: ConformanceKit, model: str, optimizer: str = "adam", prepared: bool = True) -> Trial:
        try:
            return kit.trial(model, optimizer) if prepared else kit.built(model, optimizer)
        except BackendUnavailable as exc:
            pytest.skip(f"{kit.backend.name} unavailable: {exc}")

    def test_identity(self, conformance_kit: ConformanceKit) -> None:
        check_identity(conformance_kit.backend, conformance_kit.variant)

    def test_parameter_count(self, conformance_kit: ConformanceKit, model: str) -> None:
        trial = self._trial(conformance_kit, model, prepared=False)
        check_parameter_count(trial.spec, trial.created_weights, "after create_session", trial.created_error)

    def test_weights_round_trip(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_weights_round_trip(self._trial(conformance_kit, model))

    def test_output_shapes(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_output_shapes(self._trial(conformance_kit, model))

    def test_predict_matches_spec(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_predict_matches_spec(self._trial(conformance_kit, model))

    def test_loss_and_gradients(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_loss_and_gradients(self._trial(conformance_kit, model))

    def test_evaluate(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_evaluate(self._trial(conformance_kit, model))

    def test_settings(self, conformance_kit: ConformanceKit) -> None:
        check_settings(self._trial(conformance_kit, "mnist"))

    def test_threads_honoured(self, conformance_kit: ConformanceKit) -> None:
        check_threads(self._trial(conformance_kit, "mnist"))

    def test_losses_belong_to_rows(self, conformance_kit: ConformanceKit) -> None:
        check_losses_belong_to_rows(self._trial(conformance_kit, "mnist"))

    def test_batch_order_honoured(self, conformance_kit: ConformanceKit) -> None:
        check_batch_order(self._trial(conformance_kit, "mnist"))

    @pytest.mark.parametrize("optimizer", ["adam", "sgd"])
    def test_optimizer_step(self, conformance_kit: ConformanceKit, optimizer: str) -> None:
        check_optimizer_step(self._trial(conformance_kit, "mnist", optimizer))

    def test_optimizer_reset_by_set_weights(self, conformance_kit: ConformanceKit) -> None:
        with _skip_unavailable(conformance_kit):
            check_optimizer_reset(conformance_kit)

    def test_adam_hyper_parameters(self, conformance_kit: ConformanceKit) -> None:
        with _skip_unavailable(conformance_kit):
            check_adam_hyper_parameters(conformance_kit)

    def test_loss_decreases(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_loss_decreases(self._trial(conformance_kit, model))

    def test_accuracy_after_short_run(self, conformance_kit: ConformanceKit, model: str) -> None:
        check_accuracy(self._trial(conformance_kit, model), type(self).min_accuracy)

    def test_dropout_only_in_training(self, conformance_kit: ConformanceKit) -> None:
        check_dropout_only_in_training(self._trial(conformance_kit, "cifar"))

    def test_dropout_rate_and_scaling(self, conformance_kit: ConformanceKit) -> None:
        with _skip_unavailable(conformance_kit):
            check_dropout_statistics(conformance_kit)

    def test_dropout_follows_the_seed(self, conformance_kit: ConformanceKit) -> None:
        with _skip_unavailable(conformance_kit):
            check_dropout_seed(conformance_kit)

    def test_same_seed_same_result(self, conformance_kit: ConformanceKit) -> None:
        if not conformance_kit.backend.deterministic:
            pytest.skip(f"{conformance_kit.backend.name} does not claim determinism (deterministic = False)")
        with _skip_unavailable(conformance_kit):
            check_seed_determinism(conformance_kit)

    def test_results_serialise(self, conformance_kit: ConformanceKit, tmp_path_factory: Any) -> None:
        cls = type(self)
        results: Path = tmp_path_factory.mktemp("results")
        check_results_serialise(
            conformance_kit.backend,
            conformance_kit.variant,
            results,
            plugin_module=cls.worker_plugin_module,
            timeout_s=cls.worker_timeout_s,
            backend_options=conformance_kit.backend_options,
            device=conformance_kit.device,
            threads=conformance_kit.threads,
        )
