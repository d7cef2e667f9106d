"""cnnbench's PyTorch backend, registered through the ``cnnbench`` entry-point group."""

from cnnbench import hookimpl


@hookimpl
def register_backends(register):
    from cnnbench_torch.backend import TorchBackend

    register(TorchBackend())
