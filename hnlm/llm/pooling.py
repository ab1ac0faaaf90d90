"""The ONE pooling rule for LLM hidden states (fine-tuning and inference alike) and centring.

Raw pooled states of small LLMs are nearly collinear (cosine ~0.98-0.999 between unrelated texts), so
cosine is only meaningful after subtracting a reference mean (optionally whitening)."""

from __future__ import annotations

import numpy as np
import torch


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last layer's states over non-padding tokens: [B,T,H], [B,T] -> [B,H].

    Works for left or right padding; computed in float32 so bf16 models pool the same way."""
    mask = attention_mask.to(hidden.device).unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp_min(1.0)


class Centerer:
    """Fit the mean (and optionally a whitening map) on a reference set; transform subtracts/whitens.

    Accepts and returns numpy arrays or torch tensors (same type as given)."""

    def __init__(self, whiten: bool = False, eps: float = 1e-5, dim: int | None = None):
        self.whiten, self.eps, self.dim = whiten, eps, dim
        self.mean: np.ndarray | None = None
        self.proj: np.ndarray | None = None  # [H, k] whitening matrix

    def fit(self, x) -> "Centerer":
        x = _np(x).astype(np.float64)
        if len(x) < 2:
            raise ValueError("Centerer.fit needs at least two reference vectors")
        self.mean = x.mean(axis=0)
        if self.whiten:
            cov = np.cov(x - self.mean, rowvar=False)
            vals, vecs = np.linalg.eigh(cov)
            order = np.argsort(vals)[::-1][: self.dim or len(vals)]
            self.proj = vecs[:, order] / np.sqrt(vals[order] + self.eps)
        return self

    def transform(self, x):
        if self.mean is None:
            raise RuntimeError("Centerer used before fit()")
        out = _np(x).astype(np.float64) - self.mean
        if self.proj is not None:
            out = out @ self.proj
        out = out.astype(np.float32)
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(out).to(x.device)
        return out

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def state_dict(self) -> dict:
        return {"whiten": self.whiten, "eps": self.eps, "dim": self.dim, "mean": self.mean, "proj": self.proj}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Centerer":
        c = cls(state["whiten"], state["eps"], state["dim"])
        c.mean, c.proj = state["mean"], state["proj"]
        return c


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).cpu().numpy()
    return np.asarray(x)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
