"""cnnbench's JAX backend, registered through the ``cnnbench`` entry-point group."""

from cnnbench import hookimpl


@hookimpl
def register_backends(register):
    from cnnbench_jax.backend import JaxBackend

    register(JaxBackend())
