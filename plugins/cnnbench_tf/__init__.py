"""cnnbench's TensorFlow raw ops backend, registered through the ``cnnbench`` entry-point group."""

from cnnbench import hookimpl


@hookimpl
def register_backends(register):
    from cnnbench_tf.backend import TFRawBackend

    register(TFRawBackend())
