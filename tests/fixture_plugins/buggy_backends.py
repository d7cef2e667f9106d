"""Buggy backends as a plugin, for ``cnnbench check`` and the run's parity column: the engine must name each bug.

They are the NumPy fixture backends of tests/kit_bad_backends.py (the NumPy example with one bug
each), registered through the same hook as any plugin. Load them with
``CNNBENCH_PLUGIN_MODULES=buggy_backends`` and this folder on ``PYTHONPATH`` (the ``fixture_plugins``
fixture does both); this module puts the tests folder and the NumPy example on the path itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cnnbench import hookimpl

TESTS = Path(__file__).resolve().parent.parent
for folder in (TESTS, TESTS.parent / "examples" / "cnnbench-numpy"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

#: The registered bugs: the kit_bad_backends class of each.
BUGS = (
    "WrongFlattenBackend",
    "ValidPaddingBackend",
    "PadBeforeBackend",
    "SymmetricPaddingBackend",
    "PredictDropoutBackend",
    "EvaluateDropoutBackend",
    "KerasEpsilonBackend",
    "NoResetBackend",
    "UnscaledDropoutBackend",
    "MomentumBackend",
)


@hookimpl
def register_backends(register: Any) -> None:
    import kit_bad_backends

    for bug in BUGS:
        register(getattr(kit_bad_backends, bug)())
