"""Backbones: MF (BPR-MF) and LightGCN. Both expose the same interface used by the trainer and samplers.

`layer_embeddings()` returns one (user, item) pair per propagation layer (layer 0 = the free embeddings),
`combine(layers)` turns them into final embeddings, `propagate()` = combine(layer_embeddings()).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class _Backbone(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.n_users, self.n_items, self.embedding_dim = n_users, n_items, dim
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        # Xavier-uniform as in the LightGCN/RecBole references, so hyper-parameters transfer.
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def layer_embeddings(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.layers_from(self.user_emb.weight, self.item_emb.weight)

    def layers_from(self, user: torch.Tensor, item: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (user, item) layers grown from layer-0 tables [n_users, d] and [n_items, d], or from several
        runs' tables at once, [runs, n_users, d] and [runs, n_items, d] (hnlm.cf.group)."""
        raise NotImplementedError

    def combine(self, layers):
        raise NotImplementedError

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combine(self.layer_embeddings())

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for `users`: [B, n_items]."""
        user, item = self.propagate()
        return user[users] @ item.T

    def l2(self, users, pos, neg) -> torch.Tensor:
        return l2_penalty(self.user_emb.weight, self.item_emb.weight, users, pos, neg)


def l2_penalty(user_table, item_table, users, pos, neg) -> torch.Tensor:
    """Sum of squares of the batch's layer-0 embeddings divided by the batch size."""
    terms = [user_table.index_select(0, users), item_table.index_select(0, pos), item_table.index_select(0, neg)]
    return sum(t.pow(2).sum() for t in terms) / len(users)


class MF(_Backbone):
    """Matrix factorisation: score = <user, item>."""

    def layers_from(self, user, item):
        return [(user, item)]

    def combine(self, layers):
        return layers[-1]


class _SymSpMM(torch.autograd.Function):
    """A @ x for a symmetric sparse A: the backward pass is A @ grad (no transpose needed)."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adj @ grad


def normalized_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 [[0, R], [R^T, 0]] D^-1/2 over users followed by items (isolated nodes keep zero rows)."""
    n_users, n_items = train.shape
    r = sp.csr_matrix(train, dtype=np.float32)
    adj = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    d = sp.diags(inv)
    out = (d @ adj @ d).tocsr()
    out.sort_indices()
    return out


def to_torch_csr(m: sp.csr_matrix, device) -> torch.Tensor:
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                   torch.from_numpy(m.indices.astype(np.int64)),
                                   torch.from_numpy(m.data.astype(np.float32)), size=m.shape).to(device)


class LightGCN(_Backbone):
    """LightGCN (He et al. 2020): e^{k+1} = A_hat e^k, final = mean over layers 0..K."""

    def __init__(self, n_users: int, n_items: int, dim: int, train: sp.csr_matrix, layers: int = 3):
        super().__init__(n_users, n_items, dim)
        self.n_layers = layers
        self._adj_cpu = normalized_adjacency(train)
        self.adj = to_torch_csr(self._adj_cpu, "cpu")

    def _apply(self, fn, *args, **kwargs):
        # Keep the sparse adjacency on the same device as the parameters (it is not a buffer:
        # sparse CSR tensors cannot be saved in a state_dict).
        out = super()._apply(fn, *args, **kwargs)
        self.adj = to_torch_csr(self._adj_cpu, self.user_emb.weight.device)
        return out

    def share_graph(self, other: "LightGCN") -> None:
        """Use `other`'s normalised adjacency (built from the same training matrix): one copy per group."""
        self._adj_cpu, self.adj = other._adj_cpu, other.adj

    def layers_from(self, user, item):
        x = torch.cat([user, item], dim=-2)
        runs = x.dim() == 3
        # several runs: [n_nodes, runs * d] columns side by side, so one sparse product propagates them all
        flat = x.transpose(0, 1).reshape(x.shape[1], -1) if runs else x
        layers = [x]
        for _ in range(self.n_layers):
            flat = _SymSpMM.apply(self.adj, flat)
            layers.append(flat.view(x.shape[1], x.shape[0], -1).transpose(0, 1) if runs else flat)   # a view
        return [(e[..., :self.n_users, :], e[..., self.n_users:, :]) for e in layers]

    def combine(self, layers):
        user = torch.stack([u for u, _ in layers]).mean(0)
        item = torch.stack([i for _, i in layers]).mean(0)
        return user, item


def build_model(name: str, data, dim: int, layers: int) -> _Backbone:
    if name == "mf":
        return MF(data.n_users, data.n_items, dim)
    if name == "lightgcn":
        return LightGCN(data.n_users, data.n_items, dim, data.train, layers)
    raise ValueError(f"unknown CF model {name!r}: choose mf or lightgcn")
