"""Extension hook: semantic modules change the negative embedding and add loss terms per batch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Batch(NamedTuple):
    users: torch.Tensor   # LongTensor [B]
    pos: torch.Tensor     # LongTensor [B]
    neg: torch.Tensor     # LongTensor [B], the sampler's ID negatives
    epoch: int = 0        # 0-based epoch (extensions that rotate through K sampled negatives read it)


class BatchEmb(NamedTuple):
    user: torch.Tensor    # final embeddings [B, d]
    pos: torch.Tensor
    neg: torch.Tensor     # what the main loss scores as the negative; an extension may replace it


class Extension(nn.Module):
    """Base class. `setup` runs once before the optimiser is built (create parameters there); the trainer
    optimises every parameter of the extension together with the CF model."""

    def setup(self, model, data) -> None:
        pass

    def on_batch(self, batch: Batch, emb: BatchEmb) -> tuple[BatchEmb, torch.Tensor | None]:
        return emb, None

    def counts(self) -> dict:
        return {}
