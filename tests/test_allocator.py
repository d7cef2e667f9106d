"""--allocator: what is found where, what auto picks, what the worker's environment and the manifest say."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnbench import allocator
from cnnbench.allocator import Allocator
from cnnbench.config import TrainConfig
from cnnbench.errors import UsageError
from cnnbench.runner import harness_environment


def fake_library(folder: Path, name: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return str(path)


def finder(libraries: dict[str, tuple[str, str | None]], glibc: bool = True):
    return lambda: allocator.available(libraries, glibc)


def test_auto_follows_the_measured_order(tmp_path):
    tc = fake_library(tmp_path, "libtcmalloc_minimal.so.4")
    mi = fake_library(tmp_path, "libmimalloc.so.3")
    both = {allocator.TCMALLOC: (tc, None), allocator.MIMALLOC: (mi, "3.4.3")}
    assert allocator.resolve("auto", finder(both)).library == tc
    assert allocator.resolve("auto", finder({allocator.MIMALLOC: (mi, "3.4.3")})).library == mi
    assert allocator.resolve("auto", finder({})).name == allocator.GLIBC_TUNED  # a fresh glibc machine
    assert allocator.resolve("auto", finder({}, glibc=False)).name == allocator.SYSTEM  # musl, macOS


def test_an_asked_allocator_that_is_missing_is_a_usage_error_with_the_install_hint():
    with pytest.raises(UsageError, match=r"allocator tcmalloc is not available here \(apt-get install libtcmalloc"):
        allocator.resolve("tcmalloc", finder({}))
    with pytest.raises(UsageError, match="pip install cmeel-mimalloc"):
        allocator.resolve("mimalloc", finder({}))
    with pytest.raises(UsageError, match="unknown allocator 'hoard'"):
        allocator.resolve("hoard", finder({}))


def test_a_library_is_preloaded_and_described_with_its_version(tmp_path):
    mi = fake_library(tmp_path, "libmimalloc.so.3")
    chosen = allocator.resolve("mimalloc", finder({allocator.MIMALLOC: (mi, "3.4.3")}))
    env, manifest = allocator.environment(chosen, inherited={})
    assert env == {"LD_PRELOAD": mi, "MIMALLOC_PURGE_DELAY": "-1"}
    assert manifest["allocator"] == f"mimalloc 3.4.3 ({mi})" and manifest["allocator_name"] == "mimalloc"
    assert manifest["allocator_env"] == env


def test_glibc_tuned_sets_tunables_and_nothing_to_preload():
    env, manifest = allocator.environment(allocator.resolve("glibc-tuned", finder({})), inherited={})
    assert set(env) == {"GLIBC_TUNABLES"} and "glibc.malloc.mmap_max=0" in env["GLIBC_TUNABLES"]
    assert manifest["allocator"].startswith("glibc malloc, GLIBC_TUNABLES=glibc.malloc.")
    assert allocator.environment(Allocator("system"), inherited={})[0] == {}


def test_an_inherited_preload_stays_behind_ours_and_is_recorded(tmp_path):
    mi = fake_library(tmp_path, "libmimalloc.so.3")
    env, manifest = allocator.environment(Allocator("mimalloc", {"LD_PRELOAD": mi}, mi), {"LD_PRELOAD": "/x/libfoo.so"})
    assert env["LD_PRELOAD"] == f"{mi} /x/libfoo.so" and manifest["inherited_ld_preload"] == "/x/libfoo.so"
    _, manifest = allocator.environment(Allocator("system"), {"LD_PRELOAD": "/x/libjemalloc.so.2"})
    assert manifest["inherited_ld_preload"] == "/x/libjemalloc.so.2"  # "system" is not what the worker runs then


def test_mimalloc_is_found_through_the_wheel_s_file_list(tmp_path, monkeypatch):
    lib = fake_library(tmp_path / "cmeel.prefix" / "lib", "libmimalloc.so.3")

    class File:
        def __init__(self, relative: str) -> None:
            self.name = Path(relative).name
            self.relative = relative

    class Dist:
        version = "3.4.3"
        files = (File("cmeel.prefix/include/mimalloc.h"), File("cmeel.prefix/lib/libmimalloc.so.3"))

        def locate_file(self, file: File) -> Path:
            return tmp_path / file.relative

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    assert allocator.find_mimalloc() == (str(Path(lib).resolve()), "3.4.3")

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert allocator.find_mimalloc() is None


def test_debian_libraries_are_found_by_their_paths(tmp_path, monkeypatch):
    je = fake_library(tmp_path, "libjemalloc.so.2")
    monkeypatch.setattr(allocator, "SYSTEM_LIBRARIES", {allocator.JEMALLOC: (str(tmp_path / "none.so"), je)})
    monkeypatch.setattr(allocator, "find_mimalloc", lambda: None)
    assert allocator.find_libraries() == {allocator.JEMALLOC: (je, None)}


def test_harness_environment_records_the_allocator_for_every_backend(monkeypatch):
    monkeypatch.setattr(allocator, "find_libraries", dict)  # a fresh machine: nothing to preload
    monkeypatch.setattr(allocator, "glibc_available", lambda: True)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env, manifest = harness_environment(TrainConfig(threads=2), "auto")
    assert env["OMP_NUM_THREADS"] == "2" and "GLIBC_TUNABLES" in env and "LD_PRELOAD" not in env
    assert manifest["allocator_name"] == "glibc-tuned" and manifest["threads_requested"] == 2
    with pytest.raises(UsageError):
        harness_environment(TrainConfig(threads=2), "tcmalloc")
