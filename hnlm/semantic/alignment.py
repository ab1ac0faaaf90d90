"""Module 3: semantic alignment of negative embeddings into the CF space.

Generic on purpose: a `NegativeBank` is any table of negative embeddings (MiniLM text embeddings of
module 2, or the fine-tuned LLM's outputs of module 4, any dimension) with the (user, positive item) each
row belongs to. `AlignmentExtension` trains an MLP adapter text space -> CF space alongside the CF model
and, per training pair,

    e_neg' = alpha * h + (1 - alpha) * e_neg                        (replaces the ID negative)
    L_con  = weight * mean softplus((cos(u, h) - cos(u, e_pos)) / tau)    (user pushed away from h)

How the adapter learns (`train`):
  "anchor" (default): from the catalogue. The adapter maps the text embedding of each batch positive to
      that item's CF vector (L_anchor = anchor_weight * mean(1 - cos(adapter(t_i), e_i)), CF side
      detached). h is the adapter's output for the LLM negative, detached and rescaled to the norm of the
      ID negative it is mixed with, so the BPR and contrastive terms train the user and item embeddings,
      never the adapter.
  "joint": the adapter is trained by the BPR and contrastive terms themselves (the literal reading of the
      paper). Measured on ML-100K (README): the adapter then learns to make every negative trivially easy
      (cos(u, h) -> -0.98, h's norm grows), BPR's gradient vanishes and LightGCN stops learning at the
      popularity level (test recall@20 0.19 vs 0.36 for RNS). Kept as an ablation.

A bank with K sampled negatives per pair rotates: epoch e uses sample e mod K (`RotatingIndex`).

Missing negatives (no row for the pair, nor for the user under the "user" rule) are counted and the pair
keeps its plain ID negative and gets no contrastive term; never a random vector.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hnlm.cf.extension import Extension
from hnlm.errors import UserFacingError
from hnlm.llm.encoders import get_text_encoder
from hnlm.semantic.bank import LOOKUP_RULES, NegativeBank, RotatingIndex
from hnlm.semantic.sns import item_embeddings


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
    alpha: float = field(default=0.01, metadata={
        "help": "mixing weight of the aligned vector h in the ID negative (the paper's Toys setting)"})
    weight: float = field(default=1e-3, metadata={
        "help": "weight of the contrastive term pushing the user away from h"})
    tau: float = field(default=0.2, metadata={"help": "temperature of the contrastive term"})
    hidden: tuple[int, ...] = field(default=(256,), metadata={
        "help": "adapter hidden sizes, comma-separated; empty: a single linear map"})
    lookup: str = field(default="user", metadata={
        "help": "which bank row a pair uses: pair (its own only) or user (else any of the user's)"})
    train: str = field(default="anchor", metadata={
        "help": "how the adapter learns: anchor (maps catalogue texts to item vectors) or joint (by BPR)"})
    anchor_weight: float = field(default=1.0, metadata={"help": "weight of the anchor loss (train=anchor)"})


def alignment_config(settings) -> AlignmentConfig:
    """Module 3's part of a method's settings (a dataclass extending AlignmentConfig with its own fields)."""
    return AlignmentConfig(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(AlignmentConfig)})


class AlignmentExtension(Extension):
    """Module 3 as a trainer extension: adapter trained jointly, mixing + contrastive term."""

    def __init__(self, bank: NegativeBank, config: AlignmentConfig | None = None,
                 item_text: np.ndarray | None = None, seed: int = 0):
        """`item_text`: text embeddings of every catalogue item in the bank's space (needed by "anchor")."""
        super().__init__()
        self.bank = bank
        self.config = config or AlignmentConfig()
        if self.config.lookup not in LOOKUP_RULES:
            raise ValueError(f"unknown lookup rule {self.config.lookup!r}; choose from {LOOKUP_RULES}")
        if self.config.train not in ("anchor", "joint"):
            raise ValueError(f"unknown adapter training {self.config.train!r}; choose anchor or joint")
        if self.config.train == "anchor":
            if item_text is None or item_text.shape[1] != bank.dim:
                raise ValueError("anchor alignment needs the catalogue's text embeddings in the bank's space "
                                 f"(dim {bank.dim})")
            self.register_buffer("item_text", torch.from_numpy(np.ascontiguousarray(item_text, np.float32)),
                                 persistent=False)
        self.register_buffer("table", torch.from_numpy(bank.emb.copy()), persistent=False)
        self.adapter: nn.Module | None = None
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._counts = {"pairs": 0, "with_negative": 0, "exact_pair": 0, "user_reuse": 0, "missing": 0}
        self._samples_used: set[int] = set()   # which of the K samples training rotated through
        self._cos_sum = 0.0

    def setup(self, model, data) -> None:
        if len(self.bank) == 0:
            raise ValueError("the negative bank is empty: generate negatives first (hnlm sns ...)")
        self.index = RotatingIndex(self.bank, data.n_items)
        torch.manual_seed(self.seed)
        self.adapter = make_mlp([self.bank.dim, *self.config.hidden, cf_dim(model)])

    def aligned(self, rows: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.table[rows])

    def on_batch(self, batch, emb):
        users = batch.users.cpu().numpy()
        pos = batch.pos.cpu().numpy()
        rows, exact = self.index.lookup(users, pos, self.config.lookup, self._rng, batch.epoch)
        have = rows >= 0
        self._samples_used.add(self.index.sample_of(batch.epoch))
        c = self._counts
        c["pairs"] += len(rows)
        c["with_negative"] += int(have.sum())
        c["exact_pair"] += int(exact.sum())
        c["user_reuse"] += int((have & ~exact).sum())
        c["missing"] += int((~have).sum())
        if not have.any():
            return emb, None
        # Speed (same maths): a batch repeats bank rows and positives many times (8192 pairs, ~1k distinct
        # of each on ml-100k), so the adapter runs once per distinct row / item and is indexed back out;
        # the anchor-mode h is detached, so it runs without autograd; with full coverage no masking.
        full = bool(have.all())
        mask = None if full else torch.from_numpy(have).to(emb.neg.device)
        uniq, inv = np.unique(rows if full else rows[have], return_inverse=True)
        uniq = torch.from_numpy(uniq).to(self.table.device)
        inv = torch.from_numpy(inv.reshape(-1)).to(emb.neg.device)
        ids_neg = emb.neg if full else emb.neg[mask]
        extra = 0.0
        if self.config.train == "anchor":
            with torch.no_grad():
                h = F.normalize(self.aligned(uniq), dim=-1)[inv] * ids_neg.norm(dim=-1, keepdim=True)
            items, item_inv = torch.unique(batch.pos, return_inverse=True)
            t = self.adapter(self.item_text[items]).index_select(0, item_inv)
            extra = self.config.anchor_weight * (1 - row_cosine(t, emb.pos.detach())).mean()
        else:
            h = self.aligned(uniq).index_select(0, inv)   # index_select: fast backward on CPU
        a = self.config.alpha
        if full:
            neg = a * h + (1 - a) * emb.neg
            u, p = emb.user, emb.pos
        else:
            neg = emb.neg.clone()
            neg[mask] = a * h + (1 - a) * ids_neg
            u, p = emb.user[mask], emb.pos[mask]
        u_norm = u.norm(dim=-1)
        cos_uh = row_cosine(u, h, u_norm)
        loss = F.softplus((cos_uh - row_cosine(u, p, u_norm)) / self.config.tau).mean()
        self._cos_sum += float(cos_uh.detach().sum())
        return replace_neg(emb, neg), self.config.weight * loss + extra

    def counts(self) -> dict:
        c = dict(self._counts)
        c["mean_cos_user_aligned"] = self._cos_sum / max(c["with_negative"], 1)
        cfg = self.config
        return {"alignment": {**c, "source": self.bank.source, "bank_rows": len(self.bank),
                              "bank_samples": self.bank.n_samples, "samples_used": sorted(self._samples_used),
                              "bank_dim": self.bank.dim, "alpha": cfg.alpha, "weight": cfg.weight,
                              "tau": cfg.tau, "hidden": list(cfg.hidden), "lookup": cfg.lookup,
                              "train": cfg.train, "anchor_weight": cfg.anchor_weight,
                              "missing_rule": "pair keeps its ID negative, no contrastive term",
                              **{f"bank_{k}": v for k, v in self.bank.meta.items()}}}


def row_cosine(a: torch.Tensor, b: torch.Tensor, a_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine of each row of `a` with the same row of `b` (optionally given |a|), as F.cosine_similarity
    (eps 1e-8), whose backward is ~4x slower on CPU."""
    a_norm = a.norm(dim=-1) if a_norm is None else a_norm
    return (a * b).sum(-1) / (a_norm * b.norm(dim=-1)).clamp_min(1e-8)


def replace_neg(emb, neg):
    """Copy of the trainer's embedding bundle with `neg` replaced (namedtuple or dataclass)."""
    if hasattr(emb, "_replace"):
        return emb._replace(neg=neg)
    return dataclasses.replace(emb, neg=neg)


def catalogue_text(data, bank: NegativeBank) -> np.ndarray:
    """MiniLM text embeddings of every catalogue item: the space of module 2's negatives and of the targets
    module 4 is fine-tuned on, so the anchor adapter applies to both."""
    encoder = get_text_encoder("minilm")
    if bank.dim != encoder.dim:
        raise UserFacingError(f"bank {bank.source} has dimension {bank.dim}, not the catalogue text space "
                              f"({encoder.dim}); use train='joint' for other spaces")
    return item_embeddings(data, encoder)


def alignment_for(data, bank: NegativeBank, config: AlignmentConfig, seed: int) -> AlignmentExtension:
    """Module 3 over `bank`, with catalogue anchors when the adapter learns from them."""
    anchors = catalogue_text(data, bank) if config.train == "anchor" else None
    return AlignmentExtension(bank, config, anchors, seed=seed)
