"""Plugin loading and the registries of backends and datasets.

pluggy does not guard entry-point loading or hook calls: one broken plugin would take the CLI
down. Here each entry point is loaded, and each plugin's hooks called, on its own; any exception
but KeyboardInterrupt (SystemExit included) is recorded against that plugin ("broken: <error>")
and everything else still works. What a plugin registers is validated first, and a plugin is all
or nothing: one refused item and it registers none. Loading order decides who keeps a name:
cnnbench's own entry points first, then third-party ones by distribution, then
$CNNBENCH_PLUGIN_MODULES, so no installed package can take over a built-in name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import traceback
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from cnnbench import hookspecs
from cnnbench.errors import PluginError, UsageError
from cnnbench.spec import ModelSpec

ENTRY_POINT_GROUP = "cnnbench"
#: The distribution whose entry points are the built-in plugins (loaded first).
BUILTIN_DISTRIBUTION = "cnnbench"
#: The built-in plugin that registers the datasets: the allow-list never hides it, only the block-list.
DATASETS_PLUGIN = "datasets"
#: The built-in plugin that registers the models (the chapter's LeNet among them): never hidden by the allow-list.
MODELS_PLUGIN = "models"
#: Comma-separated plugin names: when set, only these entry-point plugins (and the built-in datasets) load.
ALLOW_ENV = "CNNBENCH_PLUGINS"
#: Comma-separated plugin names never loaded.
BLOCK_ENV = "CNNBENCH_DISABLE_PLUGINS"
#: Comma-separated importable modules loaded as extra plugins (development and tests).
EXTRA_MODULES_ENV = "CNNBENCH_PLUGIN_MODULES"

HOOK_NAMES = ("register_backends", "register_datasets", "register_models")
HOOK_KINDS = {"register_backends": "backend", "register_datasets": "dataset", "register_models": "model"}

#: Backend, variant and dataset names: what ``-f name:variant,...``, ``-d`` and ``--backend-option name.key=``
#: take, so no ``:``, ``,``, ``.``, whitespace, markup or control characters.
ITEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: Plugin names (entry-point names, module names): listed comma-separated in the filter variables.
PLUGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: ``-f all`` means every framework.
RESERVED_NAMES = frozenset({"all"})
#: Methods a backend must have, with the positional arguments the harness passes (each count is tried).
BACKEND_METHODS: dict[str, tuple[tuple[str, ...], ...]] = {
    "unavailable_reason": ((),),
    "framework_version": ((), ("variant",)),
    "process_environment": (("variant", "config"),),
    "import_framework": ((), ("variant",)),
    "devices_unsupported_reason": (("variant", "config"),),
    "worker_launcher": (("variant", "config"),),
    "create_session": (("spec", "config", "variant"),),
}
DATASET_METHODS: dict[str, tuple[tuple[str, ...], ...]] = {"load": (("config",),), "status": (("config",),)}
MAX_ERROR_CHARS = 600
#: Problems named per refused item; the rest are counted (the first fix is what matters).
SHOWN_PROBLEMS = 3


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
    #: The variable that disabled it (ALLOW_ENV or BLOCK_ENV), when status is "disabled".
    disabled_by: str = ""

    @property
    def label(self) -> str:
        """``'name' (distribution version)``: who holds a name, in messages."""
        origin = f"{self.distribution} {self.version}".strip()
        return f"{self.name!r}" + (f" ({origin})" if origin else "")


@dataclass(frozen=True)
class Registered:
    """A backend or dataset with the plugin that registered it."""

    item: Any
    plugin: PluginRecord

    @property
    def name(self) -> str:
        return str(self.item.name)


@dataclass
class Registry:
    """Everything the plugins registered, and every plugin found (loaded or not), in load order."""

    plugins: list[PluginRecord] = field(default_factory=list)
    backends: dict[str, Registered] = field(default_factory=dict)
    datasets: dict[str, Registered] = field(default_factory=dict)
    models: dict[str, Registered] = field(default_factory=dict)

    def backend(self, name: str) -> Registered:
        """The backend ``--frameworks`` names; a UsageError says why not (unknown, disabled and by what, broken)."""
        if name not in self.backends:
            raise UsageError(self._not_found("framework", name, [*sorted(self.backends), "all"]))
        return self.backends[name]

    def dataset(self, name: str) -> Registered:
        """The dataset ``--dataset`` names; a UsageError says why not."""
        if name not in self.datasets:
            raise UsageError(self._not_found("dataset", name, sorted(self.datasets)))
        return self.datasets[name]

    def model(self, name: str) -> Registered:
        """The model ``--model`` names; a UsageError says why not."""
        if name not in self.models:
            raise UsageError(self._not_found("model", name, sorted(self.models)))
        return self.models[name]

    def spec(
        self, model: str, input_shape: tuple[int, ...], num_classes: int, dropout: float | None = None
    ) -> ModelSpec:
        """The spec of ``model`` for a dataset's input shape and classes; a UsageError says why not."""
        entry = self.model(model).item
        try:
            spec: ModelSpec = entry.spec(tuple(input_shape), num_classes, dropout)
        except (ValueError, TypeError) as exc:
            shape = "x".join(map(str, input_shape))
            raise UsageError(f"model {model!r} cannot be built for {shape} inputs: {exc}") from None
        return spec

    def _not_found(self, kind: str, name: str, valid: list[str]) -> str:
        """A plugin's items are unknown until it loads: a plugin of the same name stands for them."""
        same = next((p for p in self.plugins if p.name == name and p.status != "ok"), None)
        if same is not None and same.status == "disabled":
            return f"{kind} {_quote(name)} is disabled by {same.disabled_by} (see 'cnnbench plugins')"
        if same is not None:
            reason = f"its plugin failed to load ({same.error})"
            return f"{kind} {_quote(name)} is unavailable: {reason}; see 'cnnbench plugins'"
        shown = [item for item in valid if item != "all"]
        message = f"unknown {kind} {_quote(name)}; valid: {', '.join(valid) if shown else 'none registered'}"
        for var in (ALLOW_ENV, BLOCK_ENV):
            disabled = sorted(p.name for p in self.plugins if p.disabled_by == var)
            if disabled:
                message += f"; not loaded: {', '.join(disabled)} (disabled by {var})"
        return message


def _names_from_env(var: str) -> list[str]:
    """The comma-separated names in ``var``, in order, once each."""
    return list(dict.fromkeys(part.strip() for part in os.environ.get(var, "").split(",") if part.strip()))


def _printable(text: str) -> str:
    """``text`` on one line with every control or format character escaped (``\\x1b``, ``\\n``)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _quote(value: Any) -> str:
    """``repr`` with control characters escaped, for names that may be anything."""
    return _printable(_text_of(repr, value))


def _text_of(convert: Callable[[Any], str], value: Any) -> str:
    """``str``/``repr`` of a plugin's object, whose ``__str__`` or ``__repr__`` may itself raise."""
    try:
        return convert(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001
        return f"<{type(value).__name__} that cannot be shown>"


def _short_error(exc: BaseException) -> str:
    """``Type: message (file.py:line)`` on one line, where the plugin raised."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    message = _text_of(str, exc)
    return _clip(f"{type(exc).__name__}{': ' + message if message else ''}{where}")


def _clip(text: str) -> str:
    text = _printable(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _has_control_characters(text: str) -> bool:
    """Control, format (bidi overrides, zero-width) and line-separator characters: they rewrite terminals."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _name_problem(what: str, name: Any) -> str | None:
    """Why ``name`` cannot be a backend, variant or dataset name, or None."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    if name in RESERVED_NAMES:
        return f"{what} {name!r} is reserved"
    if not ITEM_NAME.fullmatch(name):
        rule = "use at most 64 letters, digits, '_' and '-', starting with a letter or digit"
        return f"{what} {_quote(name)} is not valid: {rule}"
    return None


def _plugin_name_problem(name: Any) -> str | None:
    if isinstance(name, str) and PLUGIN_NAME.fullmatch(name):
        return None
    return (
        f"{_quote(name)} is not a valid plugin name: use letters, digits, '_', '.' and '-' "
        f"(it must fit in the comma-separated {ALLOW_ENV} and {BLOCK_ENV})"
    )


class _ReadFailed(Exception):
    """Reading an attribute of a registered item raised: the item's fault, reported as a reason."""

    def __init__(self, attribute: str, error: BaseException) -> None:
        super().__init__(attribute)
        self.attribute, self.error = attribute, error


def _read(item: Any, attribute: str) -> Any:
    """``getattr(item, attribute, None)``, with whatever a property raises turned into _ReadFailed."""
    try:
        return getattr(item, attribute, None)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  a property may raise anything
        raise _ReadFailed(attribute, exc) from None


def _text_problem(what: str, value: Any, *, required: bool) -> str | None:
    if not isinstance(value, str) or (required and not value):
        return f"{what} must be a {'non-empty ' if required else ''}string, got {_type_or_value(value)}"
    if _has_control_characters(value):
        return f"{what} contains control characters: {_quote(value)}"
    return None


def _type_or_value(value: Any) -> str:
    return "an empty string" if value == "" else type(value).__name__


def _method_problems(item: Any, methods: dict[str, tuple[tuple[str, ...], ...]]) -> list[str]:
    """Each method must exist and accept the arguments the harness passes (checked by binding, not calling)."""
    problems, missing = [], []
    for method_name, calls in methods.items():
        method = _read(item, method_name)
        if not callable(method):
            missing.append(method_name)
            continue
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            continue
        for args in calls:
            try:
                signature.bind(*args)
            except TypeError:
                problems.append(f"{method_name} cannot be called as {method_name}({', '.join(args)})")
                break
    if missing:
        problems.insert(0, f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing or not callable")
    return problems


def backend_problems(item: Any) -> list[str]:
    """Why ``item`` cannot be a backend (empty when it can): what ``list``, ``run`` and the worker rely on."""
    return _unless_unreadable(_backend_problems, item)


def dataset_problems(item: Any) -> list[str]:
    """Why ``item`` cannot be a dataset (empty when it can)."""
    return _unless_unreadable(_dataset_problems, item)


def model_problems(item: Any) -> list[str]:
    """Why ``item`` cannot be a model (empty when it can): it must build a valid spec for MNIST and CIFAR shapes."""
    return _unless_unreadable(_model_problems, item)


def _unless_unreadable(check: Callable[[Any], list[str]], item: Any) -> list[str]:
    """``check(item)``, or the one reason that an attribute could not even be read."""
    try:
        return check(item)
    except _ReadFailed as failed:
        return [f"reading {failed.attribute} raised {_short_error(failed.error)}"]


def _backend_problems(item: Any) -> list[str]:
    if isinstance(item, type):
        return [f"registered the class {item.__name__} instead of an instance (call register({item.__name__}()))"]
    problems = [
        _name_problem("name", _read(item, "name")),
        _text_problem("framework", _read(item, "framework"), required=True),
    ]
    variants = _read(item, "variants")
    if not isinstance(variants, (tuple, list)):
        problems.append(f"variants must be a tuple of names, got {type(variants).__name__}")
    else:
        for index, variant in enumerate(variants):
            problem = _name_problem("variant", variant)
            if problem is None and variant in variants[:index]:
                problem = f"variant {variant!r} is repeated"
            problems.append(problem)
    deterministic = _read(item, "deterministic")
    if not isinstance(deterministic, bool):
        problems.append(f"deterministic must be True or False, got {type(deterministic).__name__}")
    return [p for p in problems if p] + _method_problems(item, BACKEND_METHODS)


def _dataset_problems(item: Any) -> list[str]:
    if isinstance(item, type):
        return [f"registered the class {item.__name__} instead of an instance (call register({item.__name__}()))"]
    problems = [
        _name_problem("name", _read(item, "name")),
        _text_problem("description", _read(item, "description"), required=False),
    ]
    shape = _read(item, "input_shape")
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(_is_count(n, minimum=1) for n in shape)):
        problems.append(f"input_shape must be (height, width, channels) of positive ints, got {_quote(shape)}")
    class_names = _read(item, "class_names")
    if not (isinstance(class_names, (tuple, list)) and len(class_names) >= 2):
        problems.append(f"class_names must be a tuple of at least 2 strings, got {_describe(class_names)}")
    else:
        problems += [_text_problem(f"class_names[{i}]", name, required=True) for i, name in enumerate(class_names)]
        if _read(item, "num_classes") != len(class_names):
            problems.append(f"num_classes ({_quote(_read(item, 'num_classes'))}) is not len(class_names)")
    for count in ("n_train", "n_test"):
        value = _read(item, count)
        if value is not None and not _is_count(value, minimum=0):
            problems.append(f"{count} must be None or a non-negative int, got {_quote(value)}")
    return [p for p in problems if p] + _method_problems(item, DATASET_METHODS)


#: The inputs a registered model is tried on before it counts: MNIST's and CIFAR-10's.
MODEL_TRIAL_INPUTS = (((28, 28, 1), 10), ((32, 32, 3), 10))


def _model_problems(item: Any) -> list[str]:
    from cnnbench.models import Model

    if isinstance(item, type):
        return [f"registered the class {item.__name__} instead of an instance"]
    if not isinstance(item, Model):
        return [f"a model must be a cnnbench.models.Model, got {type(item).__name__}"]
    problems = [_name_problem("name", item.name), _text_problem("description", item.description, required=False)]
    build: object = item.build
    if not callable(build):
        problems.append("build must be callable as build(input_shape, num_classes, dropout)")
    else:
        for shape, classes in MODEL_TRIAL_INPUTS:
            try:
                item.spec(shape, classes)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a plugin's build may raise anything: a reason, not a crash
                problems.append(f"build{(shape, classes)} failed: {_short_error(exc)}")
                break
    return [p for p in problems if p]


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _describe(value: Any) -> str:
    return f"{type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list)) else type(value).__name__


VALIDATORS: dict[str, Callable[[Any], list[str]]] = {
    "backend": backend_problems,
    "dataset": dataset_problems,
    "model": model_problems,
}


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the hook specs; nothing loaded (tests build their own)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


@dataclass
class _Candidate:
    """A plugin found but not yet imported."""

    name: str
    module: str
    load: Callable[[], Any]
    distribution: str = ""
    version: str = ""
    filtered: bool = True  # the allow- and block-lists apply

    @property
    def builtin(self) -> bool:
        return _normalize(self.distribution) == BUILTIN_DISTRIBUTION


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _candidates(include_entry_points: bool) -> list[_Candidate]:
    """Every plugin in load order: cnnbench's entry points, third-party ones (by distribution), extra modules."""
    found: list[_Candidate] = []
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            distribution, version = (dist.name, dist.version) if dist else ("", "")
            found.append(_Candidate(ep.name, ep.value, ep.load, distribution, version))
        found.sort(key=lambda c: (not c.builtin, _normalize(c.distribution), c.name))
    for module_name in _names_from_env(EXTRA_MODULES_ENV):
        load = functools.partial(importlib.import_module, module_name)
        found.append(_Candidate(module_name, module_name, load, EXTRA_MODULES_ENV))
    return found


def _disabled_by(candidate: _Candidate, allow: list[str], block: list[str]) -> str:
    """The variable that keeps ``candidate`` from loading, or "". The block-list wins over the allow-list."""
    if not candidate.filtered:
        return ""
    if candidate.name in block:
        return BLOCK_ENV
    always = candidate.builtin and candidate.name in (DATASETS_PLUGIN, MODELS_PLUGIN)  # never hidden by an allow-list
    if allow and candidate.name not in allow and not always:
        return ALLOW_ENV
    return ""


def load_registry(extra_plugins: Iterable[Any] = (), include_entry_points: bool = True) -> Registry:
    """Load every allowed plugin and collect what each registers. Never raises for a plugin's fault.

    Raises UsageError for the user's: a name in $CNNBENCH_PLUGINS that no installed plugin has.
    """
    pm = make_plugin_manager()
    registry = Registry()
    allow, block = _names_from_env(ALLOW_ENV), _names_from_env(BLOCK_ENV)
    candidates = _candidates(include_entry_points)
    if include_entry_points:
        unknown = [name for name in allow if name not in {c.name for c in candidates}]
        if unknown:
            found = ", ".join(sorted({c.name for c in candidates})) or "none"
            raise UsageError(f"{ALLOW_ENV} names no installed plugin {', '.join(map(_quote, unknown))}; found: {found}")
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        module = getattr(plugin, "__name__", type(plugin).__module__)
        candidates.append(_Candidate(name, module, functools.partial(_same, plugin), filtered=False))

    loaded: list[tuple[Any, PluginRecord]] = []
    taken: dict[str, PluginRecord] = {}
    for candidate in candidates:
        record = PluginRecord(candidate.name, candidate.module, candidate.distribution, candidate.version)
        registry.plugins.append(record)
        problem = _plugin_name_problem(candidate.name)
        if problem is None and candidate.name in taken:
            problem = f"plugin name {candidate.name!r} is taken by {_origin(taken[candidate.name])}"
        if problem:  # never imported: its name is unusable in the filter variables, or already stands for another
            record.status, record.error = "broken", _clip(problem)
            continue
        taken[candidate.name] = record
        record.disabled_by = _disabled_by(candidate, allow, block)
        if record.disabled_by:
            record.status, record.error = "disabled", f"disabled by ${record.disabled_by}"
            continue
        try:
            plugin = candidate.load()
            pm.register(plugin, name=candidate.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001  SystemExit too: a broken plugin must never take the CLI down
            record.status, record.error = "broken", _short_error(exc)
            continue
        loaded.append((plugin, record))

    for plugin, record in loaded:
        _register_from(pm, plugin, record, registry)
    return registry


def _same(value: Any) -> Any:
    """The loader of a plugin given as an object: it is already loaded."""
    return value


def _origin(record: PluginRecord) -> str:
    return f"{record.distribution} {record.version}".strip() or record.module


class _Registrar:
    """The ``register`` callable one hook receives: validates and stages; refuses calls after the hook returned."""

    def __init__(
        self,
        plugin: str,
        hook_name: str,
        registered: dict[str, Registered],
        staged: dict[str, Any],
        problems: list[str],
    ) -> None:
        self.plugin, self.hook_name, self.kind = plugin, hook_name, HOOK_KINDS[hook_name]
        self.registered, self.staged, self.problems = registered, staged, problems
        self.open = True

    def __call__(self, item: Any) -> None:
        if not self.open:
            raise PluginError(f"plugin {self.plugin!r} called register() after its hook returned")
        problem = _check_item(self.kind, item, self.registered, self.staged)
        if problem:
            self.problems.append(f"{self.hook_name}: {problem}")
        else:
            self.staged[item.name] = item


def _register_from(pm: pluggy.PluginManager, plugin: Any, record: PluginRecord, registry: Registry) -> None:
    """Call ``plugin``'s hooks (in load order, whatever tryfirst/trylast say) and keep what it registers.

    All or nothing: a hook that raises or returns a value, or one refused item, marks the plugin
    broken with every reason, and none of its items is registered.
    """
    targets = {"backend": registry.backends, "dataset": registry.datasets, "model": registry.models}
    staged: dict[str, dict[str, Any]] = {kind: {} for kind in targets}
    problems: list[str] = []
    for hook_name in HOOK_NAMES:
        kind = HOOK_KINDS[hook_name]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if hook_name not in record.hooks:
                record.hooks.append(hook_name)
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                problems.append(f"{hook_name}: a hook wrapper registers nothing; implement a plain hook")
                continue
            register = _Registrar(record.name, hook_name, targets[kind], staged[kind], problems)
            try:
                returned = impl.function(**{arg: register for arg in impl.argnames if arg == "register"})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001  SystemExit too
                problems.append(f"{hook_name}: {_short_error(exc)}")
                continue
            finally:
                register.open = False
            if returned is not None:
                problems.append(f"{hook_name} returned a value instead of calling register() for each {kind}")
    if problems:
        record.status, record.error = "broken", _clip("; ".join(problems))
        return
    for kind, items in staged.items():
        for name, item in items.items():
            targets[kind][name] = Registered(item, record)


def _check_item(kind: str, item: Any, registered: dict[str, Registered], staged: dict[str, Any]) -> str | None:
    """Why ``item`` cannot be registered, or None. Never raises: a property that raises is a reason too."""
    problems = VALIDATORS[kind](item)
    try:
        name = None if isinstance(item, type) else _read(item, "name")
    except _ReadFailed:
        name = None
    usable = isinstance(name, str) and ITEM_NAME.fullmatch(name) is not None
    label = f"{kind} {name!r}" if usable else f"{kind} {(item if isinstance(item, type) else type(item)).__name__}"
    taken = []
    if usable and name in registered:
        taken.append(f"{label} is already registered by plugin {registered[name].plugin.label}")
    elif usable and name in staged:
        taken.append(f"{label} is registered twice")
    if problems:
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        taken.append(f"{label}: {'; '.join(problems[:SHOWN_PROBLEMS])}{more}")
    return "; ".join(taken) or None
