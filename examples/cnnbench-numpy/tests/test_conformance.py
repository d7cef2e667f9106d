"""The whole cnnbench conformance kit on the NumPy backend.

``backend_name`` makes the kit find the backend the way ``cnnbench run`` does - through the
``cnnbench`` entry point of the installed distribution - so this also proves the packaging.
(``backend = NumpyBackend()`` would test the class directly.)
"""

from cnnbench.testing import BackendConformance


class TestNumpyBackend(BackendConformance):
    backend_name = "numpy"
