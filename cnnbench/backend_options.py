"""``--backend-option NAME.KEY=VALUE`` checked in the parent against what each backend declares.

A backend lists its switches in ``Backend.options`` (``cnnbench.backend.BackendOption``). An unknown
backend, an undeclared key or a value of the wrong type is one line and exit 2 before any worker starts,
instead of being ignored by every worker; values reach ``TrainConfig.option`` / ``flag`` in canonical form.
"""

from __future__ import annotations

from collections.abc import Mapping

from cnnbench.backend import BackendOption
from cnnbench.errors import UsageError
from cnnbench.modes import declared
from cnnbench.plugins import Registry


def declared_options(backend: object) -> tuple[BackendOption, ...]:
    """The options a backend declares; a malformed declaration (a plugin bug) counts as none."""
    return declared(backend, "options", BackendOption)


def split_name(name: str) -> tuple[str, str]:
    """``"tf.xla"`` -> ``("tf", "xla")``; a name without a backend prefix is a UsageError."""
    backend, dot, key = name.partition(".")
    if not dot or not backend or not key:
        raise UsageError(f"--backend-option {name!r}: expected NAME.KEY=VALUE, e.g. tf.xla=true")
    return backend, key


def validate_backend_options(options: Mapping[str, str], registry: Registry) -> dict[str, str]:
    """``options`` with each value in canonical form; a UsageError names the first bad option and what is valid."""
    checked: dict[str, str] = {}
    for name, value in options.items():
        backend_name, key = split_name(name)
        try:
            backend = registry.backend(backend_name).item
        except UsageError as exc:
            raise UsageError(f"--backend-option {_shown(name, value)}: {exc}") from None
        declared = {option.key: option for option in declared_options(backend)}
        option = declared.get(key)
        if option is None:
            valid = ", ".join(f"{backend_name}.{k}" for k in sorted(declared)) or "none (it takes no option)"
            raise UsageError(f"--backend-option {_shown(name)}: {backend_name} has no option {key!r}; valid: {valid}")
        try:
            checked[name] = option.parse(value)
        except ValueError as exc:
            raise UsageError(f"--backend-option {_shown(name, value)}: {exc}") from None
    return checked


def _shown(name: str, value: str | None = None) -> str:
    """``NAME=VALUE`` as typed, or its repr when it holds a newline or another unprintable character (one line)."""
    text = name if value is None else f"{name}={value}"
    return text if text.isprintable() else repr(text)
