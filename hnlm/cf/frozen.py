"""A converged CF model, frozen: trained under the study's protocol (early stopping on validation recall@20, the
best epoch's state kept) and reduced to its final user and item embeddings, cached by content key.

This is what a teacher must be for its mined negatives to mean anything: a model at least as good as the
students it serves, chosen on validation, never on test. `mine_dnsmn` mines one hard negative per training pair
from such a model with DNS(M,N)'s rule, once: the static counterpart of DNS(M,N), which re-mines every batch
with the model being trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hnlm import atomic
from hnlm.cf.samplers import PositiveIndex
from hnlm.cf.search import lr_protocol
from hnlm.cf.trainer import TrainConfig, train
from hnlm.paths import artifacts_dir


@dataclass(frozen=True)
class FrozenModel:
    user_emb: np.ndarray       # [users, d] final (propagated) embeddings at the best validation epoch
    item_emb: np.ndarray       # [items, d]
    summary: dict              # config, best epoch, epochs run, valid metrics at the best epoch (no test)


def dnsmn_config(model: str, lr: float, batch_size: int, candidates: int, top: int) -> TrainConfig:
    """A DNS(M,N) model of backbone `model` trained to convergence (early stopping on valid recall@20, lr-scaled
    validation, TrainConfig's cap): the teacher whose candidates DNS(M,N) itself ranks highest."""
    return TrainConfig(model=model, sampler="dns-mn", lr=lr, batch_size=batch_size,
                       sampler_opts={"candidates": candidates, "top": top}, **lr_protocol(lr, TrainConfig.epochs))


def model_key(data, config: TrainConfig) -> str:
    """Changes with the training split and every training setting."""
    h = hashlib.sha256(json.dumps({"dataset": data.name, "config": dataclasses.asdict(config)}, sort_keys=True,
                                  default=str).encode())
    h.update(data.train.indptr.tobytes())
    h.update(data.train.indices.tobytes())
    return h.hexdigest()[:16]


def frozen_path(data, config: TrainConfig) -> Path:
    return artifacts_dir(data.name, "frozen") / f"{config.model}-{config.sampler}-{model_key(data, config)}.npz"


def frozen_model(data, config: TrainConfig) -> FrozenModel:
    """The converged model of `config` on `data`'s training split: loaded from its cache, else trained and cached.
    Its test split is never evaluated for selection (the trainer reads test once at the best valid epoch; that
    number is left out of the summary, which only a teacher's users see)."""
    path = frozen_path(data, config)
    if path.exists():
        stored = np.load(path)
        return FrozenModel(stored["user_emb"], stored["item_emb"], json.loads(str(stored["summary"])))
    result = train(data, config, progress=False)
    model = result["model"].eval()
    with torch.no_grad():
        user, item = (e.detach().cpu().numpy().astype(np.float32) for e in model.propagate())
    summary = {"config": dataclasses.asdict(config), "best_epoch": result["best_epoch"],
               "epochs_run": result["epochs_run"], "valid": result["valid"]}
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, user_emb=user, item_emb=item, summary=json.dumps(summary))
    return FrozenModel(user, item, summary)


@torch.no_grad()
def mine_dnsmn(data, model: FrozenModel, candidates: int, top: int, seed: int,
               chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, positives, negatives) for every training pair: DNS(M,N)'s pick (uniform among the `top` best of
    `candidates` uniform non-positives, scored by the frozen model), drawn once with `seed`."""
    coo = data.train.tocoo()
    users, items = torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
    user_emb, item_emb = torch.from_numpy(model.user_emb), torch.from_numpy(model.item_emb)
    positives = PositiveIndex(data.train, "cpu")
    gen = torch.Generator().manual_seed(seed)
    negs = []
    for start in range(0, len(users), chunk):
        u = users[start:start + chunk]
        cands = positives.uniform(u, candidates, gen)
        scores = (item_emb[cands] * user_emb[u][:, None, :]).sum(-1)
        best = scores.topk(top, dim=1).indices
        pick = torch.randint(0, top, (len(u), 1), generator=gen)
        negs.append(cands.gather(1, best.gather(1, pick))[:, 0])
    return users.numpy(), items.numpy(), torch.cat(negs).numpy()
