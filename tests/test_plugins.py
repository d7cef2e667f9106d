"""Plugin loading: whatever a plugin does at import or registration, cnnbench keeps working and says why.

Fixture plugins live in tests/fixture_plugins/ and are loaded through $CNNBENCH_PLUGIN_MODULES
(the ``fixture_plugins`` fixture), exactly as a worker process would load them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from cnnbench import hookimpl, plugins
from cnnbench.cli import cli
from cnnbench.datasets.synthetic import Synthetic
from cnnbench.errors import PluginError, UsageError
from cnnbench.plugins import PluginRecord, Registry, load_registry

BUILTIN_BACKENDS = {"torch", "tf", "keras", "jax"}


@pytest.fixture(autouse=True)
def no_plugin_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an unfiltered plugin environment, whatever the shell has set."""
    for var in (plugins.ALLOW_ENV, plugins.BLOCK_ENV, plugins.EXTRA_MODULES_ENV):
        monkeypatch.delenv(var, raising=False)


def record_of(registry: Registry, name: str) -> PluginRecord:
    return next(p for p in registry.plugins if p.name == name)


def fixture_module(fixture_plugins: Callable[..., None], name: str) -> ModuleType:
    """A module from tests/fixture_plugins/ (the fixture put the folder on sys.path)."""
    return importlib.import_module(name)


class OnePlugin:
    """A plugin object registering the given items, for tests that need no module of their own."""

    def __init__(self, backends: tuple[Any, ...] = (), datasets: tuple[Any, ...] = ()) -> None:
        self.backends, self.datasets = backends, datasets

    @hookimpl
    def register_backends(self, register: Callable[[Any], None]) -> None:
        for item in self.backends:
            register(item)

    @hookimpl
    def register_datasets(self, register: Callable[[Any], None]) -> None:
        for item in self.datasets:
            register(item)


@dataclass
class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` yields, with a chosen distribution and a load counter."""

    name: str
    value: str
    dist: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(name="cnnbench-thirdparty", version="1.0"))
    loads: int = 0

    def load(self) -> Any:
        self.loads += 1
        return importlib.import_module(self.value)


def entry_points_with(monkeypatch: pytest.MonkeyPatch, *first: FakeEntryPoint) -> None:
    """Make importlib.metadata list ``first`` before cnnbench's own entry points (it follows sys.path)."""
    real = list(plugins.entry_points(group=plugins.ENTRY_POINT_GROUP))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*first, *real])


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


# --- the built-ins -------------------------------------------------------------------------------------------------


def test_builtin_backends_and_datasets_come_through_entry_points() -> None:
    registry = load_registry()
    assert "torch" in registry.backends
    assert registry.backends["torch"].plugin.distribution == "cnnbench"
    assert {"mnist", "synthetic"} <= set(registry.datasets)


def test_unknown_names_list_the_valid_choices() -> None:
    registry = load_registry()
    with pytest.raises(UsageError, match=r"unknown framework 'nosuch'; valid: .*torch.*all"):
        registry.backend("nosuch")
    with pytest.raises(UsageError, match=r"unknown dataset 'nosuch'; valid: .*mnist"):
        registry.dataset("nosuch")


# --- loading survives whatever a plugin raises (SystemExit included, KeyboardInterrupt excepted) --------------------


def test_a_plugin_that_raises_on_import_is_recorded_as_broken(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("broken_on_import")
    registry = load_registry()
    record = record_of(registry, "broken_on_import")
    assert record.status == "broken"
    assert "this plugin is broken on purpose" in record.error
    assert "torch" in registry.backends


def test_a_plugin_that_exits_at_import_is_broken_and_nothing_else_is(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("exits_on_import")
    registry = load_registry()
    record = record_of(registry, "exits_on_import")
    assert record.status == "broken" and record.error.startswith("SystemExit: 3 (exits_on_import.py:"), record.error
    assert set(registry.backends) >= BUILTIN_BACKENDS and "mnist" in registry.datasets


def test_a_plugin_that_exits_while_registering_is_broken(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("exits_in_hook")
    registry = load_registry()
    record = record_of(registry, "exits_in_hook")
    assert record.status == "broken"
    assert record.error.startswith("register_backends: SystemExit: this plugin exits while registering"), record.error


def test_ctrl_c_while_loading_a_plugin_still_interrupts(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("interrupts_on_import")
    with pytest.raises(KeyboardInterrupt):
        load_registry()


def test_cnnbench_list_survives_a_plugin_that_exits(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("exits_on_import")
    result = run_cli("list")
    assert result.exit_code == 0, result.output
    assert "exits_on_import" in result.output and "SystemExit" in result.output and "torch" in result.output


# --- first registration wins, built-ins first; the newcomer is broken and registers nothing -------------------------


def test_duplicate_names_are_reported_against_the_second_plugin() -> None:
    class Again:
        __name__ = "again"

        @hookimpl
        def register_datasets(self, register: Callable[[Any], None]) -> None:
            register(Synthetic())

    registry = load_registry(extra_plugins=[Again()])
    record = record_of(registry, "again")
    assert record.status == "broken" and "already registered" in record.error


def test_a_malformed_plugin_cannot_take_builtin_names_even_with_trylast(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("hijacks_builtin_names")
    registry = load_registry()
    assert registry.backends["torch"].plugin.distribution == "cnnbench"
    assert registry.datasets["synthetic"].plugin.name == "datasets"
    record = record_of(registry, "hijacks_builtin_names")
    assert record.status == "broken"
    assert "backend 'torch' is already registered by plugin 'torch' (cnnbench " in record.error
    assert "dataset 'synthetic' is already registered by plugin 'datasets' (cnnbench " in record.error
    assert "hijack-extra" not in registry.backends, "a broken plugin registers nothing"


def test_list_shows_the_hijacker_as_not_loaded_instead_of_crashing(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("hijacks_builtin_names")
    result = run_cli("list")
    assert result.exit_code == 0, result.output
    assert "hijacks_builtin_names" in result.output and "broken" in result.output


def test_builtin_entry_points_load_before_third_party_ones(
    monkeypatch: pytest.MonkeyPatch, fixture_plugins: Callable[..., None]
) -> None:
    fixture_plugins()
    entry_points_with(monkeypatch, FakeEntryPoint("aaa_takes_torch", "takes_torch"))
    registry = load_registry()
    assert registry.backends["torch"].item.framework == "PyTorch"
    assert [p.distribution for p in registry.plugins][:5] == ["cnnbench"] * 5
    record = record_of(registry, "aaa_takes_torch")
    assert record.status == "broken" and "backend 'torch' is already registered by plugin 'torch'" in record.error


def test_a_plugin_name_already_taken_is_broken_and_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    impostor = FakeEntryPoint("torch", "cnnbench_does_not_exist", dist=SimpleNamespace(name="evil", version="6.6.6"))
    entry_points_with(monkeypatch, impostor)
    registry = load_registry()
    records = [p for p in registry.plugins if p.name == "torch"]
    assert [p.distribution for p in records] == ["cnnbench", "evil"]
    assert records[1].status == "broken" and "plugin name 'torch' is taken by cnnbench" in records[1].error
    assert impostor.loads == 0 and registry.backends["torch"].plugin is records[0]


def test_a_plugin_with_an_unusable_name_is_broken_and_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = FakeEntryPoint("[link=https://example.com]x", "cnnbench_does_not_exist")
    entry_points_with(monkeypatch, odd)
    record = record_of(load_registry(), odd.name)
    assert record.status == "broken" and "is not a valid plugin name" in record.error and odd.loads == 0


# --- what a plugin registers is validated -------------------------------------------------------------------------


def malformed(fixture_plugins: Callable[..., None], kind: str, case: str) -> tuple[Any, str]:
    return getattr(fixture_module(fixture_plugins, "malformed_items"), kind)[case]


BACKEND_CASES = [
    "the class, not an instance",
    "no name",
    "a name that is not a string",
    "rich markup in the name",
    "an escape sequence in the name",
    "a colon in the name",
    "a dot in the name",
    "the reserved name all",
    "a name too long",
    "no framework",
    "an OSC hyperlink in the framework",
    "variants as None",
    "variants as a string",
    "a variant with a colon",
    "a repeated variant",
    "deterministic as a string",
    "no methods",
    "create_session without config",
    "a name that raises",
]
DATASET_CASES = [
    "the class, not an instance",
    "rich markup in the name",
    "a description that is not a string",
    "control characters in the description",
    "a two-dimensional input shape",
    "a zero in the input shape",
    "a string in the input shape",
    "class names not a tuple",
    "one class",
    "a negative n_train",
    "load without config",
    "status without config",
]


def test_every_malformed_fixture_has_a_test(fixture_plugins: Callable[..., None]) -> None:
    module = fixture_module(fixture_plugins, "malformed_items")
    assert (sorted(module.BACKENDS), sorted(module.DATASETS)) == (sorted(BACKEND_CASES), sorted(DATASET_CASES))


@pytest.mark.parametrize("case", BACKEND_CASES)
def test_a_malformed_backend_is_refused_with_the_reason(fixture_plugins: Callable[..., None], case: str) -> None:
    item, reason = malformed(fixture_plugins, "BACKENDS", case)
    registry = load_registry(extra_plugins=[OnePlugin(backends=(item,))])
    record = record_of(registry, "OnePlugin")
    assert record.status == "broken" and reason in record.error, record.error
    assert set(registry.backends) == BUILTIN_BACKENDS
    assert record.error.isprintable(), "the reason itself carries no control characters"


@pytest.mark.parametrize("case", DATASET_CASES)
def test_a_malformed_dataset_is_refused_with_the_reason(fixture_plugins: Callable[..., None], case: str) -> None:
    item, reason = malformed(fixture_plugins, "DATASETS", case)
    registry = load_registry(extra_plugins=[OnePlugin(datasets=(item,))])
    record = record_of(registry, "OnePlugin")
    assert record.status == "broken" and reason in record.error, record.error
    assert all(r.plugin.name == "datasets" for r in registry.datasets.values())


def test_well_formed_stubs_are_accepted(fixture_plugins: Callable[..., None]) -> None:
    """The validation refuses only what is wrong: the fixtures' base items pass."""
    stubs = fixture_module(fixture_plugins, "stub_items")
    plugin = OnePlugin(backends=(stubs.StubBackend("stub", variants=("a", "b")),), datasets=(stubs.StubDataset(),))
    registry = load_registry(extra_plugins=[plugin])
    assert record_of(registry, "OnePlugin").status == "ok"
    assert "stub" in registry.backends and "stub-data" in registry.datasets


def test_a_hook_that_returns_its_backends_instead_of_registering_them_is_broken(
    fixture_plugins: Callable[..., None],
) -> None:
    stubs = fixture_module(fixture_plugins, "stub_items")

    class Returns:
        @hookimpl
        def register_backends(self, register: Callable[[Any], None]) -> list[Any]:
            return [stubs.StubBackend("returned")]

    record = record_of(load_registry(extra_plugins=[Returns()]), "Returns")
    assert record.status == "broken" and "returned a value instead of calling register()" in record.error


def test_register_kept_for_later_is_refused(fixture_plugins: Callable[..., None]) -> None:
    stubs = fixture_module(fixture_plugins, "stub_items")
    kept: list[Callable[[Any], None]] = []

    class Keeps:
        @hookimpl
        def register_backends(self, register: Callable[[Any], None]) -> None:
            kept.append(register)

    registry = load_registry(extra_plugins=[Keeps()])
    with pytest.raises(PluginError, match="after its hook returned"):
        kept[0](stubs.StubBackend("late"))
    assert "late" not in registry.backends


# --- the filter variables: never the built-in datasets by accident; errors name the variable ----------------------


def test_allow_and_block_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNBENCH_DISABLE_PLUGINS", "torch")
    registry = load_registry()
    assert "torch" not in registry.backends
    assert record_of(registry, "torch").status == "disabled"
    monkeypatch.delenv("CNNBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("CNNBENCH_PLUGINS", "datasets")
    assert list(load_registry().backends) == []


def test_the_allow_list_never_hides_the_builtin_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNBENCH_PLUGINS", "torch")
    registry = load_registry()
    assert set(registry.backends) == {"torch"} and {"mnist", "synthetic"} <= set(registry.datasets)
    assert registry.dataset("synthetic").plugin.name == "datasets"
    monkeypatch.setenv("CNNBENCH_DISABLE_PLUGINS", "datasets")
    assert load_registry().datasets == {}, "naming it in the block-list is the one way to turn them off"


def test_an_unknown_name_in_the_allow_list_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNBENCH_PLUGINS", "torch, garbage")
    with pytest.raises(UsageError, match=r"^CNNBENCH_PLUGINS names no installed plugin 'garbage'; found: .*torch"):
        load_registry()
    result = run_cli("run", "-f", "torch", "-d", "synthetic")
    assert result.exit_code == 2
    assert "CNNBENCH_PLUGINS names no installed plugin 'garbage'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("var", "value"), [("CNNBENCH_DISABLE_PLUGINS", "torch"), ("CNNBENCH_PLUGINS", "jax")])
def test_a_disabled_framework_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(UsageError, match=rf"^framework 'torch' is disabled by {var}"):
        load_registry().backend("torch")
    result = run_cli("run", "-f", "torch", "-d", "synthetic")
    assert result.exit_code == 2 and f"framework 'torch' is disabled by {var}" in result.output, result.output


def test_an_unknown_name_mentions_the_disabled_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNBENCH_DISABLE_PLUGINS", "torch,datasets")
    registry = load_registry()
    disabled = "not loaded: datasets, torch (disabled by CNNBENCH_DISABLE_PLUGINS)"
    with pytest.raises(UsageError, match=re.escape(disabled)):
        registry.backend("paddle")
    with pytest.raises(UsageError, match=r"^unknown dataset 'mnist'; valid: none registered; " + re.escape(disabled)):
        registry.dataset("mnist")


def test_a_framework_whose_plugin_failed_to_load_says_so(fixture_plugins: Callable[..., None]) -> None:
    fixture_plugins("broken_on_import")
    with pytest.raises(
        UsageError,
        match=r"^framework 'broken_on_import' is unavailable: its plugin failed to load "
        r"\(RuntimeError: this plugin is broken on purpose",
    ):
        load_registry().backend("broken_on_import")
