"""cnnbench-numpy: registers the pure-NumPy backend with cnnbench through the ``cnnbench`` entry point.

The backend module is imported inside the hook, so listing plugins stays cheap.
"""

from cnnbench import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    from cnnbench_numpy.backend import NumpyBackend

    register(NumpyBackend())
