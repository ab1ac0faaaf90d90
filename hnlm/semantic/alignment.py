"""Module 3: semantic alignment of negative embeddings into the CF space.

Generic on purpose: a `NegativeBank` is any table of negative embeddings (MiniLM text embeddings of
module 2, or the fine-tuned LLM's pooled outputs of module 4, any dimension) with the (user, positive
item) each row belongs to. `AlignmentExtension` trains an MLP adapter text-space -> CF space jointly with
the CF model and, per training pair,

    e_neg' = alpha * adapter(h) + (1 - alpha) * e_neg                       (replaces the ID negative)
    L_con  = weight * mean softplus((cos(u, adapter(h)) - cos(u, e_pos)) / tau)  (user pushed away from h)

Missing negatives (no row for the pair, nor for the user under the "user" rule) are counted and the pair
keeps its plain ID negative and gets no contrastive term; never a random vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hnlm.cf.extension import Extension

LOOKUP_RULES = ("pair", "user")


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

    def __post_init__(self):
        self.emb = np.ascontiguousarray(self.emb, dtype=np.float32)
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        if not (len(self.emb) == len(self.users) == len(self.items)):
            raise ValueError(f"bank rows disagree: emb {len(self.emb)}, users {len(self.users)}, "
                             f"items {len(self.items)}")

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    def __len__(self) -> int:
        return len(self.emb)

    def randomized(self, seed: int = 0) -> "NegativeBank":
        """Ablation: each vector replaced by a random direction with the same norm."""
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(self.emb.shape).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        noise *= np.linalg.norm(self.emb, axis=1, keepdims=True)
        return NegativeBank(noise, self.users, self.items, f"{self.source}|random-same-norm",
                            {**self.meta, "ablation": "random", "ablation_seed": seed})

    def shuffled(self, seed: int = 0) -> "NegativeBank":
        """Ablation: the vectors permuted across users (keys stay, so coverage is unchanged).

        Rows are permuted until no row keeps a vector of its own user (a derangement at user level)."""
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(self))
        for _ in range(100):
            same = np.flatnonzero(self.users[perm] == self.users)
            if len(same) == 0:
                break
            # Swap each offending row with a random other row; repeat until none is left.
            other = rng.integers(0, len(self), size=len(same))
            perm[same], perm[other] = perm[other], perm[same].copy()
        kept = int((self.users[perm] == self.users).sum())
        return NegativeBank(self.emb[perm], self.users, self.items, f"{self.source}|shuffled-users",
                            {**self.meta, "ablation": "shuffled", "ablation_seed": seed,
                             "rows_left_with_own_user": kept})


class BankIndex:
    """Vectorised (user, item) -> row lookup, and per-user row lists for the "user" rule."""

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

    def pair_rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Row of each exact pair, -1 where the pair has no negative."""
        keys = users * self.n_items + items
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.key_rows[pos], -1)

    def user_rows_random(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random row of each user's negatives, -1 for users without any."""
        n_known = len(self.user_start) - 1
        known = users < n_known
        start = np.zeros(len(users), dtype=np.int64)
        count = np.zeros(len(users), dtype=np.int64)
        start[known] = self.user_start[users[known]]
        count[known] = self.user_start[users[known] + 1] - start[known]
        pick = start + (rng.random(len(users)) * np.maximum(count, 1)).astype(np.int64)
        return np.where(count > 0, self.user_rows[np.minimum(pick, len(self.user_rows) - 1)], -1)

    def lookup(self, users: np.ndarray, items: np.ndarray, rule: str,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows for a batch of pairs and whether each came from the exact pair (else the user's pool)."""
        rows = self.pair_rows(users, items)
        exact = rows >= 0
        if rule == "user":
            reuse = self.user_rows_random(users, rng)
            rows = np.where(exact, rows, reuse)
        elif rule != "pair":
            raise ValueError(f"unknown lookup rule {rule!r}; choose from {LOOKUP_RULES}")
        return rows, exact


def make_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cf_dim(model) -> int:
    """Embedding size of a CF model (from its layer-0 tables, else from one propagation)."""
    for name in ("embedding_dim", "dim", "emb_dim"):
        if isinstance(getattr(model, name, None), int):
            return getattr(model, name)
    with torch.no_grad():
        user, _ = model.propagate()
    return user.shape[1]


@dataclass
class AlignmentConfig:
    alpha: float = 0.01          # DESIGN.md (Toys); mixing weight of the aligned vector
    weight: float = 1e-3         # contrastive term weight
    tau: float = 0.2             # contrastive temperature
    hidden: tuple[int, ...] = (256,)  # adapter hidden sizes; () = a single linear map
    lookup: str = "user"         # "pair": exact (user, pos) only; "user": else any negative of the user
    seed: int = 0


class AlignmentExtension(Extension):
    """Module 3 as a trainer extension: adapter trained jointly, mixing + contrastive term."""

    def __init__(self, bank: NegativeBank, config: AlignmentConfig | None = None):
        super().__init__()
        self.bank = bank
        self.config = config or AlignmentConfig()
        if self.config.lookup not in LOOKUP_RULES:
            raise ValueError(f"unknown lookup rule {self.config.lookup!r}; choose from {LOOKUP_RULES}")
        self.register_buffer("table", torch.from_numpy(bank.emb.copy()), persistent=False)
        self.adapter: nn.Module | None = None
        self._rng = np.random.default_rng(self.config.seed)
        self._counts = {"pairs": 0, "with_negative": 0, "exact_pair": 0, "user_reuse": 0, "missing": 0}
        self._cos_sum = 0.0

    def setup(self, model, data) -> None:
        if len(self.bank) == 0:
            raise ValueError("the negative bank is empty: generate negatives first (hnlm sns ...)")
        self.index = BankIndex(self.bank, data.n_items)
        torch.manual_seed(self.config.seed)
        self.adapter = make_mlp([self.bank.dim, *self.config.hidden, cf_dim(model)])

    def aligned(self, rows: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.table[rows])

    def on_batch(self, batch, emb):
        users = batch.users.cpu().numpy()
        pos = batch.pos.cpu().numpy()
        rows, exact = self.index.lookup(users, pos, self.config.lookup, self._rng)
        have = rows >= 0
        c = self._counts
        c["pairs"] += len(rows)
        c["with_negative"] += int(have.sum())
        c["exact_pair"] += int(exact.sum())
        c["user_reuse"] += int((have & ~exact).sum())
        c["missing"] += int((~have).sum())
        if not have.any():
            return emb, None
        mask = torch.from_numpy(have).to(emb.neg.device)
        h = self.aligned(torch.from_numpy(rows[have]).to(self.table.device))
        a = self.config.alpha
        neg = emb.neg.clone()
        neg[mask] = a * h + (1 - a) * emb.neg[mask]
        u, p = emb.user[mask], emb.pos[mask]
        cos_uh = F.cosine_similarity(u, h, dim=-1)
        loss = F.softplus((cos_uh - F.cosine_similarity(u, p, dim=-1)) / self.config.tau).mean()
        self._cos_sum += float(cos_uh.detach().sum())
        return replace_neg(emb, neg), self.config.weight * loss

    def counts(self) -> dict:
        c = dict(self._counts)
        c["mean_cos_user_aligned"] = self._cos_sum / max(c["with_negative"], 1)
        cfg = self.config
        return {"alignment": {**c, "source": self.bank.source, "bank_rows": len(self.bank),
                              "bank_dim": self.bank.dim, "alpha": cfg.alpha, "weight": cfg.weight,
                              "tau": cfg.tau, "hidden": list(cfg.hidden), "lookup": cfg.lookup,
                              "missing_rule": "pair keeps its ID negative, no contrastive term",
                              **{f"bank_{k}": v for k, v in self.bank.meta.items()}}}


def replace_neg(emb, neg):
    """Copy of the trainer's embedding bundle with `neg` replaced (namedtuple or dataclass)."""
    if hasattr(emb, "_replace"):
        return emb._replace(neg=neg)
    import dataclasses
    return dataclasses.replace(emb, neg=neg)
