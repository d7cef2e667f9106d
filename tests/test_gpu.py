"""The GPU path: every installed backend trains on CUDA and passes the parity check there (TF32 off),
data-parallel gradients are averaged across two GPUs, and asking for more GPUs than exist is a row
status. Every test skips with the reason on a machine without a CUDA GPU; scripts/gpu-check.sh runs
this file where one exists."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.runner import BackendTarget, RunOptions, run_benchmark
from test_distributed import check_gradient_averaging

DATA = DataConfig(dataset="synthetic", options={"n_train": 2000, "n_test": 500})
TARGETS = ["torch", "tf", "jax", "keras:jax", "keras:torch", "keras:tensorflow"]


def gpu_count() -> int:
    """GPUs that nvidia-smi lists (no framework imported in the test process)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


GPUS = gpu_count()
needs_gpu = pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU (nvidia-smi lists none)")
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason=f"data-parallel on GPUs needs 2, this machine has {GPUS}")


def target_or_skip(text: str) -> BackendTarget:
    name, _, variant = text.partition(":")
    registry = load_registry()
    backend = registry.backend(name).item
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(reason)
    if name == "keras" and variant:  # the engine is a separate framework that may be missing
        from cnnbench.backend import missing_module_reason

        engine_missing = missing_module_reason(variant, extra=variant)
        if engine_missing:
            pytest.skip(engine_missing)
    return BackendTarget(name, variant or (backend.variants[0] if backend.variants else None))


@needs_gpu
@pytest.mark.parametrize("target", TARGETS)
def test_backend_trains_on_the_gpu_and_passes_parity(target):
    registry = load_registry()
    train = TrainConfig(epochs=2, batch_size=50, warmup_steps=2, device="cuda")
    result, _ = run_benchmark(
        [target_or_skip(target)], registry, train, DATA, RunOptions(save=False, parity=True, timeout_s=240)
    )
    row = result.backends[0]
    if row.status == "unavailable":
        pytest.skip(f"{target}: {row.reason}")  # e.g. a CPU-only build of this framework
    assert row.status == "ok", row.reason
    assert "cuda" in row.device, row.device
    assert row.parity.get("status") == "PASS", row.parity
    assert row.median("test_accuracy") > 0.9


@needs_two_gpus
@pytest.mark.parametrize("target", ["torch", "tf", "jax", "keras:jax"])
def test_gradients_are_averaged_across_two_gpus(target, tmp_path):
    target_or_skip(target)
    device = check_gradient_averaging(target, tmp_path, device="cuda")
    assert device == "cuda"


@needs_gpu
def test_more_gpus_than_the_machine_has_is_a_row_status():
    registry = load_registry()
    train = TrainConfig(epochs=1, batch_size=50, warmup_steps=2, device="cuda", devices=GPUS + 1)
    result, _ = run_benchmark([target_or_skip("torch")], registry, train, DATA, RunOptions(save=False, timeout_s=180))
    row = result.backends[0]
    assert row.status == "unavailable" and "CUDA device" in row.reason, row.reason
