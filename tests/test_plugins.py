import pytest

from cnnbench import hookimpl
from cnnbench.datasets.synthetic import Synthetic
from cnnbench.errors import UsageError
from cnnbench.plugins import load_registry


def test_builtin_backends_and_datasets_come_through_entry_points():
    registry = load_registry()
    assert "torch" in registry.backends
    assert registry.backends["torch"].plugin.distribution == "cnnbench"
    assert {"mnist", "synthetic"} <= set(registry.datasets)


def test_a_plugin_that_raises_on_import_is_recorded_as_broken(fixture_plugins):
    fixture_plugins("broken_on_import")
    registry = load_registry()
    record = next(p for p in registry.plugins if p.name == "broken_on_import")
    assert record.status == "broken"
    assert "this plugin is broken on purpose" in record.error
    assert "torch" in registry.backends


def test_duplicate_names_are_reported_against_the_second_plugin():
    class Again:
        __name__ = "again"

        @hookimpl
        def register_datasets(self, register):
            register(Synthetic())

    registry = load_registry(extra_plugins=[Again()])
    record = next(p for p in registry.plugins if p.name == "again")
    assert record.status == "broken" and "already registered" in record.error


def test_allow_and_block_lists(monkeypatch):
    monkeypatch.setenv("CNNBENCH_DISABLE_PLUGINS", "torch")
    registry = load_registry()
    assert "torch" not in registry.backends
    assert next(p for p in registry.plugins if p.name == "torch").status == "disabled"
    monkeypatch.delenv("CNNBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("CNNBENCH_PLUGINS", "datasets")
    assert list(load_registry().backends) == []


def test_unknown_names_list_the_valid_choices():
    registry = load_registry()
    with pytest.raises(UsageError, match=r"unknown framework 'nosuch'; valid: .*torch.*all"):
        registry.backend("nosuch")
    with pytest.raises(UsageError, match="unknown dataset 'nosuch'; valid: .*mnist"):
        registry.dataset("nosuch")
