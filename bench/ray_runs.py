"""Benchmark: runs per hour of one CF grid through the study's executors, in this one invocation: the local
runner (one run at a time, torch's default threads), the local runner with 2 worker processes (one thread
each), and a Ray cluster started here on 127.0.0.1 with 1 and with 2 worker slots (a head node of 1 CPU, plus
one worker node of 1 CPU for the second; each task asks for 1 CPU, so Ray gives it one torch thread).

    .venv/bin/python bench/ray_runs.py                 # MF x {rns, dns} x 4 seeds on ml-100k, 30 epochs each
    .venv/bin/python bench/ray_runs.py --smoke         # 2 runs of 3 epochs per way: checks that it works

Every way trains the same runs (same content keys) into its own empty run store; the script checks that each
way's test metrics equal the local runner's (to 1e-3 relative: a multi-threaded run is not bit-reproducible) and
prints runs/hour and each way's ratio to the local runner. Ray's seconds include starting its cluster and
shipping the dataset, as a user's first grid pays them. On a 2-core machine every way shares the same 2 cores,
so 2 workers can at best double one worker's rate, and the local runner already uses both cores in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # keep Ray on 127.0.0.1 (read at import)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from hnlm.data import load_dataset  # noqa: E402
from hnlm.study.executors import Local, Ray  # noqa: E402
from hnlm.study.experiments import run_grid  # noqa: E402

SMOKE = {"seeds": 1, "epochs": 3}


def timed_grid(data, args, executor, folder: Path) -> tuple[list[dict], float]:
    settings = {"epochs": args.epochs, "patience": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "dim": args.dim, "ks": [20]}
    t0 = time.perf_counter()
    runs = run_grid(data, [args.model], args.samplers, list(range(args.seeds)), settings, folder, executor=executor)
    return runs, time.perf_counter() - t0


def ray_grid(data, args, workers: int, folder: Path) -> tuple[list[dict], float]:
    """The grid on a fresh local cluster of `workers` 1-CPU nodes (cluster start-up counted)."""
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(workers - 1):
        cluster.add_node(num_cpus=1)
    try:
        runs, _ = timed_grid(data, args, Ray(cluster.address), folder)
        return runs, time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="mf", choices=["mf", "lightgcn"])
    p.add_argument("--samplers", nargs="+", default=["rns", "dns"])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=30, help="every run trains exactly this many epochs")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    data = load_dataset(args.dataset, seed=0)
    n = len(args.samplers) * args.seeds
    print(f"{n} runs per way: {args.model} x {args.samplers} x {args.seeds} seeds, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr:g}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    ways = {"local, 1 run at a time": lambda f: timed_grid(data, args, Local(1), f),
            "local, 2 worker processes": lambda f: timed_grid(data, args, Local(2), f),
            "ray, 1 worker": lambda f: ray_grid(data, args, 1, f),
            "ray, 2 workers": lambda f: ray_grid(data, args, 2, f)}
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, way) in enumerate(ways.items()):
            measured[name] = way(Path(tmp) / str(i))
            print(f"[{name}] {measured[name][1]:.1f} s", flush=True)
    base_runs, base_s = measured["local, 1 run at a time"]
    print("\n| way | seconds | runs/hour | ratio to local | same metrics as local |\n|---|---|---|---|---|")
    ok = True
    for name, (runs, seconds) in measured.items():
        same = all(a["key"] == b["key"] and abs(a["test"]["recall@20"] - b["test"]["recall@20"])
                   <= 1e-3 * b["test"]["recall@20"] for a, b in zip(runs, base_runs))
        ok &= same
        print(f"| {name} | {seconds:.1f} | {n * 3600 / seconds:.0f} | {base_s / seconds:.2f}x | {same} |")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
