"""The prepared dataset: integer ids, CSR splits, item/user side information, training reviews."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hnlm.atomic import atomic_path, write_text
from hnlm.data import checks
from hnlm.errors import MissingItemTextError


@dataclass
class Interactions:
    """One prepared dataset.

    `train`, `valid`, `test` are binary CSR matrices (users x items). `items` and `users` are frames
    indexed by the integer ids (column `original_id` holds the source id). `reviews` has one row per
    kept (user, item) pair with its review text and split (0 train, 1 valid, 2 test); use
    `train_reviews()` for anything that builds prompts. `stats` records every filtering and split count,
and `stats["checks"]` the sanity checks (counts, warnings, errors; see hnlm.data.checks).
    """

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    items: pd.DataFrame
    users: pd.DataFrame
    reviews: pd.DataFrame
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    # --- training-only views: the only things prompt builders and candidate pools may use ---

    def train_items(self, user: int) -> np.ndarray:
        row = self.train
        return row.indices[row.indptr[user]:row.indptr[user + 1]]

    def train_reviews(self, user: int | None = None) -> pd.DataFrame:
        reviews = self.reviews[self.reviews["split"] == 0]
        if user is not None:
            reviews = reviews[reviews["user"] == user]
        return reviews[["user", "item", "review"]]

    def train_popularity(self) -> np.ndarray:
        return np.asarray(self.train.sum(axis=0)).ravel().astype(np.int64)

    # --- held-out access, for evaluation and analyses only ---

    def heldout_items(self, user: int) -> np.ndarray:
        """Valid + test items of a user (false-negative analyses); never for prompts or candidates."""
        valid, test = self.valid, self.test
        return np.concatenate([valid.indices[valid.indptr[user]:valid.indptr[user + 1]],
                               test.indices[test.indptr[user]:test.indptr[user + 1]]])

    def item_text(self, item: int) -> str:
        """One-line description of an item from its side information (title first)."""
        row = self.items.iloc[item]
        parts = [row.get("title", "") or row["original_id"]]
        if row.get("year"):
            parts[0] += f" ({row['year']})"
        for col in ("categories", "brand", "description"):
            if row.get(col):
                parts.append(f"{col}: {row[col]}")
        return "; ".join(parts)

    # --- item text for LLM methods ---

    @property
    def items_without_text(self) -> int:
        """Items with no title, categories, description or brand (LLM prompts would show their bare id)."""
        return checks.items_without_text(self.items)

    @property
    def has_item_text(self) -> bool:
        """False for ID-only data (LightGCN split files, an .inter without .item, reviews without meta)."""
        return self.items_without_text < self.n_items

    def require_item_text(self, method: str) -> None:
        """Refuse ID-only data for a method that builds prompts from item text."""
        if not self.has_item_text:
            raise MissingItemTextError(
                f"{method} needs item text (a title, and categories/description/brand where available) but "
                f"dataset {self.name!r} is ID-only: pass item metadata (--meta FILE for Amazon/Yelp reviews, a "
                f"RecBole .item file with a title column beside the .inter file), or use a CF method")

    def summary(self) -> dict:
        n = self.train.nnz + self.valid.nnz + self.test.nnz
        found = self.stats.get("checks", {})
        return {"dataset": self.name, "users": self.n_users, "items": self.n_items, "interactions": n,
                "density": n / (self.n_users * self.n_items), "train": self.train.nnz,
                "valid": self.valid.nnz, "test": self.test.nnz,
                "users_train_only": self.stats.get("users_train_only", 0),
                **found.get("counts", {}),
                "warnings": found.get("errors", []) + found.get("warnings", [])}

    def describe(self) -> str:
        """The paper-style table, split, filtering trail and every sanity-check finding (for `data stats`)."""
        s, st = self.summary(), self.stats
        split = (f"split ({st.get('split_mode')}, seed {st.get('split_seed')}"
                 + (f", validation {st['valid_source']}" if st.get("valid_source") else "") + ")")
        lines = [
            "| Dataset | #Users | #Items | #Interactions | Density |",
            "|---|---:|---:|---:|---:|",
            f"| {s['dataset']} | {s['users']:,} | {s['items']:,} | {s['interactions']:,} | {s['density']:.4%} |",
            "",
            f"{split}: train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}; "
            f"users in train only: {s['users_train_only']:,}",
            f"duplicates collapsed: {st.get('duplicates_collapsed', 0):,}; "
            f"malformed lines skipped: {st.get('malformed_lines', 0):,}",
            "filtering: " + " -> ".join(f"{step['step']}: {step['users']:,}u/{step['items']:,}i/"
                                          f"{step['interactions']:,}" for step in st.get("filter_steps", [])),
        ]
        found = st.get("checks", {})
        lines += [f"error: {m}" for m in found.get("errors", [])] + [f"warning: {m}" for m in found.get("warnings", [])]
        return "\n".join(lines)

    # --- on-disk cache ---

    def save(self, folder: Path) -> None:
        for part in ("train", "valid", "test"):
            with atomic_path(folder / f"{part}.npz") as tmp, open(tmp, "wb") as fh:
                sp.save_npz(fh, getattr(self, part))
        for part in ("items", "users", "reviews"):
            with atomic_path(folder / f"{part}.parquet") as tmp:
                getattr(self, part).to_parquet(tmp)
        # meta.json last: its presence marks a complete cache entry.
        write_text(folder / "meta.json", json.dumps({"name": self.name, "stats": self.stats}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "Interactions":
        meta = json.loads((folder / "meta.json").read_text())
        parts = {p: sp.load_npz(folder / f"{p}.npz").tocsr() for p in ("train", "valid", "test")}
        return cls(name=meta["name"], **parts, items=pd.read_parquet(folder / "items.parquet"),
                   users=pd.read_parquet(folder / "users.parquet"),
                   reviews=pd.read_parquet(folder / "reviews.parquet"), stats=meta["stats"])


def first_users(data: Interactions, n: int | None) -> Interactions:
    """The first `n` users with every split of theirs (fast runs on a large dataset; None: all). Items keep
    their ids, so the catalogue is unchanged; the name records the cut, so caches keyed by dataset name
    never mix the subset with the whole dataset."""
    if n is None or n >= data.n_users:
        return data
    reviews = data.reviews[data.reviews["user"] < n].reset_index(drop=True)
    return Interactions(f"{data.name}-first{n}", data.train[:n], data.valid[:n], data.test[:n], data.items,
                        data.users.iloc[:n], reviews, {**data.stats, "first_users": n, "of_users": data.n_users})


def build_interactions(name: str, inter: pd.DataFrame, part: np.ndarray, items: pd.DataFrame,
                       users: pd.DataFrame, stats: dict) -> Interactions:
    """Assemble CSR splits from integer-indexed interactions and their split assignment."""
    shape = (len(users), len(items))

    def csr(mask):
        rows, cols = inter["user"].to_numpy()[mask], inter["item"].to_numpy()[mask]
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        matrix.sort_indices()
        return matrix

    reviews = inter.loc[inter["review"] != "", ["user", "item", "review"]].copy()
    reviews["split"] = part[reviews.index.to_numpy()]
    return Interactions(name, csr(part == 0), csr(part == 1), csr(part == 2), items, users,
                        reviews.reset_index(drop=True), stats)
