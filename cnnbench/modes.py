"""Execution modes (eager, compiled, XLA...) as rows of a run: ``-f torch:compile``, ``--modes all``.

A backend declares its modes in ``Backend.modes``; each mode names the ``--backend-option`` values it
stands for, so a mode is a shorthand the parent checks, never a second mechanism. A row's id is the
text that selects it again: ``name[:variant][+mode]`` with the variant first, e.g. ``keras:torch+jit``;
the default mode is left out of the id, so ``torch`` and ``keras:tensorflow`` stay the ids they were.
Which mode is each framework's default, and why: docs/performance.md#modes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from cnnbench.errors import UsageError

#: What ``declared`` collects: BackendOption or ExecutionMode.
DeclaredT = TypeVar("DeclaredT")

if TYPE_CHECKING:
    from cnnbench.config import TrainConfig
    from cnnbench.plugins import Registry

#: What ``--modes`` takes: each framework's default mode only, or every mode it declares.
MODES_CHOICES = ("default", "all")
#: The manifest keys a row's mode is recorded under.
MODE_KEY, MODE_DEFAULT_KEY = "execution_mode", "execution_mode_is_default"
#: A row whose ``--backend-option`` values match none of its backend's modes.
CUSTOM = "custom"


@dataclass(frozen=True)
class ExecutionMode:
    """A named way to run a framework, standing for some of its ``--backend-option`` values."""

    #: What follows ``name:`` (or ``name:variant+``), e.g. "compile".
    name: str
    #: Backend option key (without ``NAME.``) -> value, e.g. {"compile": "true"}.
    options: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    #: The variants it applies to; empty: every variant.
    variants: tuple[str, ...] = ()
    #: Default for every variant (True) or for these variants (a tuple).
    default: bool | tuple[str, ...] = False

    def __post_init__(self) -> None:
        """A malformed declaration fails when the plugin is imported (a broken plugin), not when a user types it."""
        name = self.name
        if not isinstance(name, str) or not name or any(c in name for c in ":+,= ") or not name.isprintable():
            raise TypeError(f"ExecutionMode name must be a word without ':', '+', ',', '=' or spaces, got {name!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.options).items()):
            raise TypeError(f"ExecutionMode {name}: options must map option keys to value text")
        object.__setattr__(self, "options", dict(self.options))

    def applies_to(self, variant: str | None) -> bool:
        """Whether this mode exists for ``variant`` of its backend."""
        return not self.variants or variant in self.variants

    def is_default(self, variant: str | None) -> bool:
        """Whether this mode is what the backend runs for ``variant`` when no mode is named."""
        return self.default is True or (isinstance(self.default, tuple) and variant in self.default)


def declared(backend: object, attribute: str, kind: type[DeclaredT]) -> tuple[DeclaredT, ...]:
    """What a backend declares in ``attribute`` (its options, its modes); a malformed declaration counts as none."""
    try:
        items = getattr(backend, attribute, ())
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001  (any plugin bug: the backend then declares nothing)
        return ()
    if not isinstance(items, (tuple, list)):
        return ()
    return tuple(item for item in items if isinstance(item, kind))


def declared_modes(backend: object) -> tuple[ExecutionMode, ...]:
    """The modes a backend declares; a malformed declaration (a plugin bug) counts as none."""
    return declared(backend, "modes", ExecutionMode)


def declaration_problems(backend: object) -> list[str]:
    """What is wrong with a backend's mode declarations (for plugin checks): names, option keys, defaults."""
    from cnnbench.backend_options import declared_options

    problems: list[str] = []
    modes = declared_modes(backend)
    variants = tuple(getattr(backend, "variants", ()) or ())
    keys = {option.key for option in declared_options(backend)}
    names = [mode.name for mode in modes]
    for mode in modes:
        if names.count(mode.name) > 1:
            problems.append(f"mode {mode.name!r} is declared twice")
        if mode.name in variants:
            problems.append(f"mode {mode.name!r} has the name of a variant: -f cannot tell them apart")
        problems.extend(
            f"mode {mode.name!r} sets {key!r}, which is not a declared option"
            for key in mode.options
            if key not in keys
        )
        problems.extend(f"mode {mode.name!r} names unknown variant {v!r}" for v in mode.variants if v not in variants)
    for variant in variants or (None,):
        defaults = [mode.name for mode in modes_for(backend, variant) if mode.is_default(variant)]
        if len(defaults) > 1:
            where = f" of variant {variant!r}" if variant else ""
            problems.append(f"modes {', '.join(defaults)} are all the default{where}")
    return list(dict.fromkeys(problems))


def modes_for(backend: object, variant: str | None) -> list[ExecutionMode]:
    """The modes of ``backend`` that exist for ``variant``, in declaration order."""
    return [mode for mode in declared_modes(backend) if mode.applies_to(variant)]


def default_mode(backend: object, variant: str | None) -> ExecutionMode | None:
    """The mode a row without a named mode runs: the declared default, else the first; None without modes."""
    modes = modes_for(backend, variant)
    return next((mode for mode in modes if mode.is_default(variant)), modes[0] if modes else None)


def mode_rows(registry: Registry) -> list[tuple[str, str, str, str]]:
    """(selection, options, default for, help) of every declared mode, for ``cnnbench list``."""
    rows = []
    for name in sorted(registry.backends):
        backend = registry.backends[name].item
        variants = tuple(getattr(backend, "variants", ()) or ())
        for mode in declared_modes(backend):
            applies = [v for v in variants if mode.applies_to(v)] or [None]
            defaults = [v or "yes" for v in applies if mode.is_default(v)]
            options = ", ".join(f"{name}.{key}={value}" for key, value in mode.options.items())
            rows.append((f"{name}:{mode.name}", options, ", ".join(defaults) or "-", mode.help))
    return rows


@dataclass(frozen=True)
class BackendTarget:
    """One row of a run: a backend name, where it has variants which one, and the execution mode."""

    name: str
    variant: str | None = None
    #: The mode named in the selection; None: the backend's default mode (left out of the id).
    mode: str | None = None
    #: The mode's backend options as ("NAME.KEY", value) pairs, applied under explicit ``--backend-option``s.
    mode_options: tuple[tuple[str, str], ...] = ()
    #: The mode this row runs (the named one or the default), for the manifest; None: the backend has none.
    mode_name: str | None = None

    @property
    def id(self) -> str:
        """``name``, ``name:variant``, ``name:mode`` or ``name:variant+mode``: what ``--frameworks`` takes back."""
        suffix = "+".join(part for part in (self.variant, self.mode) if part)
        return f"{self.name}:{suffix}" if suffix else self.name

    @property
    def group(self) -> str:
        """The framework a table groups this row under: ``name`` or ``name:variant``."""
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def configure(self, train: TrainConfig) -> TrainConfig:
        """``train`` with this row's mode options: a named mode wins over ``--backend-option``, the default yields."""
        if not self.mode_options:
            return train
        mode, given = dict(self.mode_options), train.backend_options
        return replace(train, backend_options={**given, **mode} if self.mode else {**mode, **given})

    def manifest(self, configured: TrainConfig, backend: object) -> dict[str, Any]:
        """The manifest entries naming the mode this row ran (``custom`` when options override it).

        ``configured`` is the run's config after ``configure``: what the worker gets.
        """
        if self.mode_name is None:
            return {}
        ran = mode_matching(backend, self.variant, configured.backend_options, self.name)
        name = ran.name if ran else CUSTOM
        default = default_mode(backend, self.variant)
        return {MODE_KEY: name, MODE_DEFAULT_KEY: default is not None and name == default.name}


def mode_matching(
    backend: object,
    variant: str | None,
    options: Mapping[str, str],
    name: str,
) -> ExecutionMode | None:
    """The first mode of ``variant`` whose options all hold in ``options`` (keys ``NAME.KEY``), else None."""
    for mode in modes_for(backend, variant):
        if all(options.get(key) == value for key, value in _canonical_options(backend, name, mode)):
            return mode
    return None


def _canonical_options(backend: object, name: str, mode: ExecutionMode) -> tuple[tuple[str, str], ...]:
    """The mode's options in the canonical form the backend's declared options give them."""
    from cnnbench.backend_options import declared_options

    declared = {option.key: option for option in declared_options(backend)}
    pairs = []
    for key, value in mode.options.items():
        option = declared.get(key)
        try:
            text = option.parse(value) if option is not None else value
        except ValueError:
            text = value
        pairs.append((f"{name}.{key}", text))
    return tuple(pairs)


def _target(backend: object, name: str, variant: str | None, mode: ExecutionMode | None) -> BackendTarget:
    """The row running ``mode`` (None: a backend without modes); the default mode stays out of the id."""
    if mode is None:
        return BackendTarget(name, variant)
    default = default_mode(backend, variant)
    named = None if default is not None and default.name == mode.name else mode.name
    return BackendTarget(name, variant, named, _canonical_options(backend, name, mode), mode.name)


def _selection(name: str, spec: str, backend: object) -> tuple[str | None, ExecutionMode | None]:
    """(variant, named mode) of the words after ``name:``; a UsageError names what is valid."""
    variants = tuple(getattr(backend, "variants", ()) or ())
    modes = {mode.name: mode for mode in declared_modes(backend)}
    variant: str | None = None
    mode: ExecutionMode | None = None
    for word in [part.strip() for part in spec.split("+")] if spec else []:
        if word in variants and variant is None:
            variant = word
        elif word in modes and mode is None:
            mode = modes[word]
        elif word in variants or word in modes:
            what = "variants" if word in variants else "modes"
            raise UsageError(f"{name}:{spec} names two {what}; give at most one variant and one mode")
        else:
            form = f"{name}:VARIANT+MODE" if variants else f"{name}:MODE"
            raise UsageError(
                f"unknown variant {word!r} of framework {name!r}, nor a mode; "
                f"variants: {', '.join(variants) or 'none'}; modes: {', '.join(modes) or 'none'} (as {form})"
            )
    variant = variant or (variants[0] if variants else None)
    if mode is not None and not mode.applies_to(variant):
        raise UsageError(
            f"mode {mode.name!r} of {name} does not apply to variant {variant!r}; "
            f"its modes: {', '.join(m.name for m in modes_for(backend, variant)) or 'none'}"
        )
    return variant, mode


def parse_targets(text: str, registry: Registry, modes: str = "default") -> list[BackendTarget]:
    """``all`` or a comma list of ``name[:variant][+mode]``; ``modes="all"`` expands each to every mode."""
    if modes not in MODES_CHOICES:
        raise UsageError(f"unknown --modes {modes!r}; choose from: {', '.join(MODES_CHOICES)}")
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UsageError("no framework given; valid: " + ", ".join(sorted(registry.backends)) + ", all")
    picked: list[tuple[str, str | None, ExecutionMode | None]] = []
    for item in items:
        if item == "all":
            for name in sorted(registry.backends):
                backend = registry.backends[name].item
                variants = tuple(getattr(backend, "variants", ()) or ())
                picked.append((name, variants[0] if variants else None, None))
            continue
        name, _, spec = item.partition(":")
        backend = registry.backend(name).item
        variant, mode = _selection(name, spec, backend)
        picked.append((name, variant, mode))
    targets: list[BackendTarget] = []
    for name, variant, mode in picked:
        backend = registry.backend(name).item
        if modes == "all":
            default = default_mode(backend, variant)
            ordered = sorted(modes_for(backend, variant), key=lambda each: default is None or each.name != default.name)
            candidates: list[ExecutionMode | None] = list(ordered) or [None]
            targets.extend(_target(backend, name, variant, each) for each in candidates)
        else:
            targets.append(_target(backend, name, variant, mode or default_mode(backend, variant)))
    return _unique(targets)


def _unique(targets: Iterable[BackendTarget]) -> list[BackendTarget]:
    """First occurrence of each row id, in order."""
    seen: dict[str, BackendTarget] = {}
    for target in targets:
        seen.setdefault(target.id, target)
    return list(seen.values())


def group_and_mode(row_id: str, settings: Mapping[str, Any]) -> tuple[str, str]:
    """(framework group, mode label) of a result row, from its id and manifest (older files: mode "-")."""
    name, _, spec = row_id.partition(":")
    words = [word for word in spec.split("+") if word] if spec else []
    mode = settings.get(MODE_KEY)
    variant_words = [word for word in words if word != mode]
    group = f"{name}:{variant_words[0]}" if variant_words else name
    if not isinstance(mode, str):
        return row_id, "-"
    return group, mode
