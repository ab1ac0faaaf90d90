"""Benchmark: a grid of seeded CF runs, one at a time with hnlm.cf.trainer.train vs grouped with
hnlm.cf.group.train_group, in this one invocation, with the same torch threads.

    .venv/bin/python bench/cf_grid.py                  # LightGCN x {rns, dns-mn} x 5 seeds, converged protocol
    .venv/bin/python bench/cf_grid.py --smoke          # 2 seeds, 3 epochs, dim 16: checks that it works

Converged protocol (the study's): cap 300 epochs, early stopping with patience 20 on valid recall@20,
batch 8192, lr 2e-2, dim 64, 3 layers, L2 and sampler options at their defaults. Grouped runs are timed
with one LightGCN sparse product for all runs and with one per run (`--products`). Prints runs per hour
each way, the ratio to one at a time, and per-run agreement: a grouped run should give the same best epoch
and test metrics as the run alone. With one torch thread that holds bit for bit; with more, train() alone
is not bit-reproducible on ml-100k (three identical LightGCN + DNS(M,N) runs at 2 threads gave two
different epoch-2 losses), so a hard-sampler run may drift by that much in either way. A warm-up epoch runs
first so that neither side pays one-off costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hnlm.cf.group import train_group
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset

BENCH = Path(__file__).resolve().parent
SMOKE = {"seeds": 2, "epochs": 3, "patience": 2, "dim": 16}
METRICS = ("recall@20", "ndcg@20")


def grid(args) -> list[TrainConfig]:
    return [TrainConfig(model=args.model, sampler=s, seed=seed, epochs=args.epochs, patience=args.patience,
                        batch_size=args.batch_size, lr=args.lr, dim=args.dim, layers=args.layers,
                        metric="recall@20", device=args.device)
            for s in args.samplers for seed in range(args.seeds)]


def run_alone(data, configs) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    results = []
    for i, cfg in enumerate(configs):
        results.append(train(data, cfg, progress=False))
        print(f"[alone] {i + 1}/{len(configs)} {cfg.sampler} seed {cfg.seed}: best epoch "
              f"{results[-1]['best_epoch']}, R@20 {results[-1]['test']['recall@20']:.4f}", flush=True)
    return results, time.perf_counter() - t0


def run_grouped(data, configs, group_size: int, products: str) -> tuple[list[dict], float]:
    size = group_size or len(configs)
    t0 = time.perf_counter()
    results = []
    for start in range(0, len(configs), size):
        results += train_group(data, configs[start:start + size], progress=False,
                               shared_product=products == "shared")
        print(f"[grouped, {products} products] {len(results)}/{len(configs)} runs done", flush=True)
    return results, time.perf_counter() - t0


def agreement(alone: list[dict], grouped: list[dict]) -> dict:
    same_test = sum(a["test"] == g["test"] for a, g in zip(alone, grouped))
    same_epoch = sum(a["best_epoch"] == g["best_epoch"] for a, g in zip(alone, grouped))
    diffs = {m: max(abs(a["test"][m] - g["test"][m]) for a, g in zip(alone, grouped)) for m in METRICS}
    return {"runs": len(alone), "identical_test_metrics": same_test, "same_best_epoch": same_epoch,
            **{f"max_abs_diff_{m}": d for m, d in diffs.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--model", default="lightgcn", choices=["lightgcn", "mf"])
    p.add_argument("--samplers", nargs="+", default=["rns", "dns-mn"])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per sampler")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--group-size", type=int, default=0, help="runs per group (0: every run in one group)")
    p.add_argument("--products", nargs="+", default=["shared", "per-run"], choices=["shared", "per-run"],
                   help="grouped ways to time: one LightGCN sparse product for all runs, or one per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both ways (0: torch default)")
    p.add_argument("--smoke", action="store_true", help=f"tiny settings to check the script: {SMOKE}")
    p.add_argument("--out", default=str(BENCH / "out" / "cf_grid.json"))
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, seed=args.split_seed)
    configs = grid(args)
    warm = TrainConfig(**{**vars(configs[0]), "epochs": 1})
    train(data, warm, progress=False)
    report = {"args": vars(args), "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    n = len(configs)
    alone, alone_s = run_alone(data, configs)
    ways = {"alone": (alone, alone_s)}
    for products in args.products:
        ways[f"grouped/{products}"] = run_grouped(data, configs, args.group_size, products)
    report["load_avg_end"] = os.getloadavg()
    for way, (results, seconds) in ways.items():
        report[way] = {"seconds": seconds, "runs_per_hour": n / seconds * 3600,
                       "epochs_run": [r["epochs_run"] for r in results], "speedup": alone_s / seconds}
        if way != "alone":
            report[way]["agreement"] = agreement(alone, results)
            report[way]["runs"] = [{"sampler": c.sampler, "seed": c.seed,
                                    "best_epoch": (a["best_epoch"], g["best_epoch"]),
                                    **{m: (a["test"][m], g["test"][m]) for m in METRICS}}
                                   for c, a, g in zip(configs, alone, results)]

    print(f"\n== {n} runs: {args.model} x {args.samplers} x {args.seeds} seeds on {args.dataset} "
          f"(cap {args.epochs}, patience {args.patience}, batch {args.batch_size}, lr {args.lr}, dim {args.dim}, "
          f"{args.layers} layers; {torch.get_num_threads()} threads, {args.device}) ==")
    print(f"{'way':17} {'seconds':>9} {'runs/hour':>10} {'speed-up':>9} {'mean epochs':>12}")
    for way in ways:
        r = report[way]
        print(f"{way:17} {r['seconds']:9.1f} {r['runs_per_hour']:10.1f} {r['speedup']:8.2f}x "
              f"{np.mean(r['epochs_run']):12.1f}")
    print(f"load average {report['load_avg_start'][0]:.1f} -> {report['load_avg_end'][0]:.1f}")
    for way in list(ways)[1:]:
        a = report[way]["agreement"]
        print(f"{way} vs alone: {a['identical_test_metrics']}/{n} runs with identical test metrics, "
              f"{a['same_best_epoch']}/{n} with the same best epoch; max |diff| "
              + ", ".join(f"{m} {a[f'max_abs_diff_{m}']:.2e}" for m in METRICS))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
