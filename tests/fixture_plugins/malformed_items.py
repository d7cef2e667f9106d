"""Backends and datasets a plugin might register by mistake, each with the reason cnnbench must give.

``BACKENDS`` and ``DATASETS`` map a description to ``(item, a fragment of the expected reason)``.
Not a plugin itself (no hooks): tests register each item through a plugin of their own.
"""

from __future__ import annotations

from typing import Any

from stub_items import StubBackend, StubDataset


class NarrowSession(StubBackend):
    """Forgot the ``config`` and ``variant`` parameters the harness passes."""

    def create_session(self, spec: Any) -> Any:  # type: ignore[override]
        raise NotImplementedError


class Bare:
    """Duck-typed: has the attributes, none of the methods."""

    name = "bare"
    framework = "Bare"
    variants = ()
    deterministic = False


class ExplodingName(StubBackend):
    def __init__(self) -> None:
        """No name to set: reading it raises."""

    @property
    def name(self) -> str:  # type: ignore[override]
        raise RuntimeError("name lookup exploded")


class NoConfigLoad(StubDataset):
    def load(self) -> Any:  # type: ignore[override]
        raise NotImplementedError


class StatusTakesNothing(StubDataset):
    def status(self) -> dict[str, Any]:  # type: ignore[override]
        return {}


LINK = "https://example.com"
SHAPE = "input_shape must be (height, width, channels)"

BACKENDS: dict[str, tuple[Any, str]] = {
    "the class, not an instance": (StubBackend, "registered the class StubBackend instead of an instance"),
    "no name": (StubBackend(""), "name '' is not valid"),
    "a name that is not a string": (StubBackend(3), "name must be a string, got int"),  # type: ignore[arg-type]
    "rich markup in the name": (StubBackend(f"[link={LINK}]x"), f"name '[link={LINK}]x' is not valid"),
    "an escape sequence in the name": (StubBackend("tor\x1b[2Jch"), "name 'tor\\x1b[2Jch' is not valid"),
    "a colon in the name": (StubBackend("a:b"), "name 'a:b' is not valid"),
    "a dot in the name": (StubBackend("a.b"), "name 'a.b' is not valid"),
    "the reserved name all": (StubBackend("all"), "name 'all' is reserved"),
    "a name too long": (StubBackend("x" * 65), "is not valid"),
    "no framework": (StubBackend("nofw", framework=None), "framework must be a non-empty string, got NoneType"),
    "an OSC hyperlink in the framework": (
        StubBackend("osc", framework=f"Py\x1b]8;;{LINK}\x07Torch"),
        "framework contains control characters",
    ),
    "variants as None": (StubBackend("vnone", variants=None), "variants must be a tuple of names, got NoneType"),
    "variants as a string": (StubBackend("vstr", variants="jax"), "variants must be a tuple of names, got str"),
    "a variant with a colon": (StubBackend("vcolon", variants=("a:b",)), "variant 'a:b' is not valid"),
    "a repeated variant": (StubBackend("vrepeat", variants=("jax", "jax")), "variant 'jax' is repeated"),
    "deterministic as a string": (StubBackend("det", deterministic="yes"), "deterministic must be True or False"),
    "no methods": (Bare(), "unavailable_reason, framework_version, process_environment, import_framework"),
    "create_session without config": (
        NarrowSession("narrow"),
        "create_session cannot be called as create_session(spec, config, variant)",
    ),
    "a name that raises": (ExplodingName(), "reading name raised RuntimeError: name lookup exploded"),
}

DATASETS: dict[str, tuple[Any, str]] = {
    "the class, not an instance": (StubDataset, "registered the class StubDataset instead of an instance"),
    "rich markup in the name": (StubDataset("[bold]x"), "name '[bold]x' is not valid"),
    "a description that is not a string": (StubDataset("d1", description=7), "description must be a string, got int"),
    "control characters in the description": (
        StubDataset("d2", description="a\x1b[31mred"),
        "description contains control characters",
    ),
    "a two-dimensional input shape": (StubDataset("d3", input_shape=(28, 28)), SHAPE),
    "a zero in the input shape": (StubDataset("d4", input_shape=(0, 28, 1)), SHAPE),
    "a string in the input shape": (StubDataset("d5", input_shape=("28", 28, 1)), SHAPE),
    "class names not a tuple": (StubDataset("d6", class_names=10), "class_names must be a tuple of at least 2 strings"),
    "one class": (StubDataset("d7", class_names=("only",)), "class_names must be a tuple of at least 2 strings"),
    "a negative n_train": (StubDataset("d8", n_train=-1), "n_train must be None or a non-negative int, got -1"),
    "load without config": (NoConfigLoad("d9"), "load cannot be called as load(config)"),
    "status without config": (StatusTakesNothing("d10"), "status cannot be called as status(config)"),
}
