"""How often the HNLMRec hard-negative target is a false negative (a held-out positive of the user),
with and without the guard, against a uniform unseen item. Held-out items are read here only (analysis).

    .venv/bin/python bench/hnlmrec_guard.py [--teacher mf --epochs 20]
"""

import argparse

import numpy as np

from hnlm.data import load_dataset
from hnlm.semantic.hnlmrec.queries import MiningConfig, mine_hard_negatives
from hnlm.semantic.hnlmrec.run import TeacherConfig, train_teacher
from hnlm.semantic.sns import Budget, select_pairs


def heldout_share(data, users, items) -> float:
    return float(np.mean([i in set(data.heldout_items(u).tolist()) for u, i in zip(users, items) if i >= 0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="mf")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=50)
    args = ap.parse_args()
    data = load_dataset("ml-100k", seed=0)
    teacher = train_teacher(data, TeacherConfig(model=args.teacher, epochs=args.epochs))
    pairs = select_pairs(data, Budget(1), 0)
    users, items = pairs.user.to_numpy(), pairs.item.to_numpy()
    for guard in (1e-9, 0.05, 0.10):
        neg, _ = mine_hard_negatives(data, teacher, users, items, MiningConfig(args.candidates, guard, 0))
        print(f"guard_top={guard:g}: share of hard negatives that are held-out positives "
              f"{heldout_share(data, users, neg):.4f}")
    rng = np.random.default_rng(0)
    rand = [rng.choice(np.setdiff1d(np.arange(data.n_items), data.train_items(u))) for u in users]
    print(f"uniform unseen item: {heldout_share(data, users, rand):.4f}")


if __name__ == "__main__":
    main()
