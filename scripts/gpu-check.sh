#!/usr/bin/env bash
# GPU check: run the GPU tests and a short benchmark of every backend installed here, print tables.
#
#   scripts/gpu-check.sh            # from the repository root, on a machine with a CUDA GPU
#
# Meant for a CUDA machine that may have only some frameworks (e.g. PyTorch and JAX with CUDA, no
# TensorFlow): a framework that is missing shows as "unavailable" with the reason and the rest runs.
# Works from a plain checkout (cnnbench need not be pip-installed: the plugins are loaded through
# PYTHONPATH and CNNBENCH_PLUGIN_MODULES). Needs no network: the benchmark uses the synthetic
# dataset. Budget: under 8 minutes (every step has a timeout; see the STEP_* variables).
#
#   PYTHON=python3.11         interpreter to use [python3, or .venv/bin/python when present]
#   GPU_CHECK_ALLOW_CPU=1     run the same steps without a GPU (to test this script on a CPU box)
#   GPU_CHECK_OUT=DIR         where results and logs go [$OUT when set (device runner), else ./gpu-check]
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-$ROOT/gpu-check}}"
mkdir -p "$OUT_DIR"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c "import sys" 2>/dev/null; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
STEP_TESTS=${STEP_TESTS:-210}       # seconds for the GPU tests
STEP_BENCH=${STEP_BENCH:-150}       # seconds for the benchmark run (all backends)
STEP_SCALE=${STEP_SCALE:-90}       # seconds for the multi-GPU scaling run (only with 2+ GPUs)

say() { printf '\n== %s (%ss elapsed)\n' "$*" "$(( $(date +%s) - START ))"; }

# A plain checkout works: cnnbench and the built-in plugins from the source tree.
export PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "from importlib.metadata import entry_points; import sys; sys.exit(0 if any(e.name == 'torch' for e in entry_points(group='cnnbench')) else 1)" 2>/dev/null; then
    export CNNBENCH_PLUGIN_MODULES="cnnbench.datasets.plugin,cnnbench_torch,cnnbench_tf,cnnbench_keras,cnnbench_jax"
fi
export CNNBENCH_RESULTS_DIR="$OUT_DIR/results"
CNNBENCH=("$PYTHON" -m cnnbench.cli)

say "machine"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
"$PYTHON" --version
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = ["numpy", "pluggy", "click", "rich", "platformdirs", "psutil", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
    echo "cannot run cnnbench here: missing Python packages: $missing (pip install -e '.[test]' or install them)"
    exit 3
fi
"$PYTHON" - <<'EOF'
import importlib.util
for module in ("torch", "tensorflow", "keras", "jax", "optax"):
    print(f"{module:>10}: {'installed' if importlib.util.find_spec(module) else 'not installed'}")
if importlib.util.find_spec("torch"):
    import torch
    print(f"{'torch':>10}: {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible")
if importlib.util.find_spec("jax"):
    import jax
    print(f"{'jax':>10}: {jax.__version__}, devices {[str(d) for d in jax.devices()]}")
EOF

GPUS=$("$PYTHON" - <<'EOF' 2>/dev/null
import importlib.util
count = 0
if importlib.util.find_spec("torch"):
    import torch
    count = torch.cuda.device_count()
if not count and importlib.util.find_spec("jax"):
    import jax
    try:
        count = len(jax.devices("gpu"))
    except RuntimeError:
        count = 0
print(count)
EOF
)
GPUS=${GPUS:-0}
DEVICE=cuda
if [[ "$GPUS" == "0" ]]; then
    if [[ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]]; then
        echo "no CUDA GPU visible to torch or jax: nothing to measure (GPU_CHECK_ALLOW_CPU=1 runs the steps on the CPU)"
        exit 2
    fi
    echo "no GPU: GPU_CHECK_ALLOW_CPU=1, running the same steps on the CPU with smaller sizes"
    DEVICE=cpu
fi

say "GPU tests (tests/test_gpu.py; each test skips with the reason when its framework or devices are missing)"
timeout -s INT -k 20 "$STEP_TESTS" "$PYTHON" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider 2>&1 | tail -25
echo "pytest exit code: ${PIPESTATUS[0]}"

# Every backend, default variants plus the Keras engines that may be present without TensorFlow.
FRAMEWORKS="torch,tf,jax,keras:jax,keras:torch,keras:tensorflow"
if [[ "$DEVICE" == "cuda" ]]; then N_TRAIN=30000; EPOCHS=2; else N_TRAIN=2000; EPOCHS=1; fi
say "benchmark: $FRAMEWORKS on $DEVICE, synthetic $N_TRAIN images, batch 100, $EPOCHS epochs"
timeout -s INT -k 20 "$STEP_BENCH" "${CNNBENCH[@]}" run -f "$FRAMEWORKS" --device "$DEVICE" -d synthetic \
    --dataset-option "n_train=$N_TRAIN" --dataset-option n_test=5000 --epochs "$EPOCHS" --batch-size 100 \
    --timeout 90 --skip-parity 2>&1 | tee "$OUT_DIR/benchmark.txt" | grep -av "━"
echo "benchmark exit code: ${PIPESTATUS[0]}"
"${CNNBENCH[@]}" export latest --format markdown -o "$OUT_DIR/benchmark.md" 2>/dev/null && echo "markdown table: $OUT_DIR/benchmark.md"

if [[ "$GPUS" -ge 2 ]]; then
    say "data-parallel scaling on $GPUS GPUs: torch (NCCL), jax.sharding, keras:jax"
    timeout -s INT -k 20 "$STEP_SCALE" "${CNNBENCH[@]}" scale -f torch,jax,keras:jax,tf --device cuda --devices "1,2" -d synthetic \
        --dataset-option "n_train=$N_TRAIN" --dataset-option n_test=5000 --epochs 1 --batch-size 100 --timeout 60 --skip-parity 2>&1 \
        | tee "$OUT_DIR/scaling.txt" | grep -av "━"
else
    say "data-parallel scaling skipped: $GPUS GPU(s) visible (needs 2+)"
fi

say "done; results in $OUT_DIR"
