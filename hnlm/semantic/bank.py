"""Negative-embedding banks: any table of negative vectors keyed by the (user, positive item) pair it
was generated for, with a vectorised lookup. Shared by module 2 (text embeddings), module 3 (alignment)
and module 4 (fine-tuned LLM embeddings); independent of the CF engine.

A bank's file is one .npz of `users`, `items` (the pair keys) and `emb` (one row per pair), written by
`NegativeBank.save` (int64 keys, float32 vectors; atomically) or, for the tracked outputs/ folder, as
`NegativeBank.file_bytes(compact=True)` (int32 keys, float16 vectors), and read by `NegativeBank.load`.

A bank may hold K sampled negatives per pair (`samples`: 0..K-1, the sample each row is, e.g. module 2's K
sampled generations); `RotatingIndex` then uses sample e mod K in epoch e, so training rotates through all K."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hnlm.atomic import atomic_path

LOOKUP_RULES = ("pair", "user", "rotate")


@dataclass
class NegativeBank:
    """Negative embeddings keyed by the training pair they were generated for.

    `emb[r]` belongs to the pair (`users[r]`, `items[r]`). `source` names where the vectors come from
    (recorded in results); `meta` carries budget / model details.
    """

    emb: np.ndarray
    users: np.ndarray
    items: np.ndarray
    source: str
    meta: dict = field(default_factory=dict)
    samples: np.ndarray | None = None   # sample index of each row (None: one sample, all 0)

    def __post_init__(self):
        self.emb = np.ascontiguousarray(self.emb, dtype=np.float32)
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.samples = (np.zeros(len(self.users), np.int64) if self.samples is None
                        else np.asarray(self.samples, dtype=np.int64))
        if not (len(self.emb) == len(self.users) == len(self.items) == len(self.samples)):
            raise ValueError(f"bank rows disagree: emb {len(self.emb)}, users {len(self.users)}, "
                             f"items {len(self.items)}, samples {len(self.samples)}")

    @property
    def n_samples(self) -> int:
        """K: how many sampled negatives a pair has (1 for a bank without samples)."""
        return int(self.samples.max()) + 1 if len(self.samples) else 1

    def _arrays(self, keys=np.int64, vectors=np.float32) -> dict:
        """The file's arrays; `samples` only when there are several (one-sample files keep their old bytes)."""
        out = {"users": self.users.astype(keys), "items": self.items.astype(keys), "emb": self.emb.astype(vectors)}
        if self.n_samples > 1:
            out["samples"] = self.samples.astype(keys)
        return out

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    def file_bytes(self, compact: bool = False) -> bytes:
        """The bank's .npz file; `compact`: int32 keys and float16 vectors (shipped banks)."""
        keys, vectors = (np.int32, np.float16) if compact else (np.int64, np.float32)
        buf = io.BytesIO()
        np.savez(buf, **self._arrays(keys, vectors))
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the bank's file at `path` (a reader sees the old file or the new one, never half)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:   # a file object: np.savez would add ".npz" to a name
                np.savez(fh, **self._arrays())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, source: str, meta: dict | None = None) -> "NegativeBank":
        """The bank saved at `path` (either layout; vectors come back as float32). A damaged file raises
        OSError, ValueError or KeyError: the caller names the command that makes it again."""
        with np.load(path) as z:
            samples = z["samples"] if "samples" in z.files else None
            return cls(z["emb"], z["users"], z["items"], source, dict(meta or {}), samples)

    def __len__(self) -> int:
        return len(self.emb)

    def randomized(self, seed: int = 0) -> "NegativeBank":
        """Ablation: each vector replaced by a random direction with the same norm."""
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(self.emb.shape).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        noise *= np.linalg.norm(self.emb, axis=1, keepdims=True)
        return NegativeBank(noise, self.users, self.items, f"{self.source}|random-same-norm",
                            {**self.meta, "ablation": "random", "ablation_seed": seed}, self.samples)

    def shuffled(self, seed: int = 0) -> "NegativeBank":
        """Ablation: the vectors permuted across users (keys stay, so coverage is unchanged)."""
        perm, kept = user_derangement(self.users, seed)
        return NegativeBank(self.emb[perm], self.users, self.items, f"{self.source}|shuffled-users",
                            {**self.meta, "ablation": "shuffled", "ablation_seed": seed,
                             "rows_left_with_own_user": kept}, self.samples)


def user_derangement(users: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int]:
    """A permutation of the rows under which (nearly) no row keeps a row of its own user, and how many still
    do: rows are permuted, then each offending row is swapped with a random other row until none is left
    (at most 100 rounds; a user owning most rows can leave some)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(users))
    for _ in range(100):
        same = np.flatnonzero(users[perm] == users)
        if len(same) == 0:
            break
        # one transposition at a time: a vectorised swap with repeated indices would duplicate rows
        for i, j in zip(same, rng.integers(0, len(users), size=len(same))):
            perm[i], perm[j] = perm[j], perm[i]
    return perm, int((users[perm] == users).sum())


class BankIndex:
    """Vectorised (user, item) -> row lookup, and per-user row lists for the "user" and "rotate" rules.

    Rules: "pair": the pair's own negative only; "user": the pair's own, else a random one of the user's;
    "rotate": the user's negatives in turn, whatever the item: the n-th lookup of a user (counted over the
    index's life, so across epochs) takes row n mod K of the user's K negatives (a bank of K negatives per
    user, e.g. budget per-user:K, is then cycled through instead of pinning one negative to each pair)."""

    def __init__(self, bank: NegativeBank, n_items: int):
        self.n_items = n_items
        keys = bank.users * n_items + bank.items
        order = np.argsort(keys, kind="stable")
        self.keys, self.key_rows = keys[order], order
        by_user = np.argsort(bank.users, kind="stable")
        self.user_rows = by_user
        n_users = int(bank.users.max()) + 1 if len(bank) else 0
        counts = np.bincount(bank.users, minlength=n_users)
        self.user_start = np.concatenate([[0], np.cumsum(counts)])
        self.cursor = np.zeros(n_users, dtype=np.int64)  # lookups so far per user ("rotate")

    def pair_rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Row of each exact pair, -1 where the pair has no negative."""
        keys = users * self.n_items + items
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.key_rows[pos], -1)

    def user_rows_random(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random row of each user's negatives, -1 for users without any."""
        start, count = self._user_span(users)
        pick = start + (rng.random(len(users)) * np.maximum(count, 1)).astype(np.int64)
        return np.where(count > 0, self.user_rows[np.minimum(pick, len(self.user_rows) - 1)], -1)

    def _user_span(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first row in user_rows, number of rows) of each user; 0 rows for users the bank does not know."""
        known = users < len(self.user_start) - 1
        start = np.zeros(len(users), dtype=np.int64)
        count = np.zeros(len(users), dtype=np.int64)
        start[known] = self.user_start[users[known]]
        count[known] = self.user_start[users[known] + 1] - start[known]
        return start, count

    def user_rows_rotating(self, users: np.ndarray) -> np.ndarray:
        """The "rotate" rule's row of each lookup (-1 for users without negatives); advances the cursors."""
        start, count = self._user_span(users)
        _, inv, n = np.unique(users, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        seen_before = np.empty(len(users), dtype=np.int64)  # earlier lookups of the same user in this batch
        seen_before[order] = np.arange(len(users)) - np.repeat(np.cumsum(n) - n, n)
        has = count > 0
        turn = self.cursor[np.where(has, users, 0)] + seen_before
        rows = np.where(has, self.user_rows[np.minimum(start + turn % np.maximum(count, 1),
                                                       max(len(self.user_rows) - 1, 0))], -1)
        np.add.at(self.cursor, users[has], 1)
        return rows

    def lookup(self, users: np.ndarray, items: np.ndarray, rule: str,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows for a batch of pairs and whether each came from the exact pair (else the user's pool)."""
        rows = self.pair_rows(users, items)
        exact = rows >= 0
        if rule == "rotate":
            rotated = self.user_rows_rotating(users)
            return rotated, (rotated >= 0) & (rotated == rows)
        if rule == "user":
            reuse = self.user_rows_random(users, rng)
            rows = np.where(exact, rows, reuse)
        elif rule != "pair":
            raise ValueError(f"unknown lookup rule {rule!r}; choose from {LOOKUP_RULES}")
        return rows, exact


class RotatingIndex:
    """Epoch rotation over a bank's K samples: epoch e looks up (with `BankIndex`'s rules) only the rows of
    sample e mod K, so K epochs visit every sampled negative of a pair once, in sample order. Rows returned
    are rows of the whole bank. A bank with one sample behaves as a plain `BankIndex`."""

    def __init__(self, bank: NegativeBank, n_items: int):
        self.k = bank.n_samples
        self.rows = [np.flatnonzero(bank.samples == s) for s in range(self.k)]
        self.parts = [BankIndex(NegativeBank(np.zeros((len(r), 1), np.float32), bank.users[r], bank.items[r],
                                             bank.source), n_items) for r in self.rows]

    def sample_of(self, epoch: int) -> int:
        return int(epoch) % self.k

    def lookup(self, users: np.ndarray, items: np.ndarray, rule: str, rng: np.random.Generator,
               epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """BankIndex.lookup among the rows of sample `epoch` mod K (rows of the whole bank, -1 where none)."""
        s = self.sample_of(epoch)
        rows, exact = self.parts[s].lookup(users, items, rule, rng)
        return np.where(rows >= 0, self.rows[s][np.maximum(rows, 0)] if len(self.rows[s]) else -1, -1), exact
