"""The benchmark scripts whose output the README quotes still run and print what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FRAMEWORK_MODULES = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}


def script_env(data_dir, tmp_path) -> dict:
    return {
        **os.environ,
        "CNNBENCH_DATA_DIR": str(data_dir),
        "CNNBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "2",
        "CNNBENCH_RESULTS_DIR": str(tmp_path / "results"),
    }


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_MODULES))
def test_bare_loop_prints_one_rate_per_epoch(framework, data_dir, tmp_path):
    pytest.importorskip(FRAMEWORK_MODULES[framework])
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bare_loops.py"), framework, "2", "500"],
        capture_output=True,
        text=True,
        env=script_env(data_dir, tmp_path),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["framework"] == framework
    assert len(line["samples_per_s"]) == 2 and all(rate > 0 for rate in line["samples_per_s"])


def test_protocol_overhead_reports_every_abba_round(data_dir, tmp_path):
    pytest.importorskip("torch")
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "harness_overhead.py"),
            "--skip-bare",
            "--protocol-rounds",
            "2",
            "--n-train",
            "1000",
        ],
        capture_output=True,
        text=True,
        env=script_env(data_dir, tmp_path),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = " ".join(out.stdout.split())
    assert "protocol overhead (PyTorch, one epoch of 1,000, 2 ABBA rounds): median" in report
    assert report.count("%,") == 1  # two per-round figures, comma-separated
