"""Seconds per training epoch of LightGCN with plain RNS, SNS (RNS + AlignmentExtension over the real SNS
bank) and RLMRec-Con (metadata text), on ml-100k with the study settings (dim 64, 3 layers, batch 8192,
lr 2e-2, l2 1e-4). Methods are built from their declarations in `hnlm.methods`, as the study builds them.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python bench/alignment_speed.py --epochs 2
    ... --methods rlmrec-con --rlmrec-max-anchors 256   # the non-exact speed option of RLMRec-Con
    ... --profile sns      # also print a torch.profiler table of one epoch of that method
    ... --check --methods sns rlmrec-con   # seed 0, 3 epochs: final validation recall@20 and losses
                                           # (to compare before / after a speed change)
"""

import argparse
import time

import numpy as np
import torch

from hnlm.cf.trainer import TrainConfig, train
from hnlm.methods import variant
from hnlm.semantic.resources import provide_inputs

SETTINGS = dict(model="lightgcn", dim=64, layers=3, batch_size=8192, lr=2e-2, l2=1e-4, loss="bpr",
                eval_every=1, metric="recall@20", ks=[20], patience=100)


def resources(data, methods):
    """The qwen2.5-0.5b outputs for `data`'s split, shipped or in artifacts/ (loaded for the methods that need them)."""
    return provide_inputs(data, "qwen2.5-0.5b")


def run(data, method, epochs, res, seed=0, max_anchors=0):
    torch.manual_seed(seed)
    sampler, ext = variant(method, **({"text": "metadata"} if method == "rlmrec-con" else {})).build(data, res, seed)
    if max_anchors and method == "rlmrec-con":  # RLMRecConfig.max_anchors: changes the method (not exact)
        ext.config.max_anchors = max_anchors
    cfg = TrainConfig(**SETTINGS, epochs=epochs, sampler="rns", seed=seed, device="cpu")
    return train(data, cfg, extension=ext, sampler=sampler, progress=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["rns", "sns", "rlmrec-con"])
    ap.add_argument("--rlmrec-max-anchors", type=int, default=0,
                    help="RLMRecConfig.max_anchors (0 = exact RLMRec-Con; > 0 changes the method)")
    ap.add_argument("--profile", default=None, help="method to profile for one epoch")
    ap.add_argument("--check", action="store_true", help="seed 0, 3 epochs of each method: final valid recall@20")
    args = ap.parse_args()
    from hnlm.data import load_dataset
    data = load_dataset("ml-100k", seed=0)
    methods = args.methods
    res = resources(data, methods + ([args.profile] if args.profile else []))
    if args.check:
        for m in methods:
            r = run(data, m, 3, res, seed=0, max_anchors=args.rlmrec_max_anchors)
            last = r["history"][-1]["valid"]["recall@20"]
            print(f"{m} seed 0, 3 epochs: final valid recall@20 = {last!r}; losses "
                  f"{[h['loss'] for h in r['history']]!r}", flush=True)
        return
    for m in methods:
        r = run(data, m, args.epochs, res, max_anchors=args.rlmrec_max_anchors)
        per = [h["train_s"] for h in r["history"]]
        print(f"{m:12s} {np.mean(per):.3f} s/epoch  (epochs: {', '.join(f'{s:.3f}' for s in per)}; "
              f"threads {torch.get_num_threads()})", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            run(data, args.profile, 1, res)
            print(f"profiled {args.profile}: {time.perf_counter() - t:.2f} s incl. eval")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
