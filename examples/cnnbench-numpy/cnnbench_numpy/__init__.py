"""cnnbench-numpy: registers a pure-NumPy backend and a small model with cnnbench through its entry point.

The backend module is imported inside the hook, so listing plugins stays cheap.
"""

from cnnbench import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    from cnnbench_numpy.backend import NumpyBackend

    register(NumpyBackend())


@hookimpl
def register_models(register):
    """A model of our own: any backend (ours included) trains it with ``--model lenet-small``."""
    from cnnbench.models import Model
    from cnnbench.spec import Conv2D, Dense, Flatten, MaxPool2D, ModelSpec

    def lenet_small(input_shape, num_classes, dropout=None):
        if dropout:
            raise ValueError("lenet-small has no dropout layers")
        layers = (
            Conv2D("conv1", filters=8, kernel_size=3),
            MaxPool2D("pool1"),
            Conv2D("conv2", filters=16, kernel_size=3),
            MaxPool2D("pool2"),
            Flatten(),
            Dense("dense1", units=64),
            Dense("dense2", units=num_classes, activation=None),
        )
        return ModelSpec("lenet-small", input_shape, num_classes, layers)

    register(Model("lenet-small", "a narrow LeNet: 3x3 convs of 8 and 16 filters, dense 64", lenet_small))
