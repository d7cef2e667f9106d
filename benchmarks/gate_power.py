"""The CI gate's power and false-alarm rate, measured: `cnnbench ab` against an injected, known slowdown.

Each trial is one full `cnnbench ab` comparison (the command CI runs, as a subprocess) whose head
side trains with `$CNNBENCH_INJECTED_DELAY` (tests/fixture_plugins/delayed_backends.py): 0 is an
A/A pair (identical code on both sides), 0.1 makes every training call 10% longer. Trials of the
different slowdowns are interleaved so that the machine's load drifts hit them alike. Prints, per
slowdown, how often the gate said regression / no regression / inconclusive, the comparisons'
time and rounds (median and range), the estimated throughput ratio against the injected one, and
the load average (`uptime`) before and after. Targets (issue 17): a 10% slowdown caught in at
least 90% of trials, A/A false alarms at most 5%, under 10 minutes a comparison.

    python benchmarks/gate_power.py --trials 20                       # numpy backend, quick settings
    python benchmarks/gate_power.py --trials 20 --framework delayed-torch --json power.json
    python benchmarks/gate_power.py --trials 2 --slowdowns 0,0.2 --budget 3m    # a smoke run
    python benchmarks/gate_power.py --trials 40 --jobs 6    # 6 comparisons at once, 2 CPUs each (>= 12 CPUs)

On a quiet 2-core machine a comparison takes ~1.3 minutes (docs/ci.md): 20 trials of two slowdowns
with --jobs 2 --cpus-per-job 1 take ~30 minutes. Run it on a quiet machine. With --jobs N each stream
is pinned to its own CPUs (--cpus-per-job, default 2), so the streams share only memory bandwidth and
caches; keep N x CPUs per job within the machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Quick settings: one comparison in a few minutes on 2 cores, long enough epochs for a stable rate.
DEFAULT_RUN_ARGS = "-d synthetic -e 3 --limit-train 1500 --limit-test 200 --threads 1"


def uptime() -> str:
    """The load averages (1, 5, 15 min), as `uptime` prints them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def plugin_env() -> dict[str, str]:
    """The example NumPy backend and the injected-delay wrapper, visible to ab and every run it starts."""
    paths = [str(REPO / "examples" / "cnnbench-numpy"), str(REPO / "tests" / "fixture_plugins")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    modules = [m for m in env.get("CNNBENCH_PLUGIN_MODULES", "").split(",") if m]
    env["CNNBENCH_PLUGIN_MODULES"] = ",".join(dict.fromkeys([*modules, "cnnbench_numpy", "delayed_backends"]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def one_trial(
    slowdown: float,
    trial: int,
    args: argparse.Namespace,
    folder: Path,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """One `cnnbench ab` comparison with the head slowed by ``slowdown``; its verdict, time and estimate."""
    out = folder / f"trial{trial:03d}-delay{slowdown:g}.json"
    command = [
        sys.executable,
        "-m",
        "cnnbench.cli",
        "ab",
        "--base",
        "current",
        "--head",
        "current",
        "--head-env",
        f"CNNBENCH_INJECTED_DELAY={slowdown:g}",
        "--threshold",
        args.threshold,
        "--budget",
        args.budget,
        "--seed",
        str(trial),
        "--json",
        str(out),
        *shlex.split(args.ab_args),
        "--",
        "-f",
        args.framework,
        *shlex.split(args.run_args),
    ]
    start = time.monotonic()

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by ab, its runs and their workers

    done = subprocess.run(command, env=plugin_env(), capture_output=True, text=True, cwd=folder, preexec_fn=pin)
    seconds = time.monotonic() - start
    if not out.exists():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        return {
            "slowdown": slowdown,
            "verdict": "error",
            "exit_code": done.returncode,
            "seconds": seconds,
            "rounds": 0,
            "ratio": None,
            "output": tail,
        }
    return trial_record(json.loads(out.read_text()), slowdown, done.returncode, seconds)


def trial_record(data: dict[str, Any], slowdown: float, exit_code: int, seconds: float) -> dict[str, Any]:
    """What the summary needs of one comparison's ``ab --json`` output."""
    estimate = data["estimates"][0] if data["estimates"] else {}
    return {
        "slowdown": slowdown,
        "verdict": data["verdict"],
        "exit_code": exit_code,
        "seconds": seconds,
        "rounds": len(data["rounds"]),
        "ratio": estimate.get("median_ratio"),
        "interval": [estimate.get("low"), estimate.get("high")],
    }


def kept_trials(folder: Path) -> dict[tuple[int, float], dict[str, Any]]:
    """(trial, slowdown) -> record of every comparison an earlier run kept in ``folder`` (for ``--resume``)."""
    found = {}
    for path in sorted(folder.glob("trial*-delay*.json")):
        trial_text, _, delay_text = path.stem.removeprefix("trial").partition("-delay")
        data = json.loads(path.read_text())
        found[(int(trial_text), float(delay_text))] = trial_record(
            data, float(delay_text), int(data.get("exit_code", 0)), float(data.get("elapsed_s") or 0.0)
        )
    return found


def spread(values: list[float], digits: int = 1) -> str:
    """``median (min-max)`` of the values."""
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summarise(trials: list[dict[str, Any]], slowdowns: list[float]) -> list[str]:
    """One paragraph per slowdown: the verdict rates, time per comparison, rounds and estimated ratios."""
    lines = []
    for slowdown in slowdowns:
        mine = [t for t in trials if t["slowdown"] == slowdown]
        n = len(mine)
        counts = {v: sum(1 for t in mine if t["verdict"] == v) for v in sorted({t["verdict"] for t in mine})}
        regress = counts.get("regression", 0)
        what = "A/A: false alarms" if slowdown == 0 else f"{100 * slowdown:g}% longer steps: caught"
        target = " (target <= 5%)" if slowdown == 0 else " (target >= 90%)" if abs(slowdown - 0.1) < 1e-9 else ""
        ratios = [t["ratio"] for t in mine if t["ratio"] is not None]
        lines += [
            f"delay {slowdown:g}: {what} {regress}/{n} = {100 * regress / max(n, 1):.0f}%{target}",
            "  verdicts: " + ", ".join(f"{v} {c}" for v, c in counts.items()),
            f"  minutes per comparison: {spread([t['seconds'] / 60 for t in mine])}; "
            f"rounds: {spread([float(t['rounds']) for t in mine], 0)}",
            f"  estimated ratio head/base: {spread(ratios, 3)} (injected: {1 / (1 + slowdown):.3f})",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="comparisons per slowdown [20]")
    parser.add_argument("--slowdowns", default="0,0.1,0.2", help="injected delays as fractions [0,0.1,0.2]")
    parser.add_argument("--framework", default="delayed-numpy", help="delayed-numpy or delayed-torch")
    parser.add_argument("--run-args", default=DEFAULT_RUN_ARGS, help=f"cnnbench run options [{DEFAULT_RUN_ARGS}]")
    parser.add_argument("--threshold", default="5%", help="ab --threshold [5%%]")
    parser.add_argument("--budget", default="10m", help="ab --budget per comparison [10m]")
    parser.add_argument("--ab-args", default="", help="more cnnbench ab options, e.g. '--min-rounds 3'")
    parser.add_argument("--json", default=None, help="also write every trial as JSON to this file")
    parser.add_argument("--keep", default=None, help="keep each comparison's ab JSON in this folder")
    parser.add_argument("--jobs", type=int, default=1, help="comparisons at once, each on its own CPUs [1]")
    parser.add_argument("--cpus-per-job", type=int, default=2, help="CPUs pinned to each comparison with --jobs [2]")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="count the comparisons already kept in --keep (any slowdown) and run only the missing ones",
    )
    args = parser.parse_args()
    if args.resume and not args.keep:
        parser.error("--resume needs --keep FOLDER")
    slowdowns = [float(x) for x in args.slowdowns.split(",") if x.strip()]
    if args.trials < 1 or not slowdowns or any(not 0 <= s < 10 for s in slowdowns):
        parser.error("--trials must be >= 1 and --slowdowns fractions in [0, 10)")
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.jobs < 1 or (args.jobs > 1 and args.jobs * args.cpus_per_job > len(available)):
        needed = f"--jobs {args.jobs} x --cpus-per-job {args.cpus_per_job}"
        parser.error(f"{needed} needs more than the {len(available)} CPUs here")
    before = uptime()
    print(
        f"gate power: {args.framework}, run args '{args.run_args}', threshold {args.threshold}, "
        f"budget {args.budget}, {args.trials} trials x {len(slowdowns)} slowdowns, {args.jobs} at a time; "
        f"{os.cpu_count()} CPUs"
    )
    print(f"load average before: {before}", flush=True)
    trials: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gate-power-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        done = kept_trials(folder) if args.resume else {}
        trials += done.values()
        if done:
            print(f"resumed: {len(done)} comparisons kept in {folder}", flush=True)
        # Interleaved (trial 1 at every slowdown, then trial 2 ...): a load change hits every slowdown alike.
        plan = [key for key in itertools.product(range(args.trials), slowdowns) if key not in done]
        slots = [set(available[i * args.cpus_per_job : (i + 1) * args.cpus_per_job]) for i in range(args.jobs)]
        free = list(range(args.jobs))

        def run(trial: int, slowdown: float) -> dict[str, Any]:
            slot = free.pop()
            try:
                return one_trial(slowdown, trial, args, folder, slots[slot] if args.jobs > 1 else None)
            finally:
                free.append(slot)

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run, trial, slowdown): trial for trial, slowdown in plan}
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                trials.append(result)
                ratio = "-" if result["ratio"] is None else f"{result['ratio']:.3f}"
                print(
                    f"trial {futures[future] + 1}/{args.trials} delay {result['slowdown']:g}: {result['verdict']} "
                    f"(exit {result['exit_code']}, {result['rounds']} rounds, {result['seconds'] / 60:.1f} min, "
                    f"ratio {ratio}); load {uptime()}",
                    flush=True,
                )
                if result["verdict"] == "error":
                    print(result["output"], file=sys.stderr)
    after = uptime()
    print()
    print("\n".join(summarise(trials, sorted({*slowdowns, *(t["slowdown"] for t in trials)}))))
    print(f"load average before: {before}; after: {after}; wall time {(time.monotonic() - started) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"load_before": before, "load_after": after, "args": vars(args), "trials": trials}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
