"""Full-ranking evaluation (the study protocol: train items masked, and valid items when testing).

Every item is ranked for every user with at least one target item; the user's training items are masked
(and validation items when testing). Recall@K = hits / |targets|; NDCG@K with IDCG over min(|targets|, K);
Hit@K = any hit; Precision@K = hits / K; all averaged over users with at least one target item. Also item
coverage, mean training popularity and long-tail share of the top-K lists (long tail = items outside the
head, `hnlm.analysis.popularity.head_mask`).

A split where no user has a target item still gives every key: the metrics averaged over users (and the
list statistics) are NaN with `n_users` 0, never a missing key. Training cannot select or report on such a
split, so `train` refuses it up front (`require_targets`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from hnlm.analysis.popularity import HEAD_SHARE, head_mask
from hnlm.cf.config import RANK_METRICS
from hnlm.errors import DegenerateDatasetError


def _rows(m: sp.csr_matrix, users: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row position in the batch, column) of the nonzeros of m[users]."""
    sub = m[users]
    counts = np.diff(sub.indptr)
    rows = np.repeat(np.arange(len(users)), counts)
    return torch.from_numpy(rows).to(device), torch.from_numpy(sub.indices.astype(np.int64)).to(device)


def rank_metrics(top: torch.Tensor, target: torch.Tensor, n_target: torch.Tensor, ks) -> dict:
    """Per-user metrics from top-K item ids [B, Kmax], a dense bool target matrix [B, n_items] and the
    target counts [B] (all > 0)."""
    hits = target.gather(1, top).float()                       # [B, Kmax]
    disc = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, device=top.device, dtype=torch.float32))
    out = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        idcg = torch.cumsum(disc[:k], 0)[n_target.clamp(max=k).long() - 1]
        out[f"recall@{k}"] = n_hit / n_target
        out[f"ndcg@{k}"] = (h * disc[:k]).sum(1) / idcg
        out[f"hit@{k}"] = (n_hit > 0).float()
        out[f"precision@{k}"] = n_hit / k
    return out


@torch.no_grad()
def evaluate(model, data, split: str = "valid", ks=(10, 20, 50), batch_size: int = 1024,
             embeddings: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Metrics of `model` on `split` ("valid" or "test"). `embeddings` skips the propagation.

    Keys: split, n_users, users, `<metric>@<k>` for RANK_METRICS and the list statistics (coverage,
    mean_popularity, longtail_share), per_user (a vector per ranking metric). With no user holding a target
    item in `split`, n_users is 0 and every metric but coverage (0) is NaN."""
    _check_split(split)
    if embeddings is None:
        was_training = model.training
        model.eval()
        embeddings = model.propagate()
        model.train(was_training)
    return evaluate_many(data, [embeddings], split, ks, batch_size)[0]


def _check_split(split: str) -> None:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")


def require_targets(data) -> None:
    """Raise unless both valid and test hold a target item for some user (training selects its epoch on
    valid and reports test: NaN there would silently pick the first epoch)."""
    for split in ("valid", "test"):
        if getattr(data, split).nnz == 0:
            raise DegenerateDatasetError(
                f"dataset {data.name!r}: no user has an item in split {split!r}, so its ranking metrics are "
                f"undefined; split the data so that users keep held-out items (a published split needs its "
                f"{split} file)")


@torch.no_grad()
def evaluate_many(data, embeddings: list[tuple[torch.Tensor, torch.Tensor]], split: str = "valid",
                  ks=(10, 20, 50), batch_size: int = 1024) -> list[dict]:
    """evaluate() for several (user, item) embedding pairs of the same data (runs of one group): the masks
    and targets of each user batch are built once; each pair's scores, top-K and metrics are its own."""
    _check_split(split)
    ks = sorted(int(k) for k in ks)
    device = embeddings[0][0].device
    target_m = getattr(data, split)
    masks = [data.train] + ([data.valid] if split == "test" else [])
    n_target_all = np.diff(target_m.indptr)
    users = np.flatnonzero(n_target_all > 0)
    popularity = data.train_popularity()
    pop = torch.from_numpy(popularity).to(device)
    n_items = embeddings[0][1].shape[0]
    kmax = min(max(ks), n_items)
    head = torch.from_numpy(head_mask(popularity, HEAD_SHARE)).to(device)
    per_user = [{} for _ in embeddings]
    tops = [[] for _ in embeddings]
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        batch_t = torch.from_numpy(batch).to(device)
        masked = [_rows(m, batch, device) for m in masks]
        target = torch.zeros(len(batch), n_items, dtype=torch.bool, device=device)
        r, c = _rows(target_m, batch, device)
        target[r, c] = True
        n_t = torch.from_numpy(n_target_all[batch]).to(device).float()
        for j, (user_emb, item_emb) in enumerate(embeddings):
            scores = user_emb[batch_t] @ item_emb.T
            for r, c in masked:
                scores[r, c] = -torch.inf
            top = scores.topk(kmax, dim=1).indices
            for name, v in rank_metrics(top, target, n_t, ks).items():
                per_user[j].setdefault(name, []).append(v.cpu())
            tops[j].append(top.cpu())
    return [_result(split, users, p, t, pop, head, n_items, kmax, ks) for p, t in zip(per_user, tops)]


def _result(split, users, per_user, tops, pop, head, n_items, kmax, ks) -> dict:
    top_all = torch.cat(tops) if tops else torch.zeros(0, kmax, dtype=torch.long)
    names = [f"{m}@{k}" for k in ks for m in RANK_METRICS]
    per_user = {n: torch.cat(per_user[n]).numpy().astype(np.float64) if n in per_user else np.zeros(0)
                for n in names}
    result = {"split": split, "n_users": int(len(users)), "users": users.tolist(),
              **{k: float(v.mean()) if len(v) else np.nan for k, v in per_user.items()},
              **_list_stats(top_all, pop.cpu(), head.cpu(), n_items, ks)}
    result["per_user"] = per_user
    return result


def _list_stats(top: torch.Tensor, pop: torch.Tensor, head: torch.Tensor, n_items: int, ks) -> dict:
    out = {}
    for k in ks:
        t = top[:, :k]
        out[f"coverage@{k}"] = float((torch.bincount(t.reshape(-1), minlength=n_items) > 0).sum() / n_items)
        out[f"mean_popularity@{k}"] = float(pop[t].float().mean()) if t.numel() else np.nan
        out[f"longtail_share@{k}"] = float((~head[t]).float().mean()) if t.numel() else np.nan
    return out


def metric_summary(result: dict) -> dict:
    """The scalar metrics of an evaluate() result (no per-user vectors, no user list)."""
    return {k: v for k, v in result.items() if k not in ("per_user", "users")}
