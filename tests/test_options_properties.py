"""Property tests of the option parser: any text a user types is accepted or refused in one line, never a traceback."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnnbench.backend import BackendOption
from cnnbench.backend_options import validate_backend_options
from cnnbench.cli import cli
from cnnbench.commands import common
from cnnbench.config import TrainConfig, check_timeout, parse_key_values
from cnnbench.errors import ExitCode, UsageError
from cnnbench.plugins import load_registry

#: Option text: printable and not, markup brackets, separators, huge and odd numbers.
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
PIECES = st.sampled_from(["tf", "torch", "jax", "keras", "numpy", ".", "=", "xla", "true", "[/]", "nan", "1e309", "-1"])
OPTION_TEXT = st.one_of(TEXT, st.lists(PIECES, max_size=6).map("".join))

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def outcome(call: Callable[[], T], refusal: type[E]) -> T | E:
    """The call's value or its refusal: these properties accept either outcome and check each one."""
    try:
        return call()
    except refusal as exc:
        return exc


@given(pairs=st.lists(OPTION_TEXT, max_size=4))
def test_key_value_pairs_parse_or_name_the_option(pairs: list[str]) -> None:
    parsed = outcome(lambda: parse_key_values(pairs, "--backend-option"), UsageError)
    if isinstance(parsed, UsageError):
        assert "--backend-option" in str(parsed) and "\n" not in str(parsed).strip()
        return
    assert all(key == key.strip() and key for key in parsed)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60, deadline=None)
@given(options=st.dictionaries(OPTION_TEXT, OPTION_TEXT, max_size=3))
def test_backend_options_are_canonical_or_refused_in_one_line(options: dict[str, str]) -> None:
    registry = load_registry()
    checked = outcome(lambda: validate_backend_options(options, registry), UsageError)
    if isinstance(checked, UsageError):
        assert str(checked).startswith("--backend-option") and "\n" not in str(checked)
        return
    assert checked.keys() == options.keys()


@given(value=OPTION_TEXT, values=st.sampled_from([bool, int, float, str, ("auto", "on", "off")]))
def test_a_declared_option_parses_to_text_or_says_what_fits(value: str, values: object) -> None:
    option = BackendOption("switch", values)  # type: ignore[arg-type]
    canonical = outcome(lambda: option.parse(value), ValueError)
    if isinstance(canonical, ValueError):
        assert str(canonical).startswith("expected")
        return
    assert option.parse(canonical) == canonical  # canonical text is a fixed point


@given(timeout=st.floats(allow_nan=True, allow_infinity=True))
def test_timeouts_are_positive_finite_seconds(timeout: float) -> None:
    try:
        check_timeout(timeout)
    except UsageError:
        assert not (math.isfinite(timeout) and timeout > 0)
        return
    assert math.isfinite(timeout) and timeout > 0


@given(seed=st.integers(min_value=-(2**70), max_value=2**70))
def test_seeds_outside_every_frameworks_range_are_refused(seed: int) -> None:
    refusal = outcome(TrainConfig(seed=seed).validate, UsageError)
    if isinstance(refusal, UsageError):
        assert not 0 <= seed < 2**32 and "seed" in str(refusal)
        return
    assert 0 <= seed < 2**32


FLAGS = st.sampled_from(
    [
        "--seed",
        "--epochs",
        "--batch-size",
        "--lr",
        "--threads",
        "--timeout",
        "--dropout",
        "--validation",
        "--limit-train",
        "--backend-option",
        "--frameworks",
        "--dataset",
    ]
)


class WouldMeasure(Exception):
    """Raised instead of starting workers: the options were all accepted."""


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], max_examples=60, deadline=None
)
@given(flag=FLAGS, value=OPTION_TEXT.filter(lambda text: "\x00" not in text))
@example(flag="--frameworks", value="[/]")
@example(flag="--dataset", value="[link=http://x]evil[/link]")
@example(flag="--backend-option", value="tf.xla=maybe")
@example(flag="--threads", value="999")
def test_the_run_command_never_shows_a_traceback_for_a_bad_value(
    flag: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def would_measure(*args: object, **kwargs: object) -> None:
        raise WouldMeasure

    monkeypatch.setattr(common, "run_benchmark", would_measure)
    args = ["run", "-f", "all", "-d", "synthetic", "--results-dir", str(tmp_path), flag, value]
    result = CliRunner().invoke(cli, args)
    if isinstance(result.exception, WouldMeasure):
        return  # accepted: the value was valid (and nothing was measured)
    assert result.exit_code == ExitCode.USAGE, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") <= 3  # click's usage lines at most, else one error line
