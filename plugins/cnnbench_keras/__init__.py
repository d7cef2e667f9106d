"""cnnbench's Keras 3 backend, registered through the ``cnnbench`` entry-point group."""

from cnnbench import hookimpl


@hookimpl
def register_backends(register):
    from cnnbench_keras.backend import KerasBackend

    register(KerasBackend())
