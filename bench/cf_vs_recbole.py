"""Benchmark: our CF engine vs RecBole 1.2.1 on the same ml-100k split, same hyper-parameters, one run.

    .venv/bin/python bench/cf_vs_recbole.py            # needs bench/cf_recbole_setup.sh once

Sections: (1) BPR-MF and LightGCN: seconds per training epoch, full-ranking evaluation seconds and test
Recall@20 / NDCG@20 at the early-stopped epoch, ours vs RecBole, with ratios; (2) sampler overhead: seconds
per LightGCN epoch of each hard sampler relative to RNS; (3) full-ranking evaluation of ml-1m.
Both sides run in turn in this one invocation with the same number of torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hnlm.cf.evaluate import evaluate
from hnlm.cf.models import build_model
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset

BENCH = Path(__file__).resolve().parent
RECBOLE_PY = BENCH / ".venv-recbole" / "bin" / "python"


def write_recbole_files(data, folder: Path, name: str) -> None:
    """Our exact train/valid/test split as RecBole benchmark files (<name>.train.inter, ...)."""
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        coo = getattr(data, part).tocoo()
        order = np.lexsort((coo.col, coo.row))
        lines = [f"u{u}\ti{i}" for u, i in zip(coo.row[order], coo.col[order])]
        (d / f"{name}.{part}.inter").write_text("user_id:token\titem_id:token\n" + "\n".join(lines) + "\n")


def require_recbole(skip_flag: str = "") -> None:
    if not RECBOLE_PY.exists():
        skip = f" (or pass {skip_flag})" if skip_flag else ""
        sys.exit(f"RecBole env missing: run bench/cf_recbole_setup.sh first{skip}")


def run_recbole(model: str, data_dir: Path, name: str, out: Path, *, epochs: int, patience: int, lr: float,
                batch_size: int, dim: int, layers: int, reg: float, seed: int, candidates: int = 0) -> dict:
    """One RecBole run in its own env and process (bench/cf_recbole_run.py); candidates > 0: dynamic sampling."""
    settings = {"model": model, "epochs": epochs, "patience": patience, "lr": lr, "batch-size": batch_size,
                "dim": dim, "layers": layers, "reg": reg, "seed": seed, "candidates": candidates,
                "threads": torch.get_num_threads()}
    cmd = [str(RECBOLE_PY), str(BENCH / "cf_recbole_run.py"), "--data-dir", str(data_dir), "--dataset", name,
           "--out", str(out), *[x for k, v in settings.items() for x in (f"--{k}", str(v))]]
    subprocess.run(cmd, check=True, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    return json.loads(out.read_text())


def run_ours(model: str, data, args, sampler: str = "rns", epochs: int | None = None,
             patience: int | None = None) -> dict:
    cfg = TrainConfig(model=model, sampler=sampler, dim=args.dim, layers=args.layers,
                      epochs=epochs or args.epochs, patience=patience or args.patience, lr=args.lr,
                      batch_size=args.batch_size, l2=args.l2 if model == "lightgcn" else 0.0,
                      seed=args.seed, device="cpu", ks=[10, 20, 50], metric="recall@20")
    r = train(data, cfg, progress=False)
    r.pop("model")
    return r


def ratio(peer: float, ours: float) -> str:
    return f"{peer / ours:.2f}x" if ours > 0 else "n/a"


def section_peer(args, data, out_dir: Path) -> list[dict]:
    name = f"{args.dataset.replace('-', '')}_split{args.split_seed}"
    write_recbole_files(data, out_dir / "recbole_data", name)
    rows = []
    for ours_name, peer_name in (("mf", "BPR"), ("lightgcn", "LightGCN")):
        if ours_name not in args.models:
            continue
        print(f"[peer] {ours_name}: ours ...", flush=True)
        ours = run_ours(ours_name, data, args)
        print(f"[peer] {ours_name}: ours {ours['timings']['train_s_per_epoch']:.3f} s/epoch, best epoch "
              f"{ours['best_epoch']}, R@20 {ours['test']['recall@20']:.4f}; RecBole {peer_name} ...", flush=True)
        peer = run_recbole(peer_name, out_dir / "recbole_data", name, out_dir / f"recbole_{peer_name}.json",
                           epochs=args.epochs, patience=args.patience, lr=args.lr, batch_size=args.batch_size,
                           dim=args.dim, layers=args.layers, reg=args.l2 if peer_name == "LightGCN" else 0.0,
                           seed=args.seed)
        # medians: robust to one-off costs (lazy imports in the first optimiser step) and load spikes
        rows.append({"model": ours_name, "ours": {
            "train_s_per_epoch": float(np.median([h["train_s"] for h in ours["history"]])),
            "eval_s": float(np.median([h["eval_s"] for h in ours["history"] if "eval_s" in h])),
            "best_epoch": ours["best_epoch"], "epochs_run": ours["epochs_run"],
            "recall@20": ours["test"]["recall@20"], "ndcg@20": ours["test"]["ndcg@20"]},
            "recbole": {"train_s_per_epoch": float(np.median(peer["train_s"])),
                        "eval_s": float(np.median(peer["valid_s"])),
                        "best_epoch": peer["best_epoch"], "epochs_run": peer["epochs_run"],
                        "recall@20": peer["test"]["recall@20"], "ndcg@20": peer["test"]["ndcg@20"]}})
    print("\n== ours vs RecBole 1.2.1 (%s, split seed %d, seed %d, %d threads) ==" % (
        args.dataset, args.split_seed, args.seed, torch.get_num_threads()))
    print("(s/epoch and eval s are medians over the run's epochs / validation evaluations)")
    print(f"{'model':9} {'side':8} {'s/epoch':>8} {'eval s':>7} {'best ep':>7} {'run':>4} {'R@20':>7} {'N@20':>7}")
    for r in rows:
        for side in ("ours", "recbole"):
            s = r[side]
            print(f"{r['model']:9} {side:8} {s['train_s_per_epoch']:8.3f} {s['eval_s']:7.3f} {s['best_epoch']:7d} "
                  f"{s['epochs_run']:4d} {s['recall@20']:7.4f} {s['ndcg@20']:7.4f}")
        o, p = r["ours"], r["recbole"]
        print(f"{r['model']:9} ratio    epoch speed-up {ratio(p['train_s_per_epoch'], o['train_s_per_epoch'])}, "
              f"eval speed-up {ratio(p['eval_s'], o['eval_s'])}, Recall@20 {o['recall@20'] / p['recall@20'] - 1:+.1%}, "
              f"NDCG@20 {o['ndcg@20'] / p['ndcg@20'] - 1:+.1%} (ours vs RecBole, relative)")
    return rows


def section_samplers(args, data) -> dict:
    out = {}
    for s in args.samplers:
        r = run_ours("lightgcn", data, args, sampler=s, epochs=args.sampler_epochs, patience=10 ** 6)
        out[s] = float(np.median([h["train_s"] for h in r["history"]]))
        print(f"[samplers] {s}: {out[s]:.3f} s/epoch", flush=True)
    print(f"\n== sampler overhead, LightGCN, {args.sampler_epochs} epochs each (median s/epoch, ratio to rns) ==")
    for s, v in out.items():
        print(f"{s:8} {v:8.3f}  {v / out['rns']:.2f}x")
    return out


def section_ml1m(args) -> dict:
    data = load_dataset("ml-1m", seed=args.split_seed)
    torch.manual_seed(0)
    model = build_model("lightgcn", data, args.dim, args.layers)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = evaluate(model, data, "test")
        times.append(time.perf_counter() - t0)
    print(f"\n== full-ranking evaluation, ml-1m ({data.n_users} x {data.n_items}), LightGCN d={args.dim}: "
          f"best {min(times):.3f} s, mean {np.mean(times):.3f} s over 3 (users {res['n_users']}) ==")
    return {"best_s": min(times), "mean_s": float(np.mean(times)), "users": res["n_users"], "items": data.n_items}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--models", nargs="+", default=["mf", "lightgcn"])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch default)")
    p.add_argument("--samplers", nargs="*", default=["rns", "dns", "mixgcf", "ahns", "dns-mn", "dens", "pns"])
    p.add_argument("--sampler-epochs", type=int, default=3)
    p.add_argument("--sections", nargs="+", default=["peer", "samplers", "ml1m"])
    p.add_argument("--out", default=str(BENCH / "out" / "cf_vs_recbole.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "peer" in args.sections:
        require_recbole()
    data = load_dataset(args.dataset, seed=args.split_seed)
    report = {"args": vars(args), "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    if "peer" in args.sections:
        report["peer"] = section_peer(args, data, out.parent)
    if "samplers" in args.sections:
        report["samplers"] = section_samplers(args, data)
    if "ml1m" in args.sections:
        report["ml1m_eval"] = section_ml1m(args)
    report["load_avg_end"] = os.getloadavg()
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
