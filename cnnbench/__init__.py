"""cnnbench: train one LeNet in several deep-learning frameworks and compare accuracy and speed."""

__version__ = "0.1.0"

from cnnbench.hookspecs import hookimpl  # noqa: E402  (what plugin authors import)

__all__ = ["__version__", "hookimpl"]
