"""Sparsity: per-user metrics grouped by quantiles of the training-history length."""

from __future__ import annotations

import numpy as np
import pandas as pd


def history_lengths(data) -> np.ndarray:
    return np.diff(data.train.indptr).astype(np.int64)


def user_groups(lengths, n_groups: int = 4) -> tuple[np.ndarray, list[str]]:
    """Group id per user (0 = sparsest) by quantiles of history length; labels give the length range.
    Tied quantile edges merge groups, so there can be fewer than n_groups."""
    lengths = np.asarray(lengths)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_groups + 1)))
    groups = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
    labels = []
    for g in range(len(edges) - 1):
        members = lengths[groups == g]
        labels.append(f"{members.min()}-{members.max()}" if len(members) else "empty")
    return groups, labels


def metrics_by_group(per_user: dict[str, np.ndarray], users: np.ndarray, groups: np.ndarray,
                     labels: list[str]) -> pd.DataFrame:
    """Mean of each per-user metric per group. `per_user` vectors are aligned with `users` (ids), NaN
    entries (no test items) are skipped; `groups` is indexed by user id."""
    g = groups[np.asarray(users)]
    rows = []
    for gid, label in enumerate(labels):
        sel = g == gid
        row = {"group": gid, "history": label, "users": int(sel.sum())}
        for metric, values in per_user.items():
            vals = np.asarray(values, dtype=float)[sel]
            row[metric] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
