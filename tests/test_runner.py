"""Isolation: every way a backend can fail becomes a row; the real backends still run and are saved."""

import pytest
from click.testing import CliRunner

from cnnbench import results
from cnnbench.cli import cli
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.timing import epoch_batch_indices
from cnnbench.runner import BackendTarget, RunOptions, parse_frameworks, run_benchmark

SMALL_DATA = DataConfig(dataset="synthetic", options={"n_train": 600, "n_test": 200})
SMALL_TRAIN = TrainConfig(epochs=2, batch_size=50, threads=1, warmup_steps=2)


def test_batch_order_depends_only_on_seed_and_epoch():
    a = epoch_batch_indices(0, 1, 1050, 100)
    assert a.shape == (10, 100) and len(set(a.ravel())) == 1000
    assert (a == epoch_batch_indices(0, 1, 1050, 100)).all()
    assert not (a == epoch_batch_indices(0, 2, 1050, 100)).all()
    assert not (a == epoch_batch_indices(1, 1, 1050, 100)).all()


def test_parse_frameworks_expands_all_and_deduplicates():
    registry = load_registry()
    targets = parse_frameworks("torch,all,torch", registry)
    assert targets[0] == BackendTarget("torch") and targets.count(BackendTarget("torch")) == 1


def test_every_fault_is_a_row_and_real_results_are_saved(fixture_plugins, tmp_path):
    fixture_plugins("faulty_backends")
    registry = load_registry()
    targets = parse_frameworks("faulty-import,faulty-raise,faulty-hang,faulty-nan,faulty-kill,torch", registry)
    result, path = run_benchmark(targets, registry, SMALL_TRAIN, SMALL_DATA, RunOptions(timeout_s=30, results_dir=str(tmp_path)))
    rows = {row.backend: row for row in result.backends}
    assert rows["faulty-import"].status == "failed" and "injected failure while importing" in rows["faulty-import"].reason
    assert rows["faulty-raise"].status == "failed" and "injected failure in the middle" in rows["faulty-raise"].reason
    assert rows["faulty-nan"].status == "diverged" and "loss became nan" in rows["faulty-nan"].reason
    assert rows["faulty-kill"].status == "failed" and "SIGKILL" in rows["faulty-kill"].reason
    assert rows["torch"].status == "ok" and rows["torch"].median("test_accuracy") > 0.5
    # the hang is cut by the timeout, which must not have swallowed the remaining backends
    assert rows["faulty-hang"].status == "timeout"
    saved = results.load(path)
    assert [row.backend for row in saved.backends] == [t.id for t in targets]
    assert saved.backends[-1].repeats[0].train_throughput > 0


def test_repeats_run_in_fresh_processes_and_keep_every_sample(tmp_path):
    registry = load_registry()
    result, _ = run_benchmark([BackendTarget("torch")], registry, SMALL_TRAIN, SMALL_DATA, RunOptions(repeat=2, results_dir=str(tmp_path)))
    row = result.backends[0]
    assert len(row.repeats) == 2 and all(m.status == "ok" for m in row.repeats)
    assert len(row.values("train_throughput")) == 2
    # same seed, same batches, deterministic backend: identical accuracy in both processes
    assert row.repeats[0].test_accuracy == row.repeats[1].test_accuracy
    assert row.parameters == 3_255_914 and row.settings["intra_op_threads"] == 1
    assert row.repeats[0].phases.import_s > 0 and row.repeats[0].peak_rss_mb > 50


def test_time_to_accuracy_counts_training_time_only(tmp_path):
    registry = load_registry()
    result, _ = run_benchmark([BackendTarget("torch")], registry, SMALL_TRAIN, SMALL_DATA, RunOptions(target_accuracy=0.5, save=False))
    m = result.backends[0].repeats[0]
    assert all(e.test_accuracy is not None for e in m.epochs)
    reached = next(i for i, e in enumerate(m.epochs) if e.test_accuracy >= 0.5)
    assert m.time_to_accuracy_s == pytest.approx(sum(e.seconds for e in m.epochs[: reached + 1]))
    assert m.phases.train_s == pytest.approx(sum(e.seconds for e in m.epochs))


def test_cli_run_prints_the_table_and_saves(results_dir):
    out = CliRunner().invoke(cli, ["run", "-f", "torch", "-d", "synthetic", "--dataset-option", "n_train=600", "--dataset-option", "n_test=200", "--threads", "1"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    for column in ("framework", "version", "device", "params", "test acc", "train samples/s", "eval samples/s", "first epoch s", "total s"):
        assert column in out.output
    assert "3,255,914" in out.output
    assert len(list(results_dir.glob("*.json"))) == 1
