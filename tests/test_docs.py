"""docs/plugins.md stays true: every hook, every Backend/Session member, every kit check and
plugin variable is documented, and the minimal complete example in it passes the kit's checks."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import tomllib

from cnnbench import hookspecs, plugins, testing
from cnnbench.backend import Backend, Session, missing_module_reason

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
TEXT = DOCS.read_text()


def hooks() -> dict[str, inspect.Signature]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: inspect.signature(obj) for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker)
    }


def members(cls: type) -> tuple[list[str], list[str]]:
    """(methods, attributes) a subclass may define: public names in the class body."""
    methods, attributes = [], []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        (methods if callable(value) else attributes).append(name)
    return methods, attributes


def test_the_hooks_are_found():
    assert {"register_backends", "register_datasets"} <= set(hooks())


@pytest.mark.parametrize("hook", sorted(hooks()))
def test_every_hook_is_documented_with_its_arguments(hook):
    arguments = ", ".join(hooks()[hook].parameters)
    assert f"{hook}({arguments})" in TEXT, f"docs/plugins.md does not document the hook {hook}({arguments})"


@pytest.mark.parametrize("cls", [Backend, Session], ids=lambda c: c.__name__)
def test_every_backend_and_session_method_is_documented(cls):
    methods, attributes = members(cls)
    assert methods, f"no methods found on {cls.__name__}"
    undocumented = [m for m in methods if not re.search(rf"\*\*`{m}\(self", TEXT)]
    assert not undocumented, (
        f"{cls.__name__} methods missing from docs/plugins.md (as **`name(self, ...)`**): {undocumented}"
    )
    missing = [a for a in attributes if not re.search(rf"^\s+{a}: ", TEXT, re.MULTILINE)]
    assert not missing, f"{cls.__name__} attributes missing from the class sketches in docs/plugins.md: {missing}"


def test_errors_variables_and_commands_are_documented():
    for text in (
        "BackendError",
        "BackendUnavailable",
        plugins.ALLOW_ENV,
        plugins.BLOCK_ENV,
        plugins.EXTRA_MODULES_ENV,
        "[project.entry-points.cnnbench]",
        "cnnbench plugins",
        "cnnbench check",
        "cnnbench.testing",
    ):
        assert text in TEXT, f"docs/plugins.md does not mention {text}"


def test_every_kit_check_is_documented():
    checks = [name for name in vars(testing.BackendConformance) if name.startswith("test_")]
    assert len(checks) >= 10
    missing = [name for name in checks if f"`{name}`" not in TEXT]
    assert not missing, f"kit checks missing from the table in docs/plugins.md: {missing}"


def test_required_settings_are_the_documented_ones():
    for key in testing.REQUIRED_SETTINGS:
        assert f"`{key}`" in TEXT


def example_files() -> dict[str, str]:
    """The fenced blocks of the minimal complete example: ```<lang> file=<path>."""
    return dict(re.findall(r"^```\w+ file=(\S+)\n(.*?)^```$", TEXT, re.MULTILINE | re.DOTALL))


def test_example_files_are_complete():
    files = example_files()
    assert set(files) == {
        "pyproject.toml",
        "cnnbench_mytorch/__init__.py",
        "cnnbench_mytorch/backend.py",
        "tests/test_conformance.py",
    }
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["entry-points"]["cnnbench"] == {"mytorch": "cnnbench_mytorch"}
    for path, source in files.items():
        if path.endswith(".py"):
            compile(source, path, "exec")


@pytest.fixture
def example_backend(tmp_path, monkeypatch):
    if missing_module_reason("torch", extra="torch"):
        pytest.skip("the documented example is built on PyTorch, which is not installed")
    for path, source in example_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from cnnbench_mytorch.backend import MyTorchBackend

    yield MyTorchBackend()
    for name in [m for m in sys.modules if m.startswith("cnnbench_mytorch")]:
        del sys.modules[name]


def test_the_documented_example_passes_the_kits_checks(example_backend):
    """The fast checks in-process (the full kit, with its worker run, is the same code path as the example plugin's)."""
    testing.check_identity(example_backend)
    with testing.ConformanceKit(example_backend) as kit:
        for model in testing.MODELS:
            built = kit.built(model)
            testing.check_parameter_count(
                built.spec, built.created_weights, "after create_session", built.created_error
            )
            testing.check_predict_matches_spec(kit.trial(model))
        mnist = kit.trial("mnist")
        testing.check_loss_and_gradients(mnist)
        testing.check_losses_belong_to_rows(mnist)
        testing.check_batch_order(mnist)
        testing.check_settings(mnist)
        testing.check_optimizer_step(mnist)
        testing.check_optimizer_step(kit.trial("mnist", "sgd"))
        testing.check_dropout_only_in_training(kit.trial("cifar"))
        testing.check_loss_decreases(mnist)
