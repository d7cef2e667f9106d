import json

import pytest

from cnnbench import results
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import UsageError
from cnnbench.results import BackendResult, EpochRecord, Measurement, Phases, RunResult


def sample_result() -> RunResult:
    measurement = Measurement(
        epochs=(EpochRecord(1, 0.3, 12.5, 60000, 4800.0, 0.97), EpochRecord(2, 0.1, 10.0, 60000, 6000.0)),
        phases=Phases(import_s=1.2, build_s=0.3, first_epoch_s=12.5, train_s=22.5, eval_s=1.0, total_s=26.0),
        train_throughput=6000.0, train_throughput_samples=(6000.0,), eval_throughput=10000.0,
        test_accuracy=0.985, test_loss=0.05, peak_rss_mb=900.0,
    )
    row = BackendResult("torch", "PyTorch", "2.13.0", "cnnbench", "cpu", 3_255_914, settings={"threads": 2}, repeats=(measurement, measurement))
    return RunResult("20261128T000000Z", "2026-11-28T00:00:00+00:00", TrainConfig(epochs=2, threads=2), DataConfig(dataset="mnist", options={"a": 1}), (row,), {"cpu": "x"})


def test_round_trip_gives_equal_objects(tmp_path):
    original = sample_result()
    path = results.save(original, tmp_path)
    loaded = results.load(path)
    assert loaded == original
    assert isinstance(loaded.backends[0].repeats[0].epochs, tuple)
    assert loaded.backends[0].median("train_throughput") == 6000.0
    assert loaded.backends[0].median("first_epoch_s") == 12.5


def test_future_schema_and_malformed_files_are_usage_errors_naming_the_file(tmp_path):
    future = tmp_path / "future.json"
    data = json.loads(results.dumps(sample_result()))
    data["schema_version"] = results.SCHEMA_VERSION + 1
    future.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="future.json: schema version"):
        results.load(future)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match="broken.json: not valid JSON"):
        results.load(broken)
    with pytest.raises(UsageError, match="missing.json"):
        results.load(tmp_path / "missing.json")


def test_save_is_atomic_and_resolve_finds_latest(tmp_path):
    first = results.save(sample_result(), tmp_path, "20260101T000000Z_a.json")
    second = results.save(sample_result(), tmp_path, "20260102T000000Z_a.json")
    assert not list(tmp_path.glob(".tmp-*"))
    assert results.resolve("latest", tmp_path) == second
    assert results.resolve("latest~1", tmp_path) == first
    assert results.resolve("20260101T000000Z_a", tmp_path) == first
    with pytest.raises(UsageError):
        results.resolve("latest~5", tmp_path)
