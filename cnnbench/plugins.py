"""Plugin loading and the registries of backends and datasets.

pluggy does not guard entry-point loading or hook calls: one broken plugin would take the CLI
down. Here each entry point is loaded, and each hook implementation called, on its own; a
failure is recorded against that plugin ("broken: <error>") and everything else still works.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Iterable

import pluggy

from cnnbench import hookspecs
from cnnbench.errors import UsageError

ENTRY_POINT_GROUP = "cnnbench"
#: Comma-separated plugin names: when set, only these entry-point plugins are loaded.
ALLOW_ENV = "CNNBENCH_PLUGINS"
#: Comma-separated plugin names never loaded.
BLOCK_ENV = "CNNBENCH_DISABLE_PLUGINS"
#: Comma-separated importable modules loaded as extra plugins (development and tests).
EXTRA_MODULES_ENV = "CNNBENCH_PLUGIN_MODULES"

HOOK_NAMES = ("register_backends", "register_datasets")


@dataclass
class PluginRecord:
    """One plugin as loaded: where it came from and whether it works."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    status: str = "ok"  # ok | broken | disabled
    error: str = ""
    hooks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Registered:
    """A backend or dataset with the plugin that registered it."""

    item: Any
    plugin: PluginRecord

    @property
    def name(self) -> str:
        return self.item.name


@dataclass
class Registry:
    plugins: list[PluginRecord] = field(default_factory=list)
    backends: dict[str, Registered] = field(default_factory=dict)
    datasets: dict[str, Registered] = field(default_factory=dict)
    manager: pluggy.PluginManager | None = None

    def backend(self, name: str) -> Registered:
        if name not in self.backends:
            raise UsageError(f"unknown framework {name!r}; valid: {', '.join(sorted(self.backends)) or 'none registered'}, all")
        return self.backends[name]

    def dataset(self, name: str) -> Registered:
        if name not in self.datasets:
            raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]


def _names_from_env(var: str) -> set[str]:
    return {part.strip() for part in os.environ.get(var, "").split(",") if part.strip()}


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the hook specs; nothing loaded (tests build their own)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(extra_plugins: Iterable[Any] = (), include_entry_points: bool = True) -> Registry:
    """Load every allowed plugin and collect what each registers. Never raises for a plugin's fault."""
    pm = make_plugin_manager()
    registry = Registry(manager=pm)
    allow, block = _names_from_env(ALLOW_ENV), _names_from_env(BLOCK_ENV)
    loaded: list[tuple[Any, PluginRecord]] = []

    candidates: list[tuple[str, str, Any, str, str]] = []  # name, module, loader, dist, version
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            candidates.append((ep.name, ep.value, ep.load, dist.name if dist else "", dist.version if dist else ""))
    for module_name in sorted(_names_from_env(EXTRA_MODULES_ENV)):
        candidates.append((module_name, module_name, lambda m=module_name: importlib.import_module(m), f"{EXTRA_MODULES_ENV}", ""))

    for name, module_name, loader, dist, version in candidates:
        record = PluginRecord(name=name, module=module_name, distribution=dist, version=version)
        registry.plugins.append(record)
        if (allow and name not in allow) or name in block:
            record.status, record.error = "disabled", f"disabled by ${ALLOW_ENV if allow and name not in allow else BLOCK_ENV}"
            continue
        try:
            plugin = loader()
            pm.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must never take the CLI down
            record.status, record.error = "broken", _short_error(exc)
            continue
        loaded.append((plugin, record))

    for plugin in extra_plugins:
        record = PluginRecord(name=getattr(plugin, "__name__", type(plugin).__name__), module=getattr(plugin, "__name__", type(plugin).__module__))
        registry.plugins.append(record)
        try:
            pm.register(plugin, name=record.name)
        except Exception as exc:
            record.status, record.error = "broken", _short_error(exc)
            continue
        loaded.append((plugin, record))

    records = {record.name: record for _, record in loaded}
    for hook_name in HOOK_NAMES:
        target = registry.backends if hook_name == "register_backends" else registry.datasets
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration order
            record = records[impl.plugin_name]
            record.hooks.append(hook_name)

            def register(item: Any, _target=target, _record=record) -> None:
                name = getattr(item, "name", "")
                if not name:
                    raise ValueError(f"{type(item).__name__} has no name")
                if name in _target:
                    raise ValueError(f"{name!r} is already registered by plugin {_target[name].plugin.name!r}")
                _target[name] = Registered(item, _record)

            try:
                impl.function(**{arg: register for arg in impl.argnames if arg == "register"})
            except Exception as exc:
                record.status, record.error = "broken", f"{hook_name}: {_short_error(exc)}"
    return registry
