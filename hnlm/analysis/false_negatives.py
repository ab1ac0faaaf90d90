"""False hard negatives: how many sampled negatives are a user's held-out (valid/test) positives.

These helpers read held-out items, which is what the analysis is for; they never feed a sampler.
"""

from __future__ import annotations

import numpy as np
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


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (semantic closeness of a negative to its positive)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)
