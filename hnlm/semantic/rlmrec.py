"""RLMRec-Con, the LLM-enhanced baseline (Ren et al., WWW 2024), as a CF trainer extension.

Text embeddings of user and item profiles are projected by an MLP into the CF space and aligned with the
CF model's final embeddings by InfoNCE (in-batch: the batch's distinct users / positive items are the
anchors, their projected profiles the candidates, the matching profile the positive). The CF model,
sampler, loss and protocol are untouched, so it runs on the same backbone as every sampler.

Text sources: "profiles" (module 1 LLM profiles, embedded with the text encoder) or "metadata" (item
metadata text; users as demographics + training titles), recorded in the result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hnlm.cf.extension import Extension
from hnlm.errors import MissingInputError
from hnlm.semantic.alignment import cf_dim
from hnlm.semantic.common import history_context
from hnlm.semantic.profiles import profiles_of


@dataclass
class RLMRecConfig:
    weight: float = field(default=1e-2, metadata={
        "help": "weight of the InfoNCE alignment term (kd_weight of the released RLMRec-Con configs)"})
    tau: float = field(default=0.2, metadata={"help": "InfoNCE temperature (kd_temperature)"})
    hidden: tuple[int, ...] = field(default=(256,), metadata={
        "help": "hidden sizes of the text-to-CF projection, comma-separated; empty: a single linear map"})
    # Speed option that CHANGES the maths (default 0 = exact RLMRec-Con): when > 0, each InfoNCE uses at
    # most this many of the batch's distinct users (resp. positive items), drawn uniformly per batch, as
    # anchors and candidates; its N x N similarity, the dominant cost, shrinks quadratically.
    max_anchors: int = field(default=0, metadata={
        "help": "0: exact RLMRec-Con; N > 0: at most N users (items) per batch in each InfoNCE (faster, inexact)"})


def rlmrec_config(settings) -> RLMRecConfig:
    """RLMRec-Con's part of a method's settings (a dataclass extending RLMRecConfig with its own fields)."""
    return RLMRecConfig(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(RLMRecConfig)})


def info_nce(anchor: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Row i of anchor should match row i of target against the other rows (cosine / tau)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(target, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


class RLMRecExtension(Extension):
    def __init__(self, user_text: np.ndarray, item_text: np.ndarray, config: RLMRecConfig | None = None,
                 source: str = "profiles", seed: int = 0):
        super().__init__()
        self.seed = seed
        if user_text.shape[1] != item_text.shape[1]:
            raise ValueError("user and item text embeddings must have the same dimension")
        self.config = config or RLMRecConfig()
        self.source = source
        self.register_buffer("user_text", torch.as_tensor(np.asarray(user_text, np.float32)), persistent=False)
        self.register_buffer("item_text", torch.as_tensor(np.asarray(item_text, np.float32)), persistent=False)
        self.proj: nn.Module | None = None
        self._loss_sum, self._batches = 0.0, 0
        self._gen: torch.Generator | None = None

    def setup(self, model, data) -> None:
        if self.user_text.shape[0] != data.n_users or self.item_text.shape[0] != data.n_items:
            raise ValueError(f"text embeddings for {self.user_text.shape[0]} users / {self.item_text.shape[0]} "
                             f"items, dataset has {data.n_users} / {data.n_items}")
        torch.manual_seed(self.seed)
        sizes = [self.user_text.shape[1], *self.config.hidden, cf_dim(model)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU())
        self.proj = nn.Sequential(*layers)

    def on_batch(self, batch, emb):
        users, u_first = self._subsample(*unique_first(batch.users))
        items, i_first = self._subsample(*unique_first(batch.pos))
        loss = (info_nce(emb.user.index_select(0, u_first), self.proj(self.user_text[users]), self.config.tau)
                + info_nce(emb.pos.index_select(0, i_first), self.proj(self.item_text[items]), self.config.tau))
        self._loss_sum += float(loss.detach())
        self._batches += 1
        return emb, self.config.weight * loss

    def _subsample(self, ids: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All of them (max_anchors 0, the exact method), else a uniform draw of max_anchors."""
        n = self.config.max_anchors
        if n <= 0 or len(ids) <= n:
            return ids, first
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        keep = torch.randperm(len(ids), generator=self._gen)[:n].sort().values.to(ids.device)
        return ids[keep], first[keep]

    def counts(self) -> dict:
        cfg = self.config
        return {"rlmrec": {"text_source": self.source, "weight": cfg.weight, "tau": cfg.tau,
                           "hidden": list(cfg.hidden), "text_dim": int(self.user_text.shape[1]),
                           "max_anchors": cfg.max_anchors,
                           "mean_infonce": self._loss_sum / max(self._batches, 1)}}


def unique_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids and the batch position of each one's first occurrence."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return uniq, first


def metadata_texts(data) -> tuple[list[str], list[str]]:
    """User / item texts built from metadata and training interactions only."""
    items = [data.item_text(i) for i in range(data.n_items)]
    users = [history_context(data, u, np.random.default_rng([0, u])) for u in range(data.n_users)]
    return users, items


def text_embeddings(data, source: str, encoder, profiles_llm: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user [n_users, D], item [n_items, D]) text embeddings for RLMRec-Con."""
    if source == "metadata":
        users, items = metadata_texts(data)
    elif source == "profiles":
        item_prof, user_prof = profiles_of(data, profiles_llm)
        lacking = [u for u in range(data.n_users) if u not in user_prof][:5]
        lacking_i = [i for i in range(data.n_items) if i not in item_prof][:5]
        if lacking or lacking_i:
            raise MissingInputError(f"profiles of {profiles_llm} lack users {lacking} / items {lacking_i} "
                                    f"(first few): run `hnlm profiles` for all, or use --rlmrec-text metadata")
        users = [user_prof[u] for u in range(data.n_users)]
        items = [item_prof[i] for i in range(data.n_items)]
    else:
        raise ValueError(f"unknown RLMRec text source {source!r}: use 'profiles' or 'metadata'")
    return encoder.encode(users), encoder.encode(items)
