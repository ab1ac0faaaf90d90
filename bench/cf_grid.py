"""Benchmark: a grid of seeded CF runs, one at a time with hnlm.cf.trainer.train, grouped with
hnlm.cf.group.train_group, and one at a time in RecBole 1.2.1 (its LightGCN with uniform negatives for rns and
`dynamic` negative sampling for dns, one subprocess per run in bench/.venv-recbole, on our exact split), in
this one invocation, with the same torch threads.

    .venv/bin/python bench/cf_grid.py                  # LightGCN x {rns, dns} x 5 seeds, converged protocol
    .venv/bin/python bench/cf_grid.py --smoke          # 2 seeds, 3 epochs, dim 16: checks that it works

Converged protocol (the study's): cap 300 epochs, early stopping with patience 20 on valid recall@20,
batch 8192, lr 2e-2, dim 64, 3 layers, L2 and sampler options at their defaults. Grouped runs are timed
with one LightGCN sparse product for all runs and with one per run (`--products`). Prints runs per hour
each way, the ratios (to ours one at a time, and to RecBole), and per-run agreement: a grouped run should give
the same best epoch and test metrics as the run alone; a RecBole run is another implementation (own RNG
streams), so its agreement is the difference of test metrics per (sampler, seed) and of their means. RecBole
runs only the samplers it has (rns -> uniform, dns -> dynamic over the same number of candidates); its
seconds include its process start and dataset loading, as a one-run-per-process grid pays them.
With one torch thread the grouped runs equal the runs alone bit for bit; with more, train() alone
is not bit-reproducible on ml-100k (three identical LightGCN + DNS(M,N) runs at 2 threads gave two
different epoch-2 losses), so a hard-sampler run may drift by that much in either way. A warm-up epoch runs
first so that no way of ours pays torch's one-off costs.
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
from cf_vs_recbole import require_recbole, run_recbole, write_recbole_files

from hnlm.cf.group import train_group
from hnlm.cf.samplers import DNS
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset

BENCH = Path(__file__).resolve().parent
SMOKE = {"seeds": 2, "epochs": 3, "patience": 2, "dim": 16}
METRICS = ("recall@20", "ndcg@20")
RECBOLE_CANDIDATES = {"rns": 0, "dns": DNS().candidates}   # our sampler -> RecBole (0: uniform, M: dynamic)


def grid(args) -> list[TrainConfig]:
    return [TrainConfig(model=args.model, sampler=s, seed=seed, epochs=args.epochs, patience=args.patience,
                        batch_size=args.batch_size, lr=args.lr, dim=args.dim, layers=args.layers,
                        metric="recall@20", device=args.device)
            for s in args.samplers for seed in range(args.seeds)]


def run_alone(data, configs) -> tuple[list[dict], list[float]]:
    """train() one run at a time; each run's result and wall seconds."""
    results, seconds = [], []
    for i, cfg in enumerate(configs):
        t0 = time.perf_counter()
        results.append(train(data, cfg, progress=False))
        seconds.append(time.perf_counter() - t0)
        print(f"[alone] {i + 1}/{len(configs)} {cfg.sampler} seed {cfg.seed}: best epoch "
              f"{results[-1]['best_epoch']}, R@20 {results[-1]['test']['recall@20']:.4f}", flush=True)
    return results, seconds


def run_recbole_grid(data, configs, args, out_dir: Path) -> tuple[list[dict], list[float]]:
    """RecBole's LightGCN one run per process on our split, for the configs whose sampler it has; each
    run's summary (bench/cf_recbole_run.py) and wall seconds, process start and dataset loading included."""
    name = f"{args.dataset.replace('-', '')}_split{args.split_seed}"
    write_recbole_files(data, out_dir / "recbole_data", name)
    results, seconds = [], []
    for i, cfg in enumerate(configs):
        t0 = time.perf_counter()
        results.append(run_recbole("LightGCN", out_dir / "recbole_data", name,
                                   out_dir / f"recbole_grid_{cfg.sampler}_seed{cfg.seed}.json",
                                   epochs=cfg.epochs, patience=cfg.patience, lr=cfg.lr, batch_size=cfg.batch_size,
                                   dim=cfg.dim, layers=cfg.layers, reg=cfg.l2, seed=cfg.seed,
                                   candidates=RECBOLE_CANDIDATES[cfg.sampler]))
        seconds.append(time.perf_counter() - t0)
        print(f"[recbole] {i + 1}/{len(configs)} {cfg.sampler} seed {cfg.seed}: best epoch "
              f"{results[-1]['best_epoch']}, R@20 {results[-1]['test']['recall@20']:.4f}", flush=True)
    return results, seconds


def run_grouped(data, configs, group_size: int, products: str) -> tuple[list[dict], float]:
    size = group_size or len(configs)
    t0 = time.perf_counter()
    results = []
    for start in range(0, len(configs), size):
        results += train_group(data, configs[start:start + size], progress=False,
                               shared_product=products == "shared")
        print(f"[grouped, {products} products] {len(results)}/{len(configs)} runs done", flush=True)
    return results, time.perf_counter() - t0


def paired_runs(configs, first: list[dict], second: list[dict]) -> list[dict]:
    """Per run: (first, second) best epoch and test metrics."""
    return [{"sampler": c.sampler, "seed": c.seed, "best_epoch": (a["best_epoch"], b["best_epoch"]),
             **{m: (a["test"][m], b["test"][m]) for m in METRICS}} for c, a, b in zip(configs, first, second)]


def peer_agreement(configs, ours: list[dict], peer: list[dict]) -> dict:
    """Ours vs RecBole per (sampler, seed), and per sampler the means over the seeds."""
    runs = paired_runs(configs, ours, peer)
    means = {}
    for s in dict.fromkeys(c.sampler for c in configs):
        rows = [r for r in runs if r["sampler"] == s]
        means[s] = {m: (float(np.mean([r[m][0] for r in rows])), float(np.mean([r[m][1] for r in rows])))
                    for m in METRICS}
    return {"runs": runs, "means": means,
            **{f"max_abs_diff_{m}": max(abs(r[m][0] - r[m][1]) for r in runs) for m in METRICS}}


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
    p.add_argument("--samplers", nargs="+", default=["rns", "dns"])
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
    p.add_argument("--recbole", action=argparse.BooleanOptionalAction, default=True,
                   help="also run RecBole 1.2.1 one run per process (needs bench/cf_recbole_setup.sh once)")
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
    if args.recbole:
        require_recbole("--no-recbole")
    out = Path(args.out)
    data = load_dataset(args.dataset, seed=args.split_seed)
    configs = grid(args)
    warm = TrainConfig(**{**vars(configs[0]), "epochs": 1})
    train(data, warm, progress=False)
    report = {"args": vars(args), "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    n = len(configs)
    alone, alone_each = run_alone(data, configs)
    alone_s = sum(alone_each)
    ways = {"alone": (alone, alone_s)}
    for products in args.products:
        ways[f"grouped/{products}"] = run_grouped(data, configs, args.group_size, products)
    matched = [k for k, c in enumerate(configs) if c.sampler in RECBOLE_CANDIDATES] if args.recbole else []
    if matched:
        peer, peer_each = run_recbole_grid(data, [configs[k] for k in matched], args, out.parent)
        peer_rate = len(matched) / sum(peer_each) * 3600
        report["recbole"] = {"seconds": sum(peer_each), "runs_per_hour": peer_rate,
                             "epochs_run": [r["epochs_run"] for r in peer], "seconds_each": peer_each,
                             "agreement": peer_agreement([configs[k] for k in matched], [alone[k] for k in matched],
                                                         peer)}
    report["load_avg_end"] = os.getloadavg()
    for way, (results, seconds) in ways.items():
        report[way] = {"seconds": seconds, "runs_per_hour": n / seconds * 3600,
                       "epochs_run": [r["epochs_run"] for r in results], "speedup": alone_s / seconds}
        if way != "alone":
            report[way]["agreement"] = agreement(alone, results)
            report[way]["runs"] = paired_runs(configs, alone, results)
        if matched:   # ours alone on exactly RecBole's runs; a grouped way only as a whole grid
            rate = (len(matched) / sum(alone_each[k] for k in matched) * 3600 if way == "alone"
                    else report[way]["runs_per_hour"])
            report[way]["vs_recbole"] = rate / report["recbole"]["runs_per_hour"]

    print(f"\n== {n} runs: {args.model} x {args.samplers} x {args.seeds} seeds on {args.dataset} "
          f"(cap {args.epochs}, patience {args.patience}, batch {args.batch_size}, lr {args.lr}, dim {args.dim}, "
          f"{args.layers} layers; {torch.get_num_threads()} threads, {args.device}) ==")
    print(f"{'way':17} {'seconds':>9} {'runs/hour':>10} {'vs alone':>9} {'vs RecBole':>11} {'mean epochs':>12}")
    for way in [*ways, *(["recbole"] if matched else [])]:
        r = report[way]
        vs_alone = f"{r['speedup']:8.2f}x" if "speedup" in r else f"{'-':>9}"
        vs_peer = f"{r['vs_recbole']:10.2f}x" if "vs_recbole" in r else f"{'-' if matched else 'n/a':>11}"
        print(f"{way:17} {r['seconds']:9.1f} {r['runs_per_hour']:10.1f} {vs_alone} {vs_peer} "
              f"{np.mean(r['epochs_run']):12.1f}")
    if matched and len(matched) < n:
        print(f"RecBole ran {len(matched)}/{n} runs (samplers {sorted(RECBOLE_CANDIDATES)}): 'alone' vs RecBole "
              "uses those runs only, a grouped way its whole grid")
    print(f"load average {report['load_avg_start'][0]:.1f} -> {report['load_avg_end'][0]:.1f}")
    for way in list(ways)[1:]:
        a = report[way]["agreement"]
        print(f"{way} vs alone: {a['identical_test_metrics']}/{n} runs with identical test metrics, "
              f"{a['same_best_epoch']}/{n} with the same best epoch; max |diff| "
              + ", ".join(f"{m} {a[f'max_abs_diff_{m}']:.2e}" for m in METRICS))
    if matched:
        a = report["recbole"]["agreement"]
        print("ours alone vs RecBole, test metrics per run (ours / RecBole), best epochs:")
        for r in a["runs"]:
            print(f"  {r['sampler']:4} seed {r['seed']}: " + ", ".join(f"{m} {r[m][0]:.4f} / {r[m][1]:.4f}"
                                                                   for m in METRICS)
                  + f", best epoch {r['best_epoch'][0]} / {r['best_epoch'][1]}")
        for s, means in a["means"].items():
            print(f"  {s:4} seed means: " + ", ".join(f"{m} {o:.4f} / {q:.4f} ({o / q - 1:+.1%})"
                                                     for m, (o, q) in means.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
