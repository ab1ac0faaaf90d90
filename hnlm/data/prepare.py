"""Filtering (rating threshold, date range, duplicates, iterated k-core) and integer re-indexing."""

from __future__ import annotations

import pandas as pd

from hnlm.data.sources import RawData
from hnlm.errors import DataFormatError, EmptyDatasetError


def _to_epoch(date: str | None) -> int | None:
    return None if date is None else int(pd.Timestamp(date, tz="UTC").timestamp())


def kcore(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than k interactions, repeated until nothing changes (fixed point)."""
    while True:
        user_counts = inter["user"].map(inter["user"].value_counts())
        item_counts = inter["item"].map(inter["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def filter_interactions(raw: RawData, min_rating: float | None, start: str | None, end: str | None,
                        k: int | None) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the preset's filters; returns the kept interactions and the counts after each step."""
    inter = raw.inter
    steps = [_step("loaded", inter)]
    if min_rating is not None and inter["rating"].isna().all():
        raise DataFormatError(f"a rating threshold ({min_rating:g}) was asked for but the data has no ratings; "
                              f"drop --min-rating")
    if (start is not None or end is not None) and (inter["timestamp"] == 0).all():
        raise DataFormatError(f"a date window [{start}, {end}) was asked for but the data has no timestamps; "
                              f"drop --start/--end")
    if min_rating is not None:
        inter = inter[inter["rating"] >= min_rating]
        steps.append(_step(f"rating >= {min_rating:g}", inter))
    if start is not None or end is not None:
        lo, hi = _to_epoch(start), _to_epoch(end)
        mask = pd.Series(True, index=inter.index)
        if lo is not None:
            mask &= inter["timestamp"] >= lo
        if hi is not None:
            mask &= inter["timestamp"] < hi
        inter = inter[mask]
        steps.append(_step(f"date in [{start}, {end})", inter))
    before = len(inter)
    # Keep the latest interaction of a repeated (user, item) pair: its rating and review are the current ones.
    inter = inter.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="last")
    steps.append(_step("duplicates collapsed", inter, collapsed=before - len(inter)))
    if k:
        inter = kcore(inter, k)
        steps.append(_step(f"{k}-core", inter))
    if inter.empty:
        trail = "; ".join(f"{s['step']}: {s['interactions']} interactions, {s['users']} users, {s['items']} items"
                          for s in steps)
        raise EmptyDatasetError(f"no interactions left after filtering ({trail})")
    return inter.reset_index(drop=True), steps


def _step(name: str, inter: pd.DataFrame, **extra) -> dict:
    return {"step": name, "interactions": int(len(inter)), "users": int(inter["user"].nunique()),
            "items": int(inter["item"].nunique()), **extra}


def reindex(inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame):
    """Map string ids to dense integers, sorted by original id so the mapping is stable across runs.

    Returns (inter with integer user/item columns, item table, user table); item/user tables are
    indexed by the new integer ids and keep the original id in column `original_id`.
    """
    user_ids = pd.Index(sorted(inter["user"].unique()))
    item_ids = pd.Index(sorted(inter["item"].unique()))
    out = inter.copy()
    out["user"] = user_ids.get_indexer(inter["user"])
    out["item"] = item_ids.get_indexer(inter["item"])
    item_table = _side_table(item_ids, items, "item")
    user_table = _side_table(user_ids, users, "user")
    return out, item_table, user_table


def _side_table(ids: pd.Index, table: pd.DataFrame, key: str) -> pd.DataFrame:
    table = table.drop_duplicates(key).set_index(key) if key in table.columns else pd.DataFrame(index=[])
    side = table.reindex(ids).fillna("").astype(str)
    side.insert(0, "original_id", ids.astype(str))
    return side.reset_index(drop=True)
