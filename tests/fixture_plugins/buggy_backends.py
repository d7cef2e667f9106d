"""PyTorch backends with one deliberate modelling bug each: the parity check must catch every one.

Each wraps the real PyTorch backend, so everything but the bug is genuine. Load them with
``CNNBENCH_PLUGIN_MODULES=buggy_backends`` and this folder on ``PYTHONPATH`` (the
``fixture_plugins`` fixture does both).
"""

from __future__ import annotations

from dataclasses import replace

from cnnbench import hookimpl
from cnnbench.spec import Conv2D
from cnnbench_torch.backend import TorchBackend


def _flatten_in_chw_order(session) -> None:
    """The classic port bug: PyTorch's own (C, H, W) flatten while the weights assume (H, W, C)."""
    from torch import nn

    for index, module in enumerate(session.model):
        if type(module).__name__ == "NHWCFlatten":
            session.model[index] = nn.Flatten()


def _pad_extra_before(session) -> None:
    """SAME padding with the odd extra row/column before instead of after (same shapes, other numbers)."""
    from torch import nn

    for index, module in enumerate(session.model):
        if isinstance(module, nn.Conv2d) and module.padding == "same":
            (height, width) = module.kernel_size
            module.padding = (0, 0)  # the explicit pad below does it, on the wrong side
            session.model[index] = nn.Sequential(nn.ZeroPad2d((width // 2, (width - 1) // 2, height // 2, (height - 1) // 2)), module)


def _dropout_in_eval(session) -> None:
    """Forgetting to switch to inference mode: dropout stays active in predict, gradients and evaluate."""
    model = session.model
    model.eval = lambda: model.train(True)


class BuggyBackend(TorchBackend):
    """The PyTorch backend with the bug named by ``bug``."""

    BUGS = {
        "flatten": "flatten in (C, H, W) order",
        "valid": "VALID instead of SAME padding in the convolutions",
        "eval-dropout": "dropout left on in inference",
        "pad-before": "SAME padding's extra row/column before instead of after",
    }
    deterministic = False

    def __init__(self, bug: str):
        self.bug = bug
        self.name = f"buggy-{bug}"
        self.framework = f"PyTorch with a bug: {self.BUGS[bug]}"

    def create_session(self, spec, config, variant=None):
        if self.bug == "valid":
            # A framework that infers shapes builds dense1 from what the VALID convolutions produce.
            layers = tuple(replace(layer, padding="VALID") if isinstance(layer, Conv2D) else layer for layer in spec.layers)
            spec = replace(spec, layers=layers)
        session = super().create_session(spec, config, variant)
        if self.bug == "flatten":
            _flatten_in_chw_order(session)
        elif self.bug == "pad-before":
            _pad_extra_before(session)
        elif self.bug == "eval-dropout":
            _dropout_in_eval(session)
        return session


@hookimpl
def register_backends(register):
    for bug in BuggyBackend.BUGS:
        register(BuggyBackend(bug))
