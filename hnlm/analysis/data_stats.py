"""Dataset statistics for the study's data notebook: one row per dataset, and the distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hnlm.analysis.popularity import HEAD_SHARE, gini, head_mask


def dataset_row(data, head_share: float = HEAD_SHARE) -> dict:
    """Size, density, split sizes and how skewed histories and item popularity are (training split)."""
    s = data.summary()
    lengths = np.diff(data.train.indptr)
    pop = data.train_popularity()
    head = head_mask(pop, head_share)
    return {"dataset": s["dataset"], "users": s["users"], "items": s["items"],
            "interactions": s["interactions"], "density": s["density"], "train": s["train"],
            "valid": s["valid"], "test": s["test"],
            "history_mean": float(lengths.mean()), "history_median": float(np.median(lengths)),
            "history_min": int(lengths.min()), "history_max": int(lengths.max()),
            "items_never_trained": int((pop == 0).sum()),
            "head_interaction_share": float(pop[head].sum() / max(pop.sum(), 1)),
            "popularity_gini": gini(pop)}


def dataset_table(datasets, head_share: float = HEAD_SHARE) -> pd.DataFrame:
    return pd.DataFrame([dataset_row(d, head_share) for d in datasets])


def top_items(data, n: int = 10) -> pd.DataFrame:
    """The most popular training items with their text, to show what the catalogue looks like."""
    pop = data.train_popularity()
    order = np.argsort(-pop, kind="stable")[:n]
    return pd.DataFrame({"item": order, "train_interactions": pop[order],
                         "text": [data.item_text(int(i)) for i in order]})
