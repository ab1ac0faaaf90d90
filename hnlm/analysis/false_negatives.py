"""False hard negatives: how many sampled negatives are a user's held-out (valid/test) positives.

These helpers read held-out items, which is what the analysis is for; they never feed a sampler.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _lookup(matrix: sp.csr_matrix, users, items) -> np.ndarray:
    users, items = np.asarray(users).ravel(), np.asarray(items).ravel()
    return np.asarray(matrix[users, items]).ravel() > 0


def negative_shares(data, users, negatives) -> dict:
    """Counts and shares of negatives that are held-out positives (false hard negatives) and train
    positives (a sampler bug); `users` and `negatives` are aligned 1-D arrays of ids."""
    users = np.asarray(users).ravel()
    negatives = np.asarray(negatives).ravel()
    if users.shape != negatives.shape:
        raise ValueError(f"users {users.shape} and negatives {negatives.shape} differ")
    n = len(users)
    heldout = (data.valid + data.test).tocsr()
    false_neg = int(_lookup(heldout, users, negatives).sum()) if n else 0
    train_pos = int(_lookup(data.train, users, negatives).sum()) if n else 0
    return {"n": n, "false_negatives": false_neg, "false_negative_share": false_neg / n if n else np.nan,
            "train_positives": train_pos, "train_positive_share": train_pos / n if n else np.nan}


def random_baseline_share(data, users) -> float:
    """Expected false-negative share of a uniform draw over each user's non-train items: what a sampler
    with no information would hit by chance, the reference line for the measured shares."""
    users = np.asarray(users).ravel()
    heldout = np.diff((data.valid + data.test).tocsr().indptr)[users]
    candidates = data.n_items - np.diff(data.train.indptr)[users]
    return float(np.mean(heldout / np.maximum(candidates, 1))) if len(users) else np.nan


def training_pairs_chance(data) -> float:
    """`random_baseline_share` over the training pairs (each user once per training interaction, as a
    sampler draws one negative per pair): the chance rate the samplers' measured shares are read against."""
    return random_baseline_share(data, np.repeat(np.arange(data.n_users), np.diff(data.train.tocsr().indptr)))


def overall_shares(by_epoch: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Per backbone and method (in run order), negatives and false negatives summed over epochs and seeds,
    their share, and that share over the chance rate (`vs_chance`)."""
    overall = (by_epoch.groupby(["backbone", "method"], sort=False)[["negatives", "false_negatives"]].sum()
               .reset_index())
    overall["share"] = overall["false_negatives"] / overall["negatives"]
    overall["vs_chance"] = overall["share"] / chance
    return overall


def mark_precision(data, users, candidates, marked) -> dict:
    """Precision of per-user marks against each user's VALIDATION items (test is never read): the share of marks
    that are validation positives, beside chance, the validation share of the lists the marks were chosen from
    (each list weighted by its number of marks, as a uniform pick of as many items would hit). `users`,
    `candidates` (lists) and `marked` (subsets of them) are aligned."""
    valid = data.valid.tocsr()
    hits = marks = 0
    chance = 0.0
    for u, cands, chosen in zip(users, candidates, marked):
        positives = set(valid.indices[valid.indptr[u]:valid.indptr[u + 1]].tolist())
        hits += sum(int(j) in positives for j in chosen)
        marks += len(chosen)
        chance += len(chosen) * sum(int(j) in positives for j in cands) / max(len(cands), 1)
    return {"users": len(users), "users_with_marks": int(sum(len(m) > 0 for m in marked)), "marks": marks,
            "valid_hits": hits, "precision": hits / marks if marks else np.nan,
            "chance": chance / marks if marks else np.nan}


def top_similar_marks(candidates, counts, similarity) -> list[list[int]]:
    """For each list, its `counts[r]` items of highest `similarity[r]` (aligned with the list; ties in list
    order): another marker's choice at the same number of marks."""
    return [[int(cands[k]) for k in np.argsort(-np.asarray(sim, float), kind="stable")[:n]]
            for cands, n, sim in zip(candidates, counts, similarity)]
