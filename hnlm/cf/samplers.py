"""Negative samplers, vectorised in torch (no Python loop per interaction).

Every sampler draws its candidates with `PositiveIndex.uniform`/`.exclude`, so a negative is never a
training positive of its user (exact check against the training CSR via sorted (user, item) keys). Only
the training matrix is ever given to a sampler: valid/test items cannot influence negatives.

`Sampler.sample(users, pos, model, ctx) -> Negatives(items [B], emb [B, d] | None, loss | None)`:
`emb` (if given) replaces the embedding of `items` in the main loss (MixGCF's synthetic negatives);
`loss` is an extra term the sampler trains with (DENS's gates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class Negatives(NamedTuple):
    items: torch.Tensor
    emb: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class PositiveIndex:
    """Exact membership test for training (user, item) pairs, and exclusion-aware uniform draws."""

    MAX_ROUNDS = 64     # redraw rounds before the exact per-row fallback (only for nearly full rows)
    DENSE_LIMIT = 2e8   # up to this many user x item cells, a dense bitmap (fast gathers); else sorted keys

    def __init__(self, train: sp.csr_matrix, device):
        coo = train.tocoo()
        self.n_items = train.shape[1]
        keys = torch.from_numpy(coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64))
        self.dense = train.shape[0] * train.shape[1] <= self.DENSE_LIMIT
        if self.dense:
            self.table = torch.zeros(train.shape[0] * self.n_items, dtype=torch.bool)
            self.table[keys] = True
            self.table = self.table.to(device)
        else:
            self.table = torch.sort(keys).values.to(device)
        self.train = train.tocsr()
        self.counts = {"draws": 0, "redrawn": 0, "exact_fallback": 0}

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Bool tensor shaped like `items`: is (users[b], items[b, ...]) a training pair."""
        u = users.reshape(users.shape + (1,) * (items.dim() - users.dim()))
        key = u * self.n_items + items
        if self.dense:
            return self.table[key]
        if len(self.table) == 0:
            return torch.zeros_like(key, dtype=torch.bool)
        idx = torch.searchsorted(self.table, key).clamp_(max=len(self.table) - 1)
        return self.table[idx] == key

    def exclude(self, users: torch.Tensor, items: torch.Tensor,
                redraw: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Replace every training positive in `items` [B, M] by fresh draws from `redraw(n)`."""
        self.counts["draws"] += items.numel()
        users = users.reshape(users.shape + (1,) * (items.dim() - users.dim())).expand_as(items)
        items = items.clone()
        bad = self.contains(users, items).nonzero(as_tuple=True)
        for _ in range(self.MAX_ROUNDS):
            n = len(bad[0])
            if n == 0:
                return items
            self.counts["redrawn"] += n
            fresh = redraw(n)
            items[bad] = fresh
            still = self.contains(users[bad], fresh)   # only the redrawn entries need a new check
            bad = tuple(b[still] for b in bad)
        mask = torch.zeros_like(items, dtype=torch.bool)
        mask[bad] = True
        return self._exact(users[..., 0] if users.dim() > 1 else users, items, mask)

    def _exact(self, users, items, bad):
        """Uniform over the row's non-positives for the (rare) entries still bad after MAX_ROUNDS."""
        rows, cols = torch.nonzero(bad, as_tuple=True)
        self.counts["exact_fallback"] += len(rows)
        out = items.clone()
        rng = np.random.default_rng(int(items.sum()))  # deterministic given the draws so far
        for r, c in zip(rows.tolist(), cols.tolist()):
            u = int(users[r])
            seen = self.train.indices[self.train.indptr[u]:self.train.indptr[u + 1]]
            free = np.setdiff1d(np.arange(self.n_items), seen)
            if len(free) == 0:
                raise ValueError(f"user {u} has interacted with every item: no negative exists")
            out[r, c] = int(rng.choice(free))
        return out

    def uniform(self, users: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
        """[B, m] items drawn uniformly among each user's non-positives."""
        dev = users.device

        def draw(n):
            return torch.randint(0, self.n_items, (n,), generator=gen, device=dev)

        return self.exclude(users, draw(len(users) * m).view(len(users), m), draw)


@dataclass
class SamplerContext:
    """What a sampler may use: training positives, training popularity, RNG, epoch, and the current
    batch's embeddings (final and per layer, still attached to the graph)."""

    positives: PositiveIndex
    popularity: torch.Tensor
    generator: torch.Generator
    epoch: int = 0
    user_emb: torch.Tensor | None = None
    item_emb: torch.Tensor | None = None
    layers: list = field(default_factory=list)


class Sampler:
    name = "base"

    def setup(self, model, data) -> None:
        pass

    def sample(self, users, pos, model, ctx: SamplerContext) -> Negatives:
        raise NotImplementedError

    def counts(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items()
                                      if isinstance(v, (int, float, str)) and not k.startswith("_")}}


class RNS(Sampler):
    """Uniform over the user's non-positives."""

    name = "rns"

    def sample(self, users, pos, model, ctx):
        return Negatives(ctx.positives.uniform(users, 1, ctx.generator)[:, 0])


class PNS(Sampler):
    """Popularity-based: P(i) proportional to (train count + 1) ** beta, positives excluded."""

    name = "pns"

    def __init__(self, beta: float = 0.75):
        self.beta = float(beta)

    def sample(self, users, pos, model, ctx):
        weights = (ctx.popularity + 1.0).pow(self.beta)

        def draw(n):
            return torch.multinomial(weights, n, replacement=True, generator=ctx.generator)

        items = ctx.positives.exclude(users, draw(len(users)).view(-1, 1), draw)
        return Negatives(items[:, 0])


def candidate_scores(users, cands, ctx) -> torch.Tensor:
    """Current (detached) scores of candidates [B, M] for their users."""
    u = ctx.user_emb.detach()[users]
    return torch.bmm(ctx.item_emb.detach()[cands], u.unsqueeze(2)).squeeze(2)


class DNS(Sampler):
    """Dynamic negative sampling (Zhang et al. 2013): the highest-scored of M uniform candidates."""

    name = "dns"

    def __init__(self, candidates: int = 32):
        self.candidates = int(candidates)

    def sample(self, users, pos, model, ctx):
        with torch.no_grad():
            cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
            best = candidate_scores(users, cands, ctx).argmax(1, keepdim=True)
        return Negatives(cands.gather(1, best)[:, 0])


class DNSMN(Sampler):
    """DNS(M, N) (Shi et al. 2023): one of the top-N of M uniform candidates, uniformly; in expectation
    the loss averages over the N hardest of M."""

    name = "dns-mn"

    def __init__(self, candidates: int = 32, top: int = 5):
        if not 1 <= int(top) <= int(candidates):
            raise ValueError("dns-mn needs 1 <= top <= candidates")
        self.candidates, self.top = int(candidates), int(top)

    def sample(self, users, pos, model, ctx):
        with torch.no_grad():
            cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
            top = candidate_scores(users, cands, ctx).topk(self.top, dim=1).indices
            pick = torch.randint(0, self.top, (len(users), 1), generator=ctx.generator, device=users.device)
        return Negatives(cands.gather(1, top.gather(1, pick))[:, 0])


class MixGCF(Sampler):
    """MixGCF (Huang et al. 2021): per layer l, positive mixing n' = a_l * p_l + (1 - a_l) * n_l of the
    positive into each of M uniform candidates (a_l ~ U(0, 1) per pair and layer, as in the released
    code), then hop mixing: per layer the candidate whose mix scores highest with the user's layer-l
    embedding; the synthetic negative is the layer mean of the chosen mixes.

    Since <u, a p + (1 - a) n> = a <u, p> + (1 - a) <u, n> with 1 - a > 0, the best mix is the candidate
    with the highest <u_l, n_l>: the [B, M, d] mixes are never built."""

    name = "mixgcf"

    def __init__(self, candidates: int = 32):
        self.candidates = int(candidates)

    def sample(self, users, pos, model, ctx):
        B, gen = len(users), ctx.generator
        cands = ctx.positives.uniform(users, self.candidates, gen)
        alpha = torch.rand((B, len(ctx.layers), 1), generator=gen, device=users.device)
        mixed, chosen0 = [], None
        for l, (u_l, i_l) in enumerate(ctx.layers):
            with torch.no_grad():  # selection only; the gradient flows through the chosen mix
                s = torch.bmm(i_l.detach()[cands], u_l.detach()[users].unsqueeze(2)).squeeze(2)
                chosen = cands.gather(1, s.argmax(1, keepdim=True))[:, 0]
            chosen0 = chosen if chosen0 is None else chosen0
            mixed.append(alpha[:, l] * i_l[pos] + (1 - alpha[:, l]) * i_l[chosen])
        return Negatives(chosen0, torch.stack(mixed).mean(0))


class DENS(Sampler, nn.Module):
    """DENS (Lai et al. 2023), disentangled negative sampling: learned gates split item embeddings into
    factors relevant to the positive; among M uniform candidates the one whose score on
    (1 - min(1, epoch / warmup)) * e_n - gate(e_n) is highest is chosen. The gates train with a
    factor-level BPR term (user prefers the positive's gated factors over the chosen negative's)."""

    name = "dens"

    def __init__(self, candidates: int = 32, warmup: int = 10, weight: float = 1.0):
        nn.Module.__init__(self)
        self.candidates, self.warmup, self.weight = int(candidates), int(warmup), float(weight)
        self.gates: nn.ModuleDict | None = None

    def setup(self, model, data):
        d = model.embedding_dim
        self.gates = nn.ModuleDict({k: nn.Linear(d, d) for k in ("item", "user", "pos", "neg")})

    def _gated_pos(self, u, p):
        g = self.gates
        return p * torch.sigmoid(g["item"](p) + g["user"](u))

    def sample(self, users, pos, model, ctx):
        g = self.gates
        u, p = ctx.user_emb[users], ctx.item_emb[pos]
        cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
        with torch.no_grad():
            items = ctx.item_emb.detach()
            neg_gate = g["neg"](items)                 # once per item, then gathered per candidate
            shift = g["pos"](self._gated_pos(u.detach(), p.detach()))
            n = items[cands]                           # [B, M, d]
            keep = 1.0 - min(1.0, ctx.epoch / max(self.warmup, 1))
            # <u, keep * n - n * sigmoid(.)> = <u * n, keep - sigmoid(.)>
            gate = torch.sigmoid(neg_gate[cands] + shift[:, None])
            best = ((u.detach()[:, None] * n) * (keep - gate)).sum(-1).argmax(1)
        chosen = cands[torch.arange(len(users), device=cands.device), best]
        # Factor-level term: trains the gates (and embeddings) on the chosen pair.
        e_n = ctx.item_emb[chosen]
        gated_p = self._gated_pos(u, p)
        gated_n = e_n * torch.sigmoid(g["neg"](e_n) + g["pos"](gated_p))
        s_rel = (u * gated_p).sum(-1) - (u * gated_n).sum(-1)
        loss = -torch.nn.functional.logsigmoid(s_rel).mean() * self.weight
        return Negatives(chosen, None, loss)

    def describe(self):
        return {"name": self.name, "candidates": self.candidates, "warmup": self.warmup, "weight": self.weight}


class AHNS(Sampler):
    """AHNS (Lai et al. 2024), adaptive hardness, instantiation AHNS_{p<0}: among M uniform candidates, the
    one whose score is closest to beta * (s_pos + alpha) ** (p + 1). With p < 0 the target falls as the
    positive's score rises: well-fitted positives get easier negatives, poorly fitted ones harder negatives.
    alpha, beta are not tuned here (options)."""

    name = "ahns"

    def __init__(self, candidates: int = 32, alpha: float = 1.0, beta: float = 1.0, p: float = -2.0):
        self.candidates, self.alpha, self.beta, self.p = int(candidates), float(alpha), float(beta), float(p)

    def sample(self, users, pos, model, ctx):
        with torch.no_grad():
            cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
            s_neg = candidate_scores(users, cands, ctx)
            s_pos = (ctx.user_emb.detach()[users] * ctx.item_emb.detach()[pos]).sum(-1, keepdim=True)
            base = s_pos + self.alpha
            # sign-preserving power, so a negative base with a fractional exponent stays defined
            target = self.beta * torch.sign(base) * base.abs().clamp_min(1e-6).pow(self.p + 1)
            best = (s_neg - target).abs().argmin(1, keepdim=True)
        return Negatives(cands.gather(1, best)[:, 0])


class TableSampler(Sampler):
    """ID negatives from a per-(user, positive) table supplied by a semantic module. Rows missing from the
    table, and table entries that are training positives of the user, get a uniform draw (counted)."""

    name = "table"

    def __init__(self, users, pos, neg, n_items: int, source: str = "table"):
        users, pos, neg = (np.asarray(x, dtype=np.int64) for x in (users, pos, neg))
        keys = users * n_items + pos
        order = np.argsort(keys, kind="stable")
        # A -1 sentinel keeps searchsorted valid for an empty table (real keys are >= 0).
        self._keys = torch.from_numpy(np.concatenate([[-1], keys[order]]))
        self._neg = torch.from_numpy(np.concatenate([[0], neg[order]]))
        self.n_items, self.source = n_items, source
        self._counts = {"pairs": 0, "from_table": 0, "missing": 0, "table_was_positive": 0}

    def sample(self, users, pos, model, ctx):
        dev = users.device
        keys, negs = self._keys.to(dev), self._neg.to(dev)
        key = users * self.n_items + pos
        idx = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)
        found = keys[idx] == key
        items = negs[idx]
        bad_pos = found & ctx.positives.contains(users, items)
        redraw = ~found | bad_pos
        fill = ctx.positives.uniform(users, 1, ctx.generator)[:, 0]
        items = torch.where(redraw, fill, items)
        c = self._counts
        c["pairs"] += len(users)
        c["from_table"] += int((found & ~bad_pos).sum())
        c["missing"] += int((~found).sum())
        c["table_was_positive"] += int(bad_pos.sum())
        return Negatives(items)

    def counts(self):
        return {"table_sampler": {**self._counts, "source": self.source,
                                  "fallback": "uniform non-positive draw"}}


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "rns": RNS, "pns": PNS, "dns": DNS, "dns-mn": DNSMN, "mixgcf": MixGCF, "dens": DENS, "ahns": AHNS,
}


def get_sampler(name: str, **opts) -> Sampler:
    if name == "table":
        return TableSampler(**opts)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join([*SAMPLERS, 'table'])}")
    return SAMPLERS[name](**opts)
