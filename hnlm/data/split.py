"""Per-user train/valid/test splits: random 8:1:1 with a seed, or temporal (latest go to valid/test)."""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_FOR_HELDOUT = 3  # fewer interactions than this: the user goes to train only (counted)


def split_sizes(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Number of (train, valid, test) interactions for a user with n of them; train always >= 1."""
    if n < MIN_FOR_HELDOUT:
        return n, 0, 0
    n_valid = max(1, int(round(n * ratios[1])))
    n_test = max(1, int(round(n * ratios[2])))
    return n - n_valid - n_test, n_valid, n_test


def split_interactions(inter: pd.DataFrame, seed: int = 0, mode: str = "random",
                       ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[np.ndarray, dict]:
    """Assign each row of `inter` (integer user column, timestamp column) to 0=train, 1=valid, 2=test.

    Random mode shuffles each user's interactions with one generator seeded by `seed` (users in id
    order, so the result depends on the seed only). Temporal mode sorts each user's interactions by
    timestamp (ties by item id) and puts the latest in test, the ones before in valid.
    """
    if mode not in ("random", "temporal"):
        raise ValueError(f"split mode must be 'random' or 'temporal', not {mode!r}")
    rng = np.random.default_rng(seed)
    order = inter.sort_values(["user", "timestamp", "item"], kind="stable").index.to_numpy()
    users = inter["user"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(order)]
    part = np.zeros(len(inter), dtype=np.int8)
    train_only = 0
    for lo, hi in zip(starts, ends):
        rows = order[lo:hi]
        n_train, n_valid, _ = split_sizes(hi - lo, ratios)
        if n_train == hi - lo:
            train_only += 1
        if mode == "random":
            rows = rows[rng.permutation(len(rows))]
        part[rows[n_train:n_train + n_valid]] = 1
        part[rows[n_train + n_valid:]] = 2
    counts = {"split_mode": mode, "split_seed": seed, "split_ratios": list(ratios),
              "users_train_only": train_only,
              "train": int((part == 0).sum()), "valid": int((part == 1).sum()), "test": int((part == 2).sum())}
    return part, counts
