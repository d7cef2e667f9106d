"""First and second load times of MNIST and CIFAR-10, and what checking the cache costs (printed, not asserted).

The first load reads the official files, verifies every sha256, parses and writes the array
cache; the second maps the cached .npy files and checks them against the sha256 recorded when
they were written, which is what every framework's worker process does. The second load is timed
in this process and in a fresh process (interpreter start-up excluded), in a temporary cache so
nothing of the user's cache is reused. "verify" is the part of a second load spent on that check
(hashing every file of the entry); docs/decisions.md quotes it.

    python benchmarks/dataset_load.py [--data-dir ../shared/data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CNNBENCH_DATA_DIR") or REPO.parent / "shared" / "data")

WORKER = """
import json, sys, time
from cnnbench.config import DataConfig
from cnnbench.plugins import load_registry
name, data_dir = sys.argv[1], sys.argv[2]
dataset = load_registry().dataset(name).item
start = time.perf_counter()
arrays = dataset.load(DataConfig(dataset=name, data_dir=data_dir, offline=True))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "cache": arrays.cache}))
"""


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3, help="second loads timed (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cnnbench-bench-cache-") as cache:
        os.environ["CNNBENCH_CACHE_DIR"] = cache
        from cnnbench.config import DataConfig
        from cnnbench.datasets import cache as array_cache
        from cnnbench.plugins import load_registry

        registry = load_registry()
        print(f"data: {args.data_dir}   cache: temporary   cpus: {os.cpu_count()}   load average: {load_average()}")
        print(
            f"{'dataset':<10} {'first load':>11} {'second (same process)':>22} {'second (fresh process)':>23}"
            f" {'verify':>9} {'cached':>9} {'hash rate':>10}  source"
        )
        for name in ("mnist", "cifar10"):
            dataset = registry.dataset(name).item
            config = DataConfig(dataset=name, data_dir=str(args.data_dir), offline=True)
            if not dataset.status(config)["available"]:
                print(f"{name:<10} skipped: not found under {args.data_dir}")
                continue
            start = time.perf_counter()
            arrays = dataset.load(config)
            first = time.perf_counter() - start
            same = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                dataset.load(config)
                same.append(time.perf_counter() - start)
            source = dataset.locate(config)
            assert source is not None
            key = dataset._cache_key(source)
            verify = []
            for _ in range(args.repeats):
                hit = array_cache.load(name, key)
                assert hit is not None, "the cache entry vanished"
                verify.append(hit.verify_s)
            entry_bytes = sum(path.stat().st_size for path in Path(arrays.cache).iterdir())
            verify_s = statistics.median(verify)
            fresh = []
            for _ in range(args.repeats):
                command = [sys.executable, "-c", WORKER, name, str(args.data_dir)]
                out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
                report = json.loads(out.stdout.strip().splitlines()[-1])
                assert report["cache"] == arrays.cache, "the worker did not hit the parent's cache"
                fresh.append(report["seconds"])
            print(
                f"{name:<10} {first:>10.2f}s {statistics.median(same) * 1000:>20.1f}ms"
                f" {statistics.median(fresh) * 1000:>21.1f}ms"
                f" {verify_s * 1000:>7.1f}ms {entry_bytes / 1e6:>7.1f}MB {entry_bytes / verify_s / 1e9:>6.2f}GB/s"
                f"  {arrays.source} (verified: {arrays.verified})"
            )
        print("second loads and verify: median of", args.repeats, "- timings are noisy on a shared machine")
        print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
