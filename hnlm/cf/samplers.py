"""Negative samplers, vectorised in torch (no Python loop per interaction).

Every sampler draws its candidates with `PositiveIndex.uniform`/`.exclude`, so a negative is never a
training positive of its user (exact check against the training CSR via sorted (user, item) keys). Only
the training matrix is ever given to a sampler: valid/test items cannot influence negatives.

`Sampler.sample(users, pos, model, ctx) -> Negatives(items [B], emb [B, d] | None, loss | None)`:
`emb` (if given) replaces the embedding of `items` in the main loss (the layer-mixed negatives of MixGCF
and DENS; `items` is then their layer-0 choice); `loss` is an extra term the sampler trains with (DENS's
gates). MixGCF and DENS choose per layer from `ctx.layers` and pool by the layer mean, which is how both
backbones combine layers (LightGCN: mean; MF: one layer). Their selection is also exposed on given
candidates (`MixGCF.synthesise`, `DENS.select`, `AHNS.select`) for the reference-equivalence tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from hnlm.cf.search import Axis
from hnlm.errors import UserFacingError


class SamplerOptionError(UserFacingError, ValueError):
    """A sampler option (`hnlm train --set KEY=VALUE`, `sampler_opts`) has a value the sampler cannot use."""


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
    search: dict = {}      # key settings the tuning protocol searches (hnlm.cf.search.Axis), none by default

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
    search = {"beta": Axis((0.5, 0.75, 1.0), low=0.0, high=2.0)}
    settings_help = {"beta": "popularity exponent: P(item) grows as (train count + 1) ** beta; 0 is uniform"}

    def __init__(self, beta: float = 0.75):
        self.beta = float(beta)

    def sample(self, users, pos, model, ctx):
        weights = (ctx.popularity + 1.0).pow(self.beta)

        def draw(n):
            return torch.multinomial(weights, n, replacement=True, generator=ctx.generator)

        items = ctx.positives.exclude(users, draw(len(users)).view(-1, 1), draw)
        return Negatives(items[:, 0])


def candidate_scores(users, cands, ctx) -> torch.Tensor:
    """Current (detached) scores of candidates [B, M] for their users, through `layer_scores`: on ml-100k one
    product of the batch's distinct users with the item table read at the candidates (2.5 ms for 8,192 x 32
    candidates against 26 ms for gathering their rows, 2 threads)."""
    return layer_scores(ctx.user_emb.detach(), [ctx.item_emb.detach()], users, cands)[..., 0]


class DNS(Sampler):
    """Dynamic negative sampling (Zhang et al. 2013): the highest-scored of M uniform candidates."""

    name = "dns"
    search = {"candidates": Axis((16, 32, 64), low=2, high=512)}
    settings_help = {"candidates": "M uniform candidates per pair; the negative is the best-scored of them"}

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
    summary = "DNS(M,N) (Shi et al. 2023): a uniform pick among the top-N of M uniform candidates"
    search = {"candidates": Axis((16, 32, 64), low=4, high=512), "top": Axis((2, 5, 10), low=1, high=64)}
    settings_help = {"candidates": "M uniform candidates per pair",
                     "top": "N: the negative is a uniform pick among the N best-scored candidates (1 <= N <= M)"}

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


def layer_rows(layers, side: int, index: torch.Tensor) -> torch.Tensor:
    """Per-layer embeddings of `index` (users: side 0, items: side 1), stacked on a new axis after the index
    dimensions: [*index.shape, L + 1, d]. Keeps the autograd graph (detach the layers for selection only)."""
    flat = index.reshape(-1)
    return torch.stack([layer[side].index_select(0, flat).view(*index.shape, -1) for layer in layers],
                       dim=index.dim())


class DistinctRows(NamedTuple):
    """The per-layer rows of the K distinct ids of an index, layer-major: table [(L+1) * K, d] (with graph),
    and `where`, each entry's distinct id. A row-wise map (a linear gate) then runs once per distinct id and
    layer on `table`, not once per entry."""

    table: torch.Tensor
    where: torch.Tensor
    n_distinct: int

    @classmethod
    def of(cls, layers, side: int, index: torch.Tensor) -> "DistinctRows":
        """From the (user, item) layers, side 0 (users) or 1 (items)."""
        distinct, where = torch.unique(index, return_inverse=True)
        return cls(torch.cat([layer[side].index_select(0, distinct) for layer in layers]), where, len(distinct))

    def rows(self, table: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of a layer-major table (`table` or a row-wise map of it) at distinct ids [..., L+1], one per
        layer (default: every entry's own id at every layer): [..., L+1, d]."""
        n_layers = table.shape[0] // self.n_distinct
        if ids is None:
            ids = self.where[..., None].expand(*self.where.shape, n_layers)
        at = ids + torch.arange(n_layers, device=ids.device) * self.n_distinct
        return table.index_select(0, at.reshape(-1)).view(*ids.shape, -1)


def chosen_rows(layers, chosen: torch.Tensor) -> torch.Tensor:
    """Layer l's item embedding of the item chosen at layer l, chosen [B, L+1] -> [B, L+1, d] (with graph)."""
    return torch.stack([item.index_select(0, chosen[:, k]) for k, (_, item) in enumerate(layers)], dim=1)


# A multiply-add inside one dense matrix product costs about 1/32 of gathering one float of a candidate's row
# and scoring it (CPU time, one thread, ml-100k: 64-candidate rows of 4 layers, 2,048 pairs, ~150 ms gathered
# vs ~25 ms for the 943 x 6,728 product; memory-bound gathers against a compute-bound product).
PRODUCT_VS_GATHER = 32
SELECTION_CHUNK = 256   # pairs per DENS selection step: its [pairs, M, L+1, d] buffers then stay in cache


@torch.no_grad()
def layer_scores(user_vecs, item_layers, users, cands) -> torch.Tensor:
    """<user_vecs[users[b]], item_layers[l][cands[b, m]]> for every pair b, candidate m, layer l: [B, M, L+1].

    Two ways to the same numbers (up to float rounding): one product of the batch's U distinct users with
    every layer's whole item table ([U, (L+1) * n_items]) read at the candidates, or gathering the
    candidates' rows of each layer ([B, M, d] each). The product is taken when its multiply-adds per layer
    and dimension (U * n_items) are at most PRODUCT_VS_GATHER times the gathered rows (B * M): on ml-100k,
    MixGCF's 64 candidates take it; large catalogues gather."""
    distinct, where = torch.unique(users, return_inverse=True)
    n_items, n_layers = item_layers[0].shape[0], len(item_layers)
    if len(distinct) * n_items <= PRODUCT_VS_GATHER * cands.numel():
        scores = user_vecs[distinct] @ torch.cat(item_layers).T                     # [U, (L+1) * n_items]
        first = torch.arange(n_layers, device=cands.device) * n_items                # layer l's first column
        at = (where * (n_layers * n_items))[:, None, None] + cands[:, :, None] + first
        return scores.view(-1).index_select(0, at.view(-1)).view(at.shape)
    u = user_vecs[users].unsqueeze(2)                                                # [B, d, 1]
    rows = cands.reshape(-1)
    return torch.stack([torch.bmm(item.index_select(0, rows).view(*cands.shape, -1), u).squeeze(2)
                        for item in item_layers], dim=2)


class MixGCF(Sampler):
    """MixGCF (Huang et al., KDD 2021), reference: github.com/huangtinglin/MixGCF, `modules/LightGCN.py`
    (`negative_sampling`, `create_bpr_loss`) and `utils/parser.py`.

    For each (user, positive) pair, M candidates are drawn uniformly among the user's non-positives. Per
    propagation layer l = 0..L:
      positive mixing   n'_{m,l} = a_l * p_l + (1 - a_l) * n_{m,l},  a_l ~ U(0, 1) per pair and layer
                        (shared by the M candidates, as the reference's `seed` [B, 1, L+1, 1]);
      hop mixing        the candidate m*_l maximising <u, n'_{m,l}>, u = the user's pooled embedding
                        (the reference with `pool = mean`, see below);
    the synthetic negative is the pooled (layer-mean) embedding of [n'_{m*_0, 0}, ..., n'_{m*_L, L}]; the
    gradient flows through it into the positive and the chosen candidates. `items` = the layer-0 choice
    m*_0 (the trainer's L2 term and extensions see that id).

    Defaults (constructor = the one source): candidates = 64 (`--n_negs` default in the reference parser;
    its README runs LightGCN with 16 on Amazon, 32 on Alibaba, 64 on Yelp2018: pass candidates=16 to mirror
    the Amazon run).

    Deliberate differences from the reference, with the reason:
    - Pooling: the parser default is `pool = concat` (its NGCF setting); the README's LightGCN commands pass
      `--agg mean`, a typo for `--pool mean` (huangtinglin/MixGCF issue #12). We use mean pooling, which is
      our LightGCN's layer combination, so u is the pooled user embedding in the hop-mixing score.
    - Selection cost: since a_l is shared by the candidates and 1 - a_l > 0, argmax_m <u, n'_{m,l}> =
      argmax_m <u, n_{m,l}>, so the [B, M, L+1, d] mixes are never built; only the L+1 chosen mixes are.
      The scores <u, n_{m,l}> come from `layer_scores` (one product of the batch's users with the layer
      tables where that is cheaper than gathering candidate rows). Same choice up to float rounding on
      exact near-ties.
    - L2: the trainer regularises the layer-0 free embedding of m*_0 (it computes L2 from item ids); the
      reference regularises the layer-0 mix a_0 p_0 + (1 - a_0) n_{m*_0, 0}. Weight 1e-4; kept to leave
      the trainer interface unchanged.
    - Candidates are drawn by a vectorised exclusion sampler, not a Python `random.choice` loop (same
      uniform distribution over non-positives, with replacement).
    """

    name = "mixgcf"
    summary = "MixGCF (Huang et al. 2021): synthetic negatives by positive and hop mixing"
    search = {"candidates": Axis((32, 64, 128), low=2, high=512)}
    settings_help = {"candidates": "M uniform candidates per pair mixed with the positive, per layer "
                                   "(the reference's --n_negs; its Amazon runs use 16)"}

    def __init__(self, candidates: int = 64):
        self.candidates = int(candidates)

    def sample(self, users, pos, model, ctx):
        cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
        mix = torch.rand((len(users), len(ctx.layers), 1), generator=ctx.generator, device=users.device)
        return self.synthesise(users, pos, cands, mix, ctx)

    @staticmethod
    def synthesise(users, pos, cands, mix, ctx) -> Negatives:
        """Hop-mixed negatives from given candidates [B, M] and mixing weights mix [B, L+1, 1]."""
        # selection only (no autograd); the gradient flows through the chosen mixes
        scores = layer_scores(ctx.user_emb.detach(), [item.detach() for _, item in ctx.layers], users, cands)
        chosen = cands.gather(1, scores.max(1).indices)                       # [B, L+1]: item chosen per layer
        n = chosen_rows(ctx.layers, chosen)
        p = layer_rows(ctx.layers, 1, pos)                                    # [B, L+1, d]
        return Negatives(chosen[:, 0], (mix * p + (1 - mix) * n).mean(1))


class DENS(Sampler, nn.Module):
    """DENS, disentangled negative sampling (Lai et al., WSDM 2023), reference: github.com/Riwei-HEU/DENS,
    `DENS/modules/LightGCN.py` (`dise_negative_sampling`, `create_bpr_loss`) and `DENS/utils/parser.py`.

    Four learned gates (d x d linear maps shared by all layers: item, user, pos, neg) split embeddings into
    factors relevant to the positive and irrelevant ones. Per layer l, for the positive p_l and user s_l:
      g_p = sigmoid(W_item p_l + W_user s_l),  r(p_l) = p_l * g_p          (relevant factors of the positive)
    and for each of M uniform candidates n_{m,l}:
      g_n = sigmoid(W_neg n_{m,l} + W_pos r(p_l)),  r(n_{m,l}) = n_{m,l} * g_n.
    Selection, per layer: m*_l = argmax_m <s_l, (1 - min(1, t / warmup)) * n_{m,l} - r(n_{m,l})> with t the
    0-based epoch; the negative is the layer mean of [n_{m*_0, 0}, ..., n_{m*_L, L}] (hop mixing as in
    MixGCF, without positive mixing), `items` = m*_0.
    Extra loss (gamma > 0), on layer-mean pooled factors scored with the pooled user u, with n the chosen
    per-layer negative, ir(x) = x - r(x) and sp = softplus:
      gamma / 4 * [sp(<u,ir(p)> - <u,r(p)>) + sp(<u,r(n)> - <u,ir(n)>)
                   + sp(<u,r(n)> - <u,r(p)>) + sp(<u,ir(p)> - <u,ir(n)>)]   (means over the batch),
    added to the trainer's BPR loss on (u, p, n). The gates train only through this term.

    Defaults (constructor = the one source, = the reference parser's): candidates = 6 (`--n_negs`),
    warmup = 100 epochs (`--warmup`), gamma = 0.3 (`--gamma`); pooling = mean (`--pool`), K = 1.

    Deliberate differences from the reference, with the reason:
    - The gates' linear maps on embeddings (item, user, neg) run once per distinct positive, user and
      candidate item of the batch and layer (then gathered), not once per pair or (pair, candidate): the
      maps are row-wise, so the values are the same; it bounds the work by the catalogue size. The loss
      reuses the neg map of the selection for the chosen candidates.
    - Selection scores as <s_l, (keep - g_n) * n_{m,l}> (= the reference's <s_l, keep * n - r(n)> up to
      float rounding), computed without autograd in chunks of pairs; same choice except on exact near-ties.
    - softplus(x) instead of log(1 + exp(x)): equal where the latter is finite, and it does not overflow.
    - Candidates come from a vectorised exclusion sampler (same distribution as the reference's loop).
    - The reference's `--alpha` is only read by commented-out code, so it is not an option here.
    - L2 as in the reference: the trainer regularises m*_0's layer-0 embedding (its `neg_gcn_embs[:, :, 0]`).
    """

    name = "dens"
    summary = "DENS (Lai et al. 2023): disentangled negatives chosen per layer, with a gated factor loss"
    search = {"candidates": Axis((3, 6, 12), low=2, high=128)}
    settings_help = {"candidates": "M uniform candidates per pair (the reference's --n_negs)",
                     "warmup": "epochs over which the raw candidate score's part in the selection falls to 0",
                     "gamma": "weight of the gated factor loss added to BPR (0: gates untrained)"}

    def __init__(self, candidates: int = 6, warmup: float = 100, gamma: float = 0.3):
        nn.Module.__init__(self)
        if not float(warmup) > 0:
            raise SamplerOptionError(f"dens: warmup must be > 0 epochs, got {warmup} (--set warmup=)")
        self.candidates, self.warmup, self.gamma = int(candidates), float(warmup), float(gamma)
        self.gates: nn.ModuleDict | None = None

    def setup(self, model, data):
        d = model.embedding_dim
        self.gates = nn.ModuleDict({k: nn.Linear(d, d) for k in ("item", "user", "pos", "neg")})

    def sample(self, users, pos, model, ctx):
        return self.select(users, pos, ctx.positives.uniform(users, self.candidates, ctx.generator), ctx)

    def select(self, users, pos, cands, ctx) -> Negatives:
        """Per-layer choice among given candidates [B, M], the pooled negative and the gate loss."""
        g, n_layers = self.gates, len(ctx.layers)
        users_d, pos_d, cands_d = (DistinctRows.of(ctx.layers, side, ids)
                                   for side, ids in ((0, users), (1, pos), (1, cands)))
        s, p = users_d.rows(users_d.table), pos_d.rows(pos_d.table)                      # [B, L+1, d]
        relevant_p = p * torch.sigmoid(pos_d.rows(g["item"](pos_d.table)) + users_d.rows(g["user"](users_d.table)))
        pos_shift = g["pos"](relevant_p)                                                # reused by the loss
        neg_shift = g["neg"](cands_d.table)                                             # reused by the loss
        keep = 1.0 - min(1.0, ctx.epoch / self.warmup)
        ids = cands_d.where[:, :, None].expand(*cands.shape, n_layers)                  # [B, M, L+1]
        scores = self.selection_scores(s.detach(), pos_shift.detach(), cands_d, neg_shift.detach(), ids, keep)
        best = scores.max(1).indices                                                    # [B, L+1]
        chosen, chosen_ids = cands.gather(1, best), cands_d.where.gather(1, best)
        neg = cands_d.rows(cands_d.table, chosen_ids)
        loss = None
        if self.gamma > 0:
            relevant_neg = neg * torch.sigmoid(cands_d.rows(neg_shift, chosen_ids) + pos_shift)
            loss = self.gamma * self.factor_loss(ctx.user_emb.index_select(0, users), p, relevant_p, neg, relevant_neg)
        return Negatives(chosen[:, 0], neg.mean(1), loss)

    @staticmethod
    @torch.no_grad()
    def selection_scores(s, pos_shift, cands_d, neg_shift, ids, keep: float) -> torch.Tensor:
        """<s_l, keep * n_{m,l} - r(n_{m,l})> = -<s_l, (g_n - keep) * n_{m,l}> for every pair, candidate and
        layer: [B, M, L+1], from the distinct candidates' rows and W_neg n + b (`neg_shift`), ids [B, M, L+1]
        their distinct ids. The [B, M, L+1, d] terms are built in place in two buffers, SELECTION_CHUNK
        pairs at a time so that the buffers stay in cache."""
        out = []
        for start in range(0, len(ids), SELECTION_CHUNK):
            part = slice(start, start + SELECTION_CHUNK)
            gate = cands_d.rows(neg_shift, ids[part])                                   # [C, M, L+1, d]
            gate.add_(pos_shift[part, None]).sigmoid_().sub_(keep).mul_(cands_d.rows(cands_d.table, ids[part]))
            out.append(gate.mul_(s[part, None]).sum(-1).neg_())
        return torch.cat(out)

    @staticmethod
    def factor_loss(u, p, relevant_p, n, relevant_n) -> torch.Tensor:
        """The reference's four gated BPR terms (without gamma); inputs per layer [B, L+1, d], u pooled [B, d]."""
        def score(x):
            return (u * x.mean(1)).sum(-1)

        pr, pir = score(relevant_p), score(p - relevant_p)
        nr, nir = score(relevant_n), score(n - relevant_n)
        sp = torch.nn.functional.softplus
        return (sp(pir - pr).mean() + sp(nr - nir).mean() + sp(nr - pr).mean() + sp(pir - nir).mean()) / 4

    def describe(self):
        return {"name": self.name, "candidates": self.candidates, "warmup": self.warmup, "gamma": self.gamma}


class AHNS(Sampler):
    """AHNS, adaptive hardness negative sampling (Lai et al., AAAI 2024), instantiation AHNS_{p<0}; reference:
    github.com/Riwei-HEU/AHNS, `modules/LightGCN.py` (`adaptive_negative_sampling`) and `utils/parser.py`.

    Among M uniform candidates, the one whose score <u, n> (inner product of layer-mean pooled embeddings)
    is closest to beta * (<u, p> + alpha) ** (p + 1). With p < 0 the target falls as the positive's score
    rises: well-fitted positives get easier negatives, poorly fitted ones harder negatives.

    Defaults (constructor = the one source, = the reference parser's): candidates = 32 (`--n_negs`),
    alpha = 1.0, beta = 0.1, p = -2 (`--p`, an integer there: a negative base with an integer power stays
    defined, so non-integer p is refused), similarity = inner product (`--simi ip`), pooling = mean.

    Deliberate differences: candidates come from a vectorised exclusion sampler (same distribution as the
    reference's loop); nothing else.
    """

    name = "ahns"
    summary = "AHNS (Lai et al. 2024): the candidate whose score is closest to an adaptive hardness target"
    search = {"beta": Axis((0.03, 0.1, 0.3), low=1e-3, high=10.0)}
    settings_help = {"candidates": "M uniform candidates per pair (the reference's --n_negs)",
                     "alpha": "shift of the positive's score in the hardness target beta * (score + alpha) ** (p + 1)",
                     "beta": "scale of the hardness target",
                     "p": "exponent of the hardness target, an integer (p < 0: worse-fit positives get harder "
                          "negatives)"}

    def __init__(self, candidates: int = 32, alpha: float = 1.0, beta: float = 0.1, p: int = -2):
        if float(p) != int(p):
            raise SamplerOptionError(f"ahns: p must be an integer (the reference's --p is an int), got {p}")
        self.candidates, self.alpha, self.beta, self.p = int(candidates), float(alpha), float(beta), int(p)

    def sample(self, users, pos, model, ctx):
        return self.select(users, pos, ctx.positives.uniform(users, self.candidates, ctx.generator), ctx)

    def select(self, users, pos, cands, ctx) -> Negatives:
        with torch.no_grad():
            s_neg = candidate_scores(users, cands, ctx)
            s_pos = (ctx.user_emb.detach()[users] * ctx.item_emb.detach()[pos]).sum(-1, keepdim=True)
            target = self.beta * (s_pos + self.alpha).pow(self.p + 1)
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
