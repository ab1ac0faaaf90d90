"""Does HNLMRec's CF teacher matter? The fixed 20-epoch teacher against one trained to convergence.

HNLMRec fine-tunes the LLM towards the hard negatives a CF teacher mines. The study's teacher trains a fixed
20 epochs (TeacherConfig.epochs); `epochs=None` trains it to convergence on validation (`hnlm.cf.frozen`).
For one LLM and CF signal at a profile's settings (default: notebook 11's SmolLM2-135M text run, full profile)
this prints:
1. each teacher's valid recall@20 (and best epoch for the converged one);
2. the mined fine-tuning targets: the share of pairs whose hard negative is the same under both teachers, and
   the share of each teacher's negatives that are held-out positives of the user (false negatives; held-out
   items are read for this measure only) against a uniform non-train item;
3. with --finetune: the converged teacher's run is fine-tuned (resumable, ~30 min for SmolLM2 on 2 CPU cores)
   and its bank compared with the 20-epoch run's (shipped): the mean cosine of a pair's two vectors, against
   the mean cosine of a pair's vector with another pair's in the same bank (the scale of "different").

    .venv/bin/python bench/hnlmrec_teacher.py                 # 1 and 2: a minute
    .venv/bin/python bench/hnlmrec_teacher.py --finetune      # and 3
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from hnlm.data import load_dataset
from hnlm.semantic.common import Budget, select_pairs
from hnlm.semantic.hnlmrec.banks import obtain_bank
from hnlm.semantic.hnlmrec.queries import MiningConfig, mine_hard_negatives
from hnlm.semantic.hnlmrec.run import train_teacher
from hnlm.study.pipeline import hnlmrec_config
from hnlm.study.settings import settings


def mined(data, teacher, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pairs = select_pairs(data, Budget.parse(cfg.finetune.budget), cfg.pair_seed)
    users, items = pairs["user"].to_numpy(np.int64), pairs["item"].to_numpy(np.int64)
    mining = MiningConfig(**{**dataclasses.asdict(cfg.mining), "seed": cfg.pair_seed})
    return users, items, mine_hard_negatives(data, teacher, users, items, mining)[0]


def false_negative_share(data, users: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(share of mined negatives that are held-out items of their user, the same for a uniform non-train item)."""
    hits = chance = 0.0
    found = neg >= 0   # -1: no candidate passed the mining guard
    users, neg = users[found], neg[found]
    for u, n in zip(users, neg):
        held = set(data.heldout_items(int(u)).tolist())
        hits += int(n) in held
        chance += len(held) / (data.n_items - len(data.train_items(int(u))))
    return hits / len(users), chance / len(users)


def bank_agreement(a, b) -> tuple[float, float]:
    """(mean cosine of a pair's vectors in banks a and b, mean cosine of a's vector with another pair's in b)."""
    rows_b = {(int(u), int(i)): r for r, (u, i) in enumerate(zip(b.users, b.items))}
    shared = [(r, rows_b[(int(u), int(i))]) for r, (u, i) in enumerate(zip(a.users, a.items)) if (int(u), int(i))
              in rows_b]
    ra, rb = map(np.array, zip(*shared))
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a.emb[ra], b.emb[rb]))
    return float((x * y).sum(1).mean()), float((x * np.roll(y, 1, axis=0)).sum(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--signal", default="text")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--notebook", default="11_llm_size", help="whose hnlmrec settings")
    ap.add_argument("--teacher-lr", type=float, default=None, help="both teachers' (default: TeacherConfig's)")
    ap.add_argument("--teacher-batch-size", type=int, default=None)
    ap.add_argument("--finetune", action="store_true", help="also fine-tune with the converged teacher")
    args = ap.parse_args()
    conf = settings(args.profile, args.notebook)
    data = load_dataset("ml-100k", seed=conf["split_seed"])
    fixed = hnlmrec_config(args.llm, args.signal, conf["hnlmrec"])
    given = {"lr": args.teacher_lr, "batch_size": args.teacher_batch_size}
    fixed = dataclasses.replace(fixed, teacher=dataclasses.replace(
        fixed.teacher, **{k: v for k, v in given.items() if v is not None}))
    converged = dataclasses.replace(fixed, teacher=dataclasses.replace(fixed.teacher, epochs=None))
    teachers = {"fixed 20 epochs": train_teacher(data, fixed.teacher),
                "converged": train_teacher(data, converged.teacher)}
    negs = {}
    for name, teacher in teachers.items():
        users, _, negs[name] = mined(data, teacher, fixed)
        share, chance = false_negative_share(data, users, negs[name])
        print(f"{name}: valid recall@20 {teacher.meta['valid_recall@20_recorded_only']:.4f}, best epoch "
              f"{teacher.meta.get('best_epoch', fixed.teacher.epochs)}; mined negatives that are held-out "
              f"positives {share:.2%} (uniform non-train item {chance:.2%})")
    a, b = negs.values()
    both = (a >= 0) & (b >= 0)
    print(f"pairs with the same mined negative under both teachers: {np.mean(a[both] == b[both]):.2%} of "
          f"{int(both.sum())}")
    if args.finetune:
        banks = [obtain_bank(data, cfg, conf["split_seed"])[1] for cfg in (fixed, converged)]
        same, other = bank_agreement(*banks)
        print(f"bank vectors, fixed vs converged teacher: mean cosine of a pair's two vectors {same:.3f}; "
              f"of a pair's with another pair's {other:.3f}")


if __name__ == "__main__":
    main()
