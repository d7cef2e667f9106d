"""Named networks, registered by plugins (the built-ins included) through ``register_models``.

A ``Model`` is a recipe: it builds the ``ModelSpec`` for a dataset's input shape and classes, so
one name serves MNIST and CIFAR-10 alike. ``--model NAME`` picks one; results record its name and
the spec's digest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cnnbench.spec import ModelSpec

#: What ``--model`` takes when it is not given: the chapter's LeNet.
DEFAULT_MODEL = "lenet"

#: ``build(input_shape, num_classes, dropout)``: dropout None means the model's default for that input.
SpecBuilder = Callable[[tuple[int, int, int], int, "float | None"], ModelSpec]


@dataclass(frozen=True)
class Model:
    """A network registered by name; ``spec`` builds and validates it for a dataset."""

    name: str
    description: str
    build: SpecBuilder

    def spec(self, input_shape: tuple[int, ...], num_classes: int, dropout: float | None = None) -> ModelSpec:
        """The validated spec for ``input_shape`` (H, W, C) and ``num_classes``; a ValueError says why not."""
        height, width, channels = (int(size) for size in input_shape)
        spec = self.build((height, width, channels), int(num_classes), dropout)
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"model {self.name!r} built a {type(spec).__name__}, not a ModelSpec")
        spec.validate()
        return spec
