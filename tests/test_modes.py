"""Execution modes: parsing ``-f name[:variant][+mode]`` and ``--modes all``, ids, options, manifest, table groups."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console

from cnnbench import report
from cnnbench.backend import BackendOption
from cnnbench.config import TrainConfig
from cnnbench.errors import UsageError
from cnnbench.modes import (
    MODE_DEFAULT_KEY,
    MODE_KEY,
    BackendTarget,
    ExecutionMode,
    declaration_problems,
    group_and_mode,
    parse_targets,
)
from cnnbench.plugins import PluginRecord, Registered, Registry
from cnnbench.results import BackendResult, EpochRecord, Measurement, Phases

PLUGIN = PluginRecord("fake", "fake")


class Plain:
    """A backend with two modes and no variant, like torch."""

    name = "plain"
    variants: tuple[str, ...] = ()
    options = (BackendOption("fast", bool, False),)
    modes = (
        ExecutionMode("slow", {"fast": "false"}, default=True),
        ExecutionMode("fast", {"fast": "yes"}),
    )


class Engines:
    """A backend with engines (variants) whose default mode differs by engine, like keras."""

    name = "engines"
    variants = ("a", "b")
    options = (BackendOption("jit", ("auto", "true", "false")),)
    modes = (
        ExecutionMode("jit", {"jit": "true"}, default=("b",)),
        ExecutionMode("nojit", {"jit": "false"}, variants=("a",), default=("a",)),
    )


class Modeless:
    """A backend that declares no modes (third-party plugins written before modes existed)."""

    name = "modeless"
    variants: tuple[str, ...] = ()


def registry() -> Registry:
    return Registry(backends={b.name: Registered(b(), PLUGIN) for b in (Plain, Engines, Modeless)})


def ids(text: str, modes: str = "default") -> list[str]:
    return [target.id for target in parse_targets(text, registry(), modes)]


def test_a_name_alone_runs_the_default_mode_and_keeps_its_old_id():
    (plain,) = parse_targets("plain", registry())
    assert (plain.id, plain.mode, plain.mode_name) == ("plain", None, "slow")
    assert plain.mode_options == (("plain.fast", "false"),)
    assert ids("engines") == ["engines:a"] and ids("engines:b") == ["engines:b"]
    assert ids("modeless") == ["modeless"]


def test_a_named_mode_is_in_the_id_and_its_options_are_canonical():
    (fast,) = parse_targets("plain:fast", registry())
    assert (fast.id, fast.mode, fast.mode_options) == ("plain:fast", "fast", (("plain.fast", "true"),))
    assert ids("plain:slow") == ["plain"]  # the default mode named: the same row as the bare name


def test_variant_and_mode_combine_in_either_order():
    assert ids("engines:a+jit") == ["engines:a+jit"] and ids("engines:jit+a") == ["engines:a+jit"]
    assert ids("engines:jit") == ["engines:a+jit"]  # the default variant
    assert ids("engines:b+jit") == ["engines:b"]  # jit is b's default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plain:turbo", r"unknown variant 'turbo' of framework 'plain', nor a mode; variants: none; modes: slow, fast"),
        ("engines:b+nojit", r"mode 'nojit' of engines does not apply to variant 'b'; its modes: jit"),
        ("engines:a+b", r"names two variants"),
        ("plain:fast+slow", r"names two modes"),
        ("nothing", r"nothing"),
    ],
)
def test_bad_selections_are_one_line_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_targets(text, registry())


def test_modes_all_gives_every_mode_default_first_and_no_duplicates():
    assert ids("plain,engines:a,engines:b,modeless", "all") == [
        "plain",
        "plain:fast",
        "engines:a",
        "engines:a+jit",
        "engines:b",
        "modeless",
    ]
    assert ids("plain:fast,plain", "all") == ["plain", "plain:fast"]
    with pytest.raises(UsageError, match="unknown --modes"):
        parse_targets("plain", registry(), "some")


def test_all_takes_each_backend_s_default_variant_and_mode():
    assert ids("all") == ["engines:a", "modeless", "plain"]


def test_a_named_mode_wins_over_a_backend_option_and_the_default_mode_yields():
    given = TrainConfig(backend_options={"plain.fast": "true"})
    default, named = (
        parse_targets("plain,plain:slow", registry())[0],
        BackendTarget("plain", None, "slow", (("plain.fast", "false"),), "slow"),
    )
    assert default.configure(given).backend_options == {"plain.fast": "true"}
    assert named.configure(given).backend_options == {"plain.fast": "false"}
    assert BackendTarget("plain").configure(given) is given  # rows built without modes change nothing


def test_the_manifest_names_the_mode_the_options_amount_to():
    backend = Plain()
    (default,) = parse_targets("plain", registry())
    ran = default.configure(TrainConfig())
    assert default.manifest(ran, backend) == {MODE_KEY: "slow", MODE_DEFAULT_KEY: True}
    overridden = default.configure(TrainConfig(backend_options={"plain.fast": "true"}))
    assert default.manifest(overridden, backend) == {MODE_KEY: "fast", MODE_DEFAULT_KEY: False}
    odd = default.configure(TrainConfig(backend_options={"plain.fast": "maybe"}))
    assert default.manifest(odd, backend)[MODE_KEY] == "custom"
    assert BackendTarget("modeless").manifest(TrainConfig(), Modeless()) == {}


@pytest.mark.parametrize("name", ["", "a:b", "a+b", "a b", "a,b", 3])
def test_a_malformed_mode_declaration_fails_at_import(name):
    with pytest.raises(TypeError, match="ExecutionMode name"):
        ExecutionMode(name)  # type: ignore[arg-type]


def test_the_builtin_backends_declare_a_default_mode_each():
    from cnnbench.plugins import load_registry

    real = load_registry()
    expected = {"tf": "graph", "torch": "eager", "jax": "jit", "keras:tensorflow": "nojit"}
    targets = {target.id: target for target in parse_targets("tf,torch,jax,keras", real)}
    assert {key: targets[key].mode_name for key in expected} == expected
    assert [t.id for t in parse_targets("keras:jax,keras:torch", real, "all")] == [
        "keras:jax",
        "keras:torch",
        "keras:torch+jit",
    ]


def row(backend: str, mode: str | None, default: bool, first: float = 10.0, rate: float = 100.0) -> BackendResult:
    settings = {} if mode is None else {MODE_KEY: mode, MODE_DEFAULT_KEY: default}
    epoch = EpochRecord(1, 0.5, first, 600, 600 / first)
    measurement = Measurement(epochs=(epoch,), phases=Phases(first_epoch_s=first), train_throughput=rate)
    return BackendResult(backend=backend, settings=settings, repeats=(measurement,))


def test_group_and_mode_read_the_id_and_the_manifest():
    assert group_and_mode("keras:jax+jit", {MODE_KEY: "jit"}) == ("keras:jax", "jit")
    assert group_and_mode("keras:tensorflow", {MODE_KEY: "nojit"}) == ("keras:tensorflow", "nojit")
    assert group_and_mode("torch:compile", {MODE_KEY: "compile"}) == ("torch", "compile")
    assert group_and_mode("torch:compile", {}) == ("torch:compile", "-")  # an older file: no mode recorded


def test_the_table_groups_modes_under_their_framework_default_first():
    rows = (
        row("tf:xla", "xla", False),
        row("torch", "eager", True),
        row("tf", "graph", True),
        row("torch:compile", "compile", False),
    )
    grouped = [(group, label, r.backend) for group, label, r in report.grouped_rows(rows)]
    assert grouped == [
        ("tf", "graph *", "tf"),
        ("tf", "xla", "tf:xla"),
        ("torch", "eager *", "torch"),
        ("torch", "compile", "torch:compile"),
    ]


def test_compile_seconds_is_the_first_epoch_beyond_its_steady_rate():
    assert report.compile_seconds(row("tf", "graph", True, first=10.0, rate=100.0)) == [pytest.approx(4.0)]
    assert report.compile_seconds(row("tf", "graph", True, first=5.0, rate=100.0)) == [0.0]  # noise: never negative
    assert report.warmup_seconds(Measurement()) is None


def test_the_printed_table_shows_the_framework_once_and_marks_the_default(tmp_path):
    from tests.resultgen import full_run

    run = full_run()
    run = replace(run, backends=(row("tf", "graph", True), row("tf:xla", "xla", False)))
    console = Console(file=io.StringIO(), width=250, color_system=None)
    report.print_result(run, console)
    text = console.file.getvalue()
    lines = [line for line in text.splitlines() if "graph" in line or "xla" in line]
    assert lines[0].split("│")[1].strip() == "tf" and lines[1].split("│")[1].strip() == ""
    assert "graph *" in lines[0] and "default mode" in text


def test_declaration_problems_name_each_mistake():
    assert declaration_problems(Plain()) == [] and declaration_problems(Engines()) == []

    class Bad:
        variants = ("a",)
        options = (BackendOption("x", bool),)
        modes = (
            ExecutionMode("a", {"x": "true"}, default=True),
            ExecutionMode("b", {"y": "1"}, default=True),
            ExecutionMode("c", variants=("z",)),
            ExecutionMode("c"),
        )

    assert declaration_problems(Bad()) == [
        "mode 'a' has the name of a variant: -f cannot tell them apart",
        "mode 'b' sets 'y', which is not a declared option",
        "mode 'c' is declared twice",
        "mode 'c' names unknown variant 'z'",
        "modes a, b are all the default of variant 'a'",
    ]


def test_the_builtin_backends_declare_their_modes_without_problems():
    from cnnbench.plugins import load_registry

    for registered in load_registry().backends.values():
        assert declaration_problems(registered.item) == [], registered.name


def test_mode_rows_list_each_mode_with_its_options_and_where_it_is_default():
    from cnnbench.modes import mode_rows

    rows = mode_rows(registry())
    assert ("plain:fast", "plain.fast=yes", "-", "") in rows and ("plain:slow", "plain.fast=false", "yes", "") in rows
    assert ("engines:nojit", "engines.jit=false", "a", "") in rows
    assert ("engines:jit", "engines.jit=true", "b", "") in rows
