"""cnnbench: train one CNN (the chapter's LeNet, or another model) in several frameworks; compare accuracy and speed."""

__version__ = "0.1.0"  # the one copy: pyproject.toml reads it ([tool.setuptools.dynamic])

from cnnbench.hookspecs import hookimpl  # what plugin authors import

__all__ = ["__version__", "hookimpl"]
