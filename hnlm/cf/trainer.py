"""Training loop: sampler -> (extension) -> pairwise loss + L2, early stopping on validation, test once at
the best epoch. Returns a JSON-able result dict (see `train`)."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hnlm.atomic import write_text
from hnlm.cf.config import RANK_METRICS, TrainConfig
from hnlm.cf.evaluate import evaluate, metric_summary, require_targets
from hnlm.cf.extension import Batch, BatchEmb
from hnlm.cf.losses import pairwise_loss
from hnlm.cf.models import build_model, l2_penalty
from hnlm.cf.samplers import PositiveIndex, SamplerContext, get_sampler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _state(modules) -> list[dict]:
    # clone, not deepcopy: a view's deepcopy would copy its whole storage (hnlm.cf.group binds views)
    return [{k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in m.state_dict().items()}
            for m in modules]


def check_config(cfg: TrainConfig) -> list[int]:
    """The cut-offs to evaluate (cfg.ks plus the validation metric's K); raises on an unknown metric."""
    if cfg.metric.split("@")[0] not in RANK_METRICS:
        raise ValueError(f"unknown validation metric {cfg.metric!r}")
    return sorted({int(k) for k in cfg.ks} | {int(cfg.metric.split("@")[1])})


@dataclass
class Run:
    """One run's pieces: backbone, sampler, extension, the modules the optimiser trains, RNG and context."""

    cfg: TrainConfig
    model: torch.nn.Module
    sampler: object
    extension: object
    modules: list
    gen: torch.Generator
    ctx: SamplerContext
    positives: PositiveIndex


def build_run(data, cfg: TrainConfig, device, extension=None, sampler=None, positives=None) -> Run:
    """Seed, build and set up one run in train()'s order (the global RNG draws of initialisation and of the
    sampler's and extension's setup depend on it). `positives` shares another run's index table."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model, data, cfg.dim, cfg.layers).to(device)
    sampler = sampler if sampler is not None else get_sampler(cfg.sampler, **cfg.sampler_opts)
    if hasattr(sampler, "setup"):      # optional for samplers written outside hnlm.cf
        sampler.setup(model, data)
    modules = [model] + [m for m in (sampler, extension) if isinstance(m, torch.nn.Module)]
    if extension is not None:
        extension.setup(model, data)
    for m in modules:
        m.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    if positives is None:
        positives = PositiveIndex(data.train, device)
    else:   # same table, own counts
        positives = copy.copy(positives)
        positives.counts = {k: 0 for k in positives.counts}
    ctx = SamplerContext(positives, torch.from_numpy(data.train_popularity()).float().to(device), gen)
    return Run(cfg, model, sampler, extension, modules, gen, ctx, positives)


def training_pairs(data, device) -> tuple[torch.Tensor, torch.Tensor]:
    coo = data.train.tocoo()
    return (torch.from_numpy(coo.row.astype(np.int64)).to(device),
            torch.from_numpy(coo.col.astype(np.int64)).to(device))


class BestEpoch:
    """Early stopping on a validation score: keeps the best epoch's state and counts evaluations since."""

    def __init__(self, patience: int):
        self.patience, self.epoch, self.score, self.state, self.waited = patience, None, None, None, 0

    def record(self, epoch: int, score: float, modules) -> None:
        if self.epoch is None or score > self.score:
            self.epoch, self.score, self.state, self.waited = epoch, score, _state(modules), 0
        else:
            self.waited += 1

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience


def is_eval_epoch(epoch: int, cfg: TrainConfig) -> bool:
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def valid_metrics(valid: dict) -> dict:
    """What the history keeps of a validation pass: its metrics at a cut-off."""
    return {k: v for k, v in metric_summary(valid).items() if "@" in k}


def train(data, config: TrainConfig | None = None, extension=None, sampler=None, progress: bool = True) -> dict:
    """Train `config.model` on `data.train`; select the epoch on `data.valid`; test once there.

    `sampler` (an object with `.sample`) overrides `config.sampler`; `extension` is an
    `hnlm.cf.extension.Extension`. The result holds the config, seed, per-epoch history (loss, valid
    metrics, seconds), best epoch, valid and test metrics at the best epoch, per-user test vectors and
    the counts reported by the sampler, the extension and the positive index.
    """
    cfg = config or TrainConfig()
    ks = check_config(cfg)
    require_targets(data)
    device = resolve_device(cfg.device)
    # Same thread count, but set explicitly: torch then turns MKL's dynamic threading off, which otherwise
    # may change the BLAS reduction order under machine load (last-bit drift that flips DNS argmaxes).
    torch.set_num_threads(torch.get_num_threads())
    run = build_run(data, cfg, device, extension, sampler)
    optimiser = torch.optim.Adam([p for m in run.modules for p in m.parameters()], lr=cfg.lr)
    all_users, all_items = training_pairs(data, device)

    history, best = [], BestEpoch(cfg.patience)
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.model}/{getattr(run.sampler, 'name', 'custom')}",
               disable=not progress, leave=False)
    for epoch in bar:
        row = _run_epoch(run, optimiser, all_users, all_items, epoch)
        if is_eval_epoch(epoch, cfg):
            t0 = time.perf_counter()
            valid = evaluate(run.model, data, "valid", ks, cfg.eval_batch_size)
            row.update(eval_s=time.perf_counter() - t0, valid=valid_metrics(valid))
            best.record(epoch, valid[cfg.metric], run.modules)
            bar.set_postfix(loss=f"{row['loss']:.4f}", **{cfg.metric: f"{valid[cfg.metric]:.4f}"})
        history.append(row)
        if best.stop:
            break
    return finish_run(data, run, best, history, ks)


def finish_run(data, run: Run, best: BestEpoch, history: list, ks) -> dict:
    """Load the best epoch's state, evaluate valid and test there, and build the result dict."""
    cfg, model, sampler, extension = run.cfg, run.model, run.sampler, run.extension
    for m, s in zip(run.modules, best.state):
        m.load_state_dict(s)
    valid = evaluate(model, data, "valid", ks, cfg.eval_batch_size)
    t0 = time.perf_counter()
    test = evaluate(model, data, "test", ks, cfg.eval_batch_size)
    test_s = time.perf_counter() - t0
    counts = {"positive_index": dict(run.positives.counts),
              **(sampler.counts() if hasattr(sampler, "counts") else {})}
    if extension is not None:
        counts.update(extension.counts())
    epoch_s = [r["train_s"] for r in history]
    return {
        # config.sampler names the sampler that trained, not the default a given sampler object replaced
        "dataset": data.name, "config": {**dataclasses.asdict(cfg), "sampler": sampler_name(sampler)}, "seed": cfg.seed,
        "sampler": sampler.describe() if hasattr(sampler, "describe") else {"name": type(sampler).__name__},
        "extension": type(extension).__name__ if extension is not None else None,
        "device": str(resolve_device(cfg.device)),
        "n_params": sum(p.numel() for m in run.modules for p in m.parameters()),
        "history": history, "epochs_run": len(history), "best_epoch": best.epoch,
        "valid": metric_summary(valid), "test": metric_summary(test),
        "per_user_test": {"users": test["users"], **{k: v.tolist() for k, v in test["per_user"].items()}},
        "timings": {"train_s_per_epoch": float(np.mean(epoch_s)), "train_s_total": float(np.sum(epoch_s)),
                    "sample_s_per_epoch": float(np.mean([r["sample_s"] for r in history])),
                    "eval_s_mean": float(np.mean([r["eval_s"] for r in history if "eval_s" in r])),
                    "test_eval_s": test_s},
        "counts": counts,
        "model": model,
    }


def set_batch_context(ctx: SamplerContext, layers, combine) -> None:
    """Put the batch's per-layer and final embeddings (attached to the graph) into the sampler context."""
    ctx.layers = layers
    ctx.user_emb, ctx.item_emb = combine(layers)


def clear_batch_context(ctx: SamplerContext) -> None:
    ctx.layers, ctx.user_emb, ctx.item_emb = [], None, None


def batch_loss(run: Run, users, pos, negs, layer0) -> torch.Tensor:
    """The run's loss on one batch from the sampler's negatives: pairwise loss on the final embeddings
    (negative embedding replaced by the sampler's or the extension's if given) + L2 on the layer-0 tables
    `layer0` = (user table, item table) + the extension's and the sampler's extra terms."""
    cfg, ctx, extension = run.cfg, run.ctx, run.extension
    # index_select, not [ ]: its backward (index_add_) is ~10x faster on CPU than indexing's (index_put_)
    neg_emb = negs.emb if negs.emb is not None else ctx.item_emb.index_select(0, negs.items)
    emb = BatchEmb(ctx.user_emb.index_select(0, users), ctx.item_emb.index_select(0, pos), neg_emb)
    extra = []
    if extension is not None:
        emb, ext_loss = extension.on_batch(Batch(users, pos, negs.items, ctx.epoch), emb)
        if ext_loss is not None:
            extra.append(ext_loss)
    if getattr(negs, "loss", None) is not None:
        extra.append(negs.loss)
    pos_s = (emb.user * emb.pos).sum(-1)
    neg_s = (emb.user * emb.neg).sum(-1)
    loss = pairwise_loss(cfg.loss, pos_s, neg_s, cfg.margin) + cfg.l2 * l2_penalty(*layer0, users, pos, negs.items)
    return loss + sum(extra) if extra else loss


def _run_epoch(run: Run, optimiser, all_users, all_items, epoch: int) -> dict:
    """One pass over every training interaction in a random order."""
    model, ctx, cfg = run.model, run.ctx, run.cfg
    ctx.epoch = epoch - 1
    model.train()
    t0 = time.perf_counter()
    sample_s, total, n = 0.0, 0.0, 0
    order = torch.randperm(len(all_users), generator=run.gen, device=all_users.device)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        users, pos = all_users[idx], all_items[idx]
        set_batch_context(ctx, model.layer_embeddings(), model.combine)
        ts = time.perf_counter()
        negs = run.sampler.sample(users, pos, model, ctx)
        sample_s += time.perf_counter() - ts
        loss = batch_loss(run, users, pos, negs, (model.user_emb.weight, model.item_emb.weight))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(users)
        n += len(users)
    clear_batch_context(ctx)
    return {"loss": total / n, "train_s": time.perf_counter() - t0, "sample_s": sample_s, "epoch": epoch}


def sampler_name(sampler) -> str:
    return getattr(sampler, "name", type(sampler).__name__)


def save_result(result: dict, path: str | Path) -> Path:
    """Write the JSON-able part of a train() result (the model object is left out), atomically."""
    clean = {k: v for k, v in result.items() if k != "model"}
    return write_text(path, json.dumps(clean, indent=1, default=_json_default))


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
