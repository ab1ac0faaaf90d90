"""Sanity checks on a dataset: findings that would make numbers misleading, counted in `stats["checks"]`.

Warnings are issued as DatasetWarning; an error-level finding (a metric would be meaningless) raises
DegenerateDatasetError from `load_dataset` unless it is called with `check=False` (for inspection).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hnlm.errors import DegenerateDatasetError

LARGEST_K = 50            # the largest cut-off the evaluation reports (recall/ndcg@50)
HEAVY_USER_SHARE = 0.5    # a user who interacted with this share of the catalogue leaves few items to rank
TEXT_COLUMNS = ("title", "categories", "description", "brand")


class DatasetWarning(UserWarning):
    pass


def duplicate_reviews(inter: pd.DataFrame) -> pd.DataFrame:
    """Rows whose non-empty review repeats, by the same user at the same time, one under another product id
    (Amazon files list a review once per product variant). Column `group` numbers the distinct reviews."""
    # cheap pass first: only a user's rows sharing a timestamp can repeat a review
    same_time = inter.groupby(["user", "timestamp"])["item"].transform("size") > 1
    texted = inter[same_time & (inter["review"] != "")]
    keys = ["user", "timestamp", "review"]
    n_items = texted.groupby(keys)["item"].transform("nunique")
    repeated = texted[n_items > 1]
    return repeated.assign(group=repeated.groupby(keys).ngroup())


def merge_variant_items(inter: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Map product ids that share a repeated review onto one id (the smallest), transitively, then keep one
    row per (user, item). Returns the interactions and the counts."""
    repeated = duplicate_reviews(inter)
    if repeated.empty:
        return inter, {"items_merged": 0}
    codes, items = pd.factorize(repeated["item"])
    n = len(items)
    groups = repeated["group"].to_numpy()
    first = pd.Series(codes).groupby(groups).transform("first").to_numpy()
    graph = coo_matrix((np.ones(len(codes)), (codes, first)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    canonical = pd.Series(items).groupby(component).transform("min").to_numpy()
    mapping = pd.Series(canonical, index=items)
    merged = inter.assign(item=inter["item"].map(mapping).fillna(inter["item"]))
    return merged, {"items_merged": int(n - len(set(canonical)))}


def duplicate_review_counts(inter: pd.DataFrame) -> dict:
    repeated = duplicate_reviews(inter)
    return {"duplicate_review_rows": int(len(repeated)),
            "duplicate_review_distinct": int(repeated["group"].nunique()) if len(repeated) else 0}


def items_without_text(items: pd.DataFrame) -> int:
    columns = [c for c in TEXT_COLUMNS if c in items.columns]
    if not columns:
        return len(items)
    has_text = np.zeros(len(items), bool)
    for c in columns:
        has_text |= items[c].fillna("").astype(str).str.strip().ne("").to_numpy()
    return int((~has_text).sum())


def run_checks(data, raw_counts: dict | None = None) -> dict:
    """Counts and messages of every check on a prepared dataset; `raw_counts` adds those taken on the raw
    file (duplicate reviews). Returns {"counts": ..., "warnings": [...], "errors": [...]}."""
    counts = dict(raw_counts or {})
    findings_warn, findings_err = [], []
    n_items = data.n_items
    if n_items <= LARGEST_K:
        findings_err.append(
            f"only {n_items} items after filtering: top-{LARGEST_K} metrics would rank the whole catalogue, so "
            f"recall@{LARGEST_K} is 1 for every method. Relax the filters (k-core, rating threshold, dates) or "
            f"use a larger file")
    per_user = np.diff(data.train.indptr) + np.diff(data.valid.indptr) + np.diff(data.test.indptr)
    heavy = int((per_user >= HEAVY_USER_SHARE * n_items).sum())
    counts["users_with_most_of_catalogue"] = heavy
    if heavy:
        findings_warn.append(f"{heavy:,} of {data.n_users:,} users interacted with >= {HEAVY_USER_SHARE:.0%} of "
                             f"the {n_items:,} items: their rankings have few candidates and inflate metrics")
    per_item = np.bincount(np.concatenate([m.indices for m in (data.train, data.valid, data.test)]),
                           minlength=n_items)
    counts["items_without_interactions"] = idle = int((per_item == 0).sum())
    if idle:
        findings_warn.append(f"{idle:,} of {n_items:,} item ids have no interaction in any split (published "
                             f"splits number the catalogue 0..max id): they are ranked as candidates")
    counts["items_without_text"] = missing = items_without_text(data.items)
    if missing == n_items:
        findings_warn.append("no item has text (title, categories, description, brand): CF methods work, "
                             "LLM methods refuse this dataset; add item text (e.g. --meta FILE, a RecBole .item file)")
    elif missing:
        findings_warn.append(f"{missing:,} of {n_items:,} items have no text: LLM prompts show their bare ids")
    dup = counts.get("duplicate_review_rows", 0)
    if dup and not counts.get("items_merged"):
        findings_warn.append(f"{dup:,} review rows repeat {counts['duplicate_review_distinct']:,} distinct reviews "
                             f"(same user, time and text) under different product ids, i.e. product variants "
                             f"counted as separate items; collapse_duplicate_reviews=True "
                             f"(--collapse-duplicate-reviews) merges those ids")
    overlap = data.stats.get("heldout_pairs_also_in_train", 0)
    if overlap:
        findings_warn.append(f"{overlap:,} valid/test pairs are also in train: they can never be recommended")
    return {"counts": counts, "warnings": findings_warn, "errors": findings_err}


def report(data, check: bool = True) -> None:
    """Issue the dataset's warnings; raise its errors when `check` (else issue them as warnings too)."""
    checks = data.stats.get("checks", {})
    errors = checks.get("errors", [])
    if errors and check:
        raise DegenerateDatasetError(f"dataset {data.name!r}: " + "; ".join(errors)
                                     + " (--allow-degenerate, or load_dataset(..., check=False), loads it for "
                                     "inspection)")
    for message in checks.get("warnings", []) + (errors if not check else []):
        warnings.warn(f"dataset {data.name!r}: {message}", DatasetWarning, stacklevel=3)
