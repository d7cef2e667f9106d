"""Data-parallel runs on simulated devices: cluster description, launchers, gradient averaging per
engine, accuracy of N=2 against N=1, a killed rank, and the scaling report."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from cnnbench import distributed, results
from cnnbench.cli import cli
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import UsageError
from cnnbench.plugins import load_registry
from cnnbench.runner import BackendTarget, RunObserver, RunOptions, harness_environment, parse_frameworks, run_benchmark

HERE = Path(__file__).resolve().parent
SYNTHETIC = DataConfig(dataset="synthetic", options={"n_train": 1000, "n_test": 300})


# --- cluster, launchers, sharding: no framework involved ---------------------------------------


def test_cluster_comes_from_the_environment():
    assert distributed.cluster({}) == distributed.Cluster()
    where = distributed.cluster({"CNNBENCH_HOSTS": "10.0.0.1:29500, 10.0.0.2:29500", "CNNBENCH_HOST_INDEX": "1"})
    assert where.multi_host and where.num_hosts == 2 and where.index == 1 and where.coordinator == ("10.0.0.1", 29500)
    assert distributed.replicas(TrainConfig(devices=4), where) == 8
    assert distributed.global_batch_size(TrainConfig(devices=4, batch_size=32), where) == 256
    for environ, message in [
        ({"CNNBENCH_HOSTS": "10.0.0.1"}, "ADDRESS:PORT"),
        ({"CNNBENCH_HOSTS": "a:1,b:2"}, "set CNNBENCH_HOST_INDEX"),
        ({"CNNBENCH_HOSTS": "a:1,b:2", "CNNBENCH_HOST_INDEX": "2"}, "outside 0..1"),
        ({"CNNBENCH_HOSTS": "a:1,b:2", "CNNBENCH_HOST_INDEX": "x"}, "must be an integer"),
    ]:
        with pytest.raises(UsageError, match=message):
            distributed.cluster(environ)


def test_torchrun_uses_the_loopback_address_on_one_host_and_static_rendezvous_on_several():
    args = distributed.torchrun_arguments(2, distributed.Cluster())
    assert args[:2] == ["-m", "torch.distributed.run"]
    option = dict(zip(args[2::2], args[3::2], strict=False))
    assert option["--nproc-per-node"] == "2" and option["--nnodes"] == "1" and option["--max-restarts"] == "0"
    assert option["--master-addr"] == option["--local-addr"] == "127.0.0.1" and 0 < int(option["--master-port"]) < 65536
    where = distributed.Cluster(("10.0.0.1:29500", "10.0.0.2:29500"), 1)
    option = dict(zip(*[iter(distributed.torchrun_arguments(8, where)[2:])] * 2, strict=False))
    assert (
        option["--nnodes"] == "2"
        and option["--node-rank"] == "1"
        and option["--master-addr"] == "10.0.0.1"
        and option["--master-port"] == "29500"
    )


def test_tf_config_makes_every_host_a_worker():
    config = json.loads(distributed.tf_config(distributed.Cluster(("h0:1", "h1:2", "h2:3"), 2)))
    assert config == {"cluster": {"worker": ["h0:1", "h1:2", "h2:3"]}, "task": {"type": "worker", "index": 2}}


def test_forced_host_devices_flag_keeps_other_flags_and_replaces_an_earlier_count():
    flags = distributed.with_forced_host_devices("--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8", 2)
    assert flags.split() == ["--xla_dump_to=/tmp/x", "--xla_force_host_platform_device_count=2"]


def test_device_counts():
    assert distributed.parse_device_counts("2", distributed.Cluster()) == [1, 2]
    assert distributed.parse_device_counts("6", distributed.Cluster()) == [1, 2, 4, 6]
    assert distributed.parse_device_counts("3,1", distributed.Cluster()) == [1, 3]
    assert distributed.parse_device_counts("4", distributed.Cluster(("a:1", "b:1"), 0)) == [4]
    for bad in ("0", "x", "", "1,-2"):
        with pytest.raises(UsageError):
            distributed.parse_device_counts(bad, distributed.Cluster())
    with pytest.raises(UsageError, match="devices must be at least 1"):
        TrainConfig(devices=0).validate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--devices", "0"], "--devices takes positive integers, got '0'"),
        (["scale", "--devices", "two"], "--devices takes positive integers, got 'two'"),
    ],
)
def test_bad_device_counts_are_one_line_errors(args, message):
    out = CliRunner().invoke(cli, [*args, "-f", "torch", "-d", "synthetic"], catch_exceptions=False)
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 2 and len(lines) == 1 and message in lines[0], out.output


def test_a_bad_host_list_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("CNNBENCH_HOSTS", "10.0.0.1")
    out = CliRunner().invoke(cli, ["run", "--devices", "2", "-f", "torch", "-d", "synthetic"], catch_exceptions=False)
    assert out.exit_code == 2 and "ADDRESS:PORT" in out.output and "Traceback" not in out.output


def test_shards_cover_the_batch_once_and_differ_by_at_most_one():
    for n, parts in [(100, 2), (16, 3), (7, 4)]:
        bounds = [distributed.shard_bounds(n, parts, i) for i in range(parts)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_only_the_first_local_rank_reports():
    assert distributed.is_reporting_process({}) and distributed.is_reporting_process({"LOCAL_RANK": "0"})
    assert not distributed.is_reporting_process({"LOCAL_RANK": "1"})


TORCHRUN_FAILURE = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
cnnbench.worker FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_08:30:01
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================
"""


def test_a_torchrun_failure_names_the_rank_and_the_signal():
    assert distributed.describe_launcher_failure(TORCHRUN_FAILURE) == (
        "distributed worker rank 1 (local rank 1) killed by SIGKILL; torchrun stopped the other ranks"
    )
    assert distributed.describe_launcher_failure("Traceback ...\nValueError: boom") is None
    # rank 0 usually fails too, only saying that its peer went away: the dead rank stays the reason
    combined = distributed.describe_launcher_failure(TORCHRUN_FAILURE, "RuntimeError: Connection reset by peer")
    assert combined.startswith("distributed worker rank 1") and combined.endswith(
        "(local rank 0 then failed: RuntimeError: Connection reset by peer)"
    )
    # when local rank 0 is the root cause, its own error is the better reason
    assert (
        distributed.describe_launcher_failure(
            TORCHRUN_FAILURE.replace("(local_rank: 1)", "(local_rank: 0)"), "ValueError: bug"
        )
        is None
    )


@pytest.mark.requires("keras")
def test_engines_without_data_parallel_are_unsupported_rows_without_a_worker(tmp_path):
    registry = load_registry()
    targets = parse_frameworks("keras:tensorflow,keras:torch", registry)
    result, _ = run_benchmark(targets, registry, TrainConfig(devices=2, threads=1), SYNTHETIC, RunOptions(save=False))
    for row in result.backends:
        assert row.status == "unsupported" and "keras:jax" in row.reason and not row.repeats


def test_scaling_report_from_saved_runs(tmp_path):
    """Speed-up against the same backend's 1-device run, efficiency = speed-up / devices, accuracy delta."""
    import resultgen

    def at(devices: int, rows):
        run = resultgen.run(rows)
        return replace(run, run_id=f"run{devices}", train=replace(run.train, devices=devices))

    one = at(1, [resultgen.backend("torch", [1000.0], accuracy=0.98), resultgen.backend("jax", [500.0], accuracy=0.97)])
    torch_two = replace(
        resultgen.backend("torch", [1500.0], accuracy=0.975),
        device="cpu (2 processes)",
        settings={"devices_per_host": 2, "hosts": 1, "global_batch": 200, "data_parallel": "torch DDP"},
    )
    jax_two = resultgen.backend("jax", [], status="unsupported", reason="not here")
    two = at(2, [torch_two, jax_two])
    paths = [resultgen.save(run, tmp_path, f"{run.run_id}.json") for run in (two, one)]
    out = CliRunner().invoke(cli, ["scale", "--from", str(paths[0]), "--from", str(paths[1])], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert (
        "1.50x" in out.output
        and "75%" in out.output
        and "-0.50 pt" in out.output
        and "unsupported: not here" in out.output
    )
    assert "simulated" in out.output  # every data-parallel row ran on CPU devices
    from cnnbench.scaling import baseline, collect, speedup

    points = collect([one, two])
    assert [p.replicas for p in points["torch"]] == [1, 2] and points["torch"][1].global_batch == 200
    assert speedup(points["torch"][1], baseline(points["torch"])) == pytest.approx(1.5)
    assert speedup(points["jax"][1], baseline(points["jax"])) is None


# --- the engines: gradient averaging ------------------------------------------------------------


def worker_environment(backend, variant, config: TrainConfig) -> dict[str, str]:
    env_base, _ = harness_environment(config, "system")
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **env_base, **backend.process_environment(variant, config), "PYTHONPATH": pythonpath}


def check_gradient_averaging(target: str, tmp_path: Path, device: str = "auto") -> str:
    """Runs dp_step_check.py for ``target`` on 2 devices; asserts the updates match; returns the device."""
    registry = load_registry()
    name, _, variant = target.partition(":")
    backend = registry.backend(name).item
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    config = TrainConfig(devices=2, threads=1, optimizer="sgd", device=device)
    out = tmp_path / "step.npz"
    command = [
        sys.executable,
        *backend.worker_launcher(variant or None, config),
        str(HERE / "dp_step_check.py"),
        target,
        "2",
        device,
        str(out),
    ]
    done = subprocess.run(
        command, env=worker_environment(backend, variant or None, config), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = np.load(out)
    device = str(saved["parallel_device"])
    assert device.startswith("2 x") or "2 logical" in device or "2 processes" in device, device
    np.testing.assert_allclose(saved["parallel_losses"], saved["single_losses"], rtol=1e-5)
    names = [key.split("/", 1)[1] for key in saved.files if key.startswith("single/")]
    for weight in names:
        initial, single, parallel = saved[f"initial/{weight}"], saved[f"single/{weight}"], saved[f"parallel/{weight}"]
        update, parallel_update = single - initial, parallel - initial
        assert np.abs(update).max() > 0, weight
        error = np.abs(parallel_update - update).max()
        assert error <= 1e-3 * np.abs(update).max() + 1e-7, (
            f"{weight}: update differs by {error:.3g} (max update {np.abs(update).max():.3g})"
        )
    return device


@pytest.mark.parametrize("target", ["torch", "tf", "jax", "keras:jax"])
def test_one_step_on_two_devices_equals_one_step_on_the_concatenated_batch(target, tmp_path):
    """SGD (so the gradient's scale shows in the update): a sum instead of a mean, or one replica's
    gradient instead of the average, would change the update by a factor of 2 or by half a batch."""
    check_gradient_averaging(target, tmp_path, device="cpu")


# --- whole runs ---------------------------------------------------------------------------------


@pytest.mark.requires("torch")
def test_two_torch_ranks_train_to_the_accuracy_of_one_device_with_the_same_global_batch(tmp_path):
    """N=2 with per-device batch 20 against N=1 with batch 40: the same global batches, in the same order.

    Adam amplifies the rounding differences of summing two shards, so the runs are compared where
    training has levelled off (3 epochs of 25 steps), in an accuracy band, and by loss curves."""
    registry = load_registry()
    train = TrainConfig(epochs=3, batch_size=40, threads=2, warmup_steps=2)
    one, _ = run_benchmark([BackendTarget("torch")], registry, train, SYNTHETIC, RunOptions(save=False))
    two, _ = run_benchmark(
        [BackendTarget("torch")], registry, replace(train, batch_size=20, devices=2), SYNTHETIC, RunOptions(save=False)
    )
    row_one, row_two = one.backends[0], two.backends[0]
    assert row_one.status == row_two.status == "ok", (row_one.reason, row_two.reason)
    assert (
        row_two.settings["global_batch"] == 40
        and row_two.settings["world_size"] == 2
        and "DistributedDataParallel" in row_two.settings["data_parallel"]
    )
    accuracy_one, accuracy_two = row_one.median("test_accuracy"), row_two.median("test_accuracy")
    assert accuracy_one > 0.9 and abs(accuracy_two - accuracy_one) <= 0.03, (accuracy_one, accuracy_two)
    losses_one = [e.train_loss for e in row_one.repeats[0].epochs]
    losses_two = [e.train_loss for e in row_two.repeats[0].epochs]
    np.testing.assert_allclose(losses_two, losses_one, rtol=0.1)


class KillRankOne(RunObserver):
    """Kills torchrun's rank 1 (SIGKILL) at the first progress event of the run."""

    def __init__(self):
        self.killed_at: float | None = None
        self.victim: int | None = None

    def progress(self, target, epoch, done, total) -> None:
        if self.killed_at is not None:
            return
        for child in psutil.Process().children(recursive=True):
            try:
                if child.environ().get("RANK") == "1" and "cnnbench.worker" in " ".join(child.cmdline()):
                    self.victim = child.pid
                    child.kill()
                    self.killed_at = time.perf_counter()
                    return
            except psutil.Error:
                continue


@pytest.mark.requires("torch")
def test_a_killed_rank_ends_the_run_with_a_clear_status_not_a_hang():
    registry = load_registry()
    data = DataConfig(dataset="synthetic", options={"n_train": 2000, "n_test": 100})
    train = TrainConfig(epochs=5, batch_size=10, threads=2, devices=2)
    observer = KillRankOne()
    result, _ = run_benchmark(
        [BackendTarget("torch")], registry, train, data, RunOptions(save=False, timeout_s=180), observer
    )
    ended = time.perf_counter()
    row = result.backends[0]
    assert observer.killed_at is not None, "rank 1 was not found"
    assert row.status == "failed", row.reason
    assert "rank 1" in row.reason and "SIGKILL" in row.reason, row.reason
    assert ended - observer.killed_at < 60
    assert not psutil.pid_exists(observer.victim) or psutil.Process(observer.victim).status() == psutil.STATUS_ZOMBIE
    leftover = [c for c in psutil.Process().children(recursive=True) if "cnnbench.worker" in " ".join(c.cmdline())]
    assert not leftover, leftover


@pytest.mark.slow
def test_cli_scaling_report_for_every_backend(results_dir):
    """`run --devices 2` measures 1 and 2 devices for every backend and prints the scaling table."""
    args = [
        "run",
        "-f",
        "torch,tf,jax,keras:jax,keras",
        "--devices",
        "2",
        "-d",
        "synthetic",
        "--dataset-option",
        "n_train=1000",
        "--dataset-option",
        "n_test=300",
        "--epochs",
        "3",
        "--batch-size",
        "20",
        "--threads",
        "2",
        "--skip-parity",
    ]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    for text in (
        "Data-parallel scaling",
        "speed-up",
        "efficiency",
        "global batch",
        "DistributedDataParallel",
        "MirroredStrategy",
        "jax.sharding",
        "DataParallel",
        "unsupported",
    ):
        assert text in out.output, text
    saved = sorted((results.load(p) for p in results_dir.glob("*.json")), key=lambda r: r.train.devices)
    assert [r.train.devices for r in saved] == [1, 2]
    one = {row.backend: row for row in saved[0].backends}
    two = {row.backend: row for row in saved[1].backends}
    assert "keras:tensorflow" not in one and two["keras:tensorflow"].status == "unsupported"
    for backend in ("torch", "tf", "jax", "keras:jax"):
        assert one[backend].status == two[backend].status == "ok", (backend, one[backend].reason, two[backend].reason)
        assert two[backend].settings["global_batch"] == 40
        accuracy_one, accuracy_two = one[backend].median("test_accuracy"), two[backend].median("test_accuracy")
        assert accuracy_one > 0.9 and abs(accuracy_two - accuracy_one) <= 0.08, (backend, accuracy_one, accuracy_two)


def run_two_hosts_on_loopback(target: str, tmp_path: Path) -> list:
    """Two cnnbench processes as hosts 0 and 1 of CNNBENCH_HOSTS, both on 127.0.0.1."""
    hosts = ",".join(f"127.0.0.1:{distributed.free_port()}" for _ in range(2))
    args = [
        "-m",
        "cnnbench.cli",
        "run",
        "-f",
        target,
        "--devices",
        "1",
        "-d",
        "synthetic",
        "--dataset-option",
        "n_train=600",
        "--dataset-option",
        "n_test=200",
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--threads",
        "1",
        "--skip-parity",
        "--timeout",
        "240",
    ]
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            "CNNBENCH_HOSTS": hosts,
            "CNNBENCH_HOST_INDEX": str(index),
            "GLOO_SOCKET_IFNAME": distributed.loopback_interface() or "lo",
        }
        folder = tmp_path / f"host{index}"
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, *args, "--results-dir", str(folder)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                folder,
            )
        )
    rows = []
    for proc, folder in processes:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
        (saved,) = [results.load(path) for path in folder.glob("*.json")]
        rows.append(saved.backends[0])
    return rows


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("torch", marks=pytest.mark.requires("torch")),
        pytest.param("tf", marks=pytest.mark.slow),
        pytest.param("jax", marks=pytest.mark.slow),
        pytest.param("keras:jax", marks=pytest.mark.slow),
    ],
)
def test_two_hosts_on_the_loopback_address_train_one_model(target, tmp_path):
    """The multi-host path (torchrun static rendezvous, TF_CONFIG, jax.distributed) with two local processes."""
    rows = run_two_hosts_on_loopback(target, tmp_path)
    for row in rows:
        assert row.status == "ok", row.reason
        assert row.settings["hosts"] == 2 and row.settings["global_batch"] == 40
    # one model, trained in lockstep: both hosts evaluate the same weights
    assert rows[0].median("test_accuracy") == rows[1].median("test_accuracy") > 0.5
