"""Pairwise and contrastive losses on scores / embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr(pos_score: torch.Tensor, neg_score: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(s_pos - s_neg)."""
    return -F.logsigmoid(pos_score - neg_score).mean()


def hinge(pos_score: torch.Tensor, neg_score: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """mean max(0, margin - s_pos + s_neg) (the released HNLMRec code's loss)."""
    return F.relu(margin - pos_score + neg_score).mean()


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
             tau: float = 0.2) -> torch.Tensor:
    """InfoNCE over cosine / tau. Without `negatives` the other rows of `positive` are the negatives
    (in-batch); with `negatives` [B, N, d] each row is contrasted with its own N negatives."""
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    if negatives is None:
        logits = a @ p.T / tau
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
    n = F.normalize(negatives, dim=-1)
    logits = torch.cat([(a * p).sum(-1, keepdim=True), torch.einsum("bd,bnd->bn", a, n)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long, device=a.device))


LOSSES = {"bpr": bpr, "hinge": hinge}


def pairwise_loss(name: str, pos_score, neg_score, margin: float = 0.3) -> torch.Tensor:
    if name == "bpr":
        return bpr(pos_score, neg_score)
    if name == "hinge":
        return hinge(pos_score, neg_score, margin)
    raise ValueError(f"unknown loss {name!r}: choose bpr or hinge")
