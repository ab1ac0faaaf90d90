"""Popularity bias of recommendation lists: head vs long-tail accuracy, mean popularity, coverage, Gini.

Head items are the top `head_share` (default 20%) of the catalogue by *training* popularity; everything
else is the long tail. Accuracy restricted to a subset uses the full-ranking list as it is and only the
user's test items in that subset as ground truth (users with none in the subset are skipped).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

HEAD_SHARE = 0.2  # share of the catalogue that is "head" (notebook 08, the evaluator's long-tail share)


def head_mask(popularity, head_share: float = HEAD_SHARE) -> np.ndarray:
    """Boolean mask of the head items: the ceil(head_share * n) most popular of the n items by training count
    (ties: lower item id first); every other item is long tail. This is the project's one definition of head.

    Ceil makes the head the smallest top set that holds at least `head_share` of the catalogue, so it is never
    empty when head_share > 0 (round() would give no head item for n <= 2 at 20%). The product is rounded to
    9 decimals first so that float noise cannot add an item (0.07 * 100 is 7.000000000000001 in floats)."""
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], not {head_share}")
    popularity = np.asarray(popularity)
    n_head = int(np.ceil(round(head_share * len(popularity), 9)))
    order = np.argsort(-popularity, kind="stable")
    mask = np.zeros(len(popularity), dtype=bool)
    mask[order[:n_head]] = True
    return mask


def gini(counts) -> float:
    """Gini coefficient of non-negative counts (0: all equal; -> 1: all mass on one entry)."""
    x = np.sort(np.asarray(counts, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def exposure(topk: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item appears in the recommendation lists."""
    return np.bincount(np.asarray(topk).ravel(), minlength=n_items)


def list_stats(topk: np.ndarray, popularity, head: np.ndarray) -> dict:
    """Mean training popularity of recommended items, catalogue coverage, Gini of exposure, tail share."""
    topk = np.asarray(topk)
    popularity = np.asarray(popularity)
    counts = exposure(topk, len(popularity))
    return {"mean_popularity": float(popularity[topk].mean()),
            "coverage": float((counts > 0).mean()),
            "gini": gini(counts),
            "tail_share": float((~head[topk]).mean())}


def ranking_metrics(topk: np.ndarray, truth: sp.csr_matrix, ks=(10, 20, 50)) -> dict[str, np.ndarray]:
    """Per-user Recall@K and NDCG@K of lists `topk` [U, >=K] against rows of `truth` [U, n_items]
    (recall = hits / |truth|, IDCG over min(|truth|, K)); NaN where |truth| = 0."""
    topk = np.asarray(topk)
    n_users, depth = topk.shape
    truth = sp.csr_matrix(truth)
    hits = np.asarray(truth[np.repeat(np.arange(n_users), depth), topk.ravel()]).reshape(n_users, depth) > 0
    n_truth = np.diff(truth.indptr).astype(float)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            if k > depth:
                raise ValueError(f"lists have depth {depth} < K={k}")
            dcg = (hits[:, :k] * discounts[:k]).sum(axis=1)
            idcg = np.cumsum(discounts[:k])[np.minimum(n_truth, k).astype(int) - 1]
            empty = n_truth == 0
            out[f"recall@{k}"] = np.where(empty, np.nan, hits[:, :k].sum(axis=1) / n_truth)
            out[f"ndcg@{k}"] = np.where(empty, np.nan, dcg / np.where(empty, 1.0, idcg))
    return out


def head_tail_metrics(topk: np.ndarray, truth: sp.csr_matrix, head: np.ndarray, ks=(20,)) -> dict:
    """Mean Recall/NDCG@K with ground truth restricted to head items and to tail items, plus user counts."""
    out = {}
    for name, keep in (("head", head), ("tail", ~head)):
        restricted = sp.csr_matrix(truth) @ sp.diags(keep.astype(np.float32))
        restricted.eliminate_zeros()
        per_user = ranking_metrics(topk, restricted, ks)
        for metric, values in per_user.items():
            out[f"{name}_{metric}"] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else np.nan
        out[f"{name}_users"] = int((np.diff(restricted.indptr) > 0).sum())
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (masked items should be -inf)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def recommend(score_fn, data, k: int = 50, split: str = "test", batch_size: int = 1024):
    """Top-k lists for the users with at least one `split` item: `score_fn(user_ids) -> [B, n_items]`
    scores, with train items (and valid items when split is test) masked, as in the evaluation protocol."""
    truth = getattr(data, split)
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    seen = data.train + data.valid if split == "test" else data.train
    lists = []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = np.asarray(score_fn(batch), dtype=np.float32).copy()
        rows, cols = seen[batch].nonzero()
        scores[rows, cols] = -np.inf
        lists.append(top_k(scores, k))
    return users, np.concatenate(lists) if lists else np.zeros((0, k), dtype=np.int64)


def run_popularity(users: np.ndarray, lists: np.ndarray, data, head: np.ndarray, k: int = 20) -> dict:
    """Popularity profile of one run's top-k test lists: list statistics and head/tail accuracy."""
    top = np.asarray(lists)[:, :k]
    return {**{f"{name}@{k}": v for name, v in list_stats(top, data.train_popularity(), head).items()},
            **head_tail_metrics(top, data.test[np.asarray(users)], head, ks=(k,))}
