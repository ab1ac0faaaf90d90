"""Grouped training: several runs of one dataset and backbone trained in lockstep in one process.

A study is hundreds of (method x backbone x seed) runs; most of them differ only in seed and classic sampler.
`train_group` trains such runs together and returns, per run, the result dict `hnlm.cf.trainer.train`
returns for the same config, sampler and extension:

- the runs' layer-0 tables are stacked ([R, n_users, d] and [R, n_items, d]; a LightGCN layer puts them side
  by side as [n_nodes, R * d]), so ONE sparse product per layer propagates every run over one shared
  adjacency, and ONE Adam steps all of them (Adam is element-wise: each run's update is its update alone);
- every run keeps its own RNG streams as train() uses them: initialisation and setup under
  torch.manual_seed(seed) in train()'s order, its own torch.Generator for the epoch permutation and the
  sampler draws, and its own global torch/numpy RNG state around its sampler and extension calls;
- the per-run losses are summed, not averaged, so each run's gradient is its own loss's gradient; the
  gathers that scatter gradients back are per run (one run's batch never shares an accumulation with
  another's), so on CPU a grouped run reproduces the run alone bit for bit (tests/test_cf_group.py);
- every sampler (and every extension) runs through its own `sample` (`on_batch`) per run, on its run's
  slices of the batch's embeddings; the backbone it is handed reads the run's current weights (views of
  the tables; gradients flow through the context's embeddings, as with every hnlm sampler, not through
  that backbone);
- per-run early stopping: a run whose patience is spent leaves the group with its best state, the others
  go on with the freed share of the tables and of Adam's moments;
- validation ranks every run's items for each user batch with the masks and targets built once.

Runs of a group share every TrainConfig field except seed, sampler and sampler_opts (same batch
boundaries, same learning rate, same evaluation epochs). Timings in a grouped result are the group's
seconds divided by the number of runs in the group at that epoch (the per-run share), and the result
holds a "group" entry (size, position). On CUDA the batched kernels may order float sums differently from
the run alone: metrics then agree within float drift, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hnlm.cf.evaluate import evaluate_many, require_targets
from hnlm.cf.models import LightGCN
from hnlm.cf.samplers import Negatives
from hnlm.cf.trainer import (
    BestEpoch,
    TrainConfig,
    batch_loss,
    build_run,
    check_config,
    clear_batch_context,
    finish_run,
    is_eval_epoch,
    resolve_device,
    training_pairs,
    valid_metrics,
)
from hnlm.errors import UserFacingError

RUN_FIELDS = ("seed", "sampler", "sampler_opts")   # the TrainConfig fields that may differ inside a group


class GroupError(UserFacingError, ValueError):
    """Runs that cannot train in one group; the message says which setting differs."""


class _RunRng:
    """A run's global RNG state (torch CPU, CUDA when used, numpy), swapped in around its own code."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.torch, self.numpy = torch.get_rng_state(), np.random.get_state()
        self.torch_cuda = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device, self._saved = device, None

    def __enter__(self):
        self._saved = (torch.get_rng_state(), np.random.get_state(),
                       torch.cuda.get_rng_state(self.device) if self.cuda else None)
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)
        if self.cuda:
            torch.cuda.set_rng_state(self.torch_cuda, self.device)
        return self

    def __exit__(self, *exc):
        self.torch, self.numpy = torch.get_rng_state(), np.random.get_state()
        if self.cuda:
            self.torch_cuda = torch.cuda.get_rng_state(self.device)
        torch_state, np_state, cuda_state = self._saved
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        if self.cuda:
            torch.cuda.set_rng_state(cuda_state, self.device)
        return False


@dataclasses.dataclass(eq=False)
class _Member:
    """A run inside the group: its Run (trainer.build_run), RNG state, early stopping and history."""

    run: object
    rng: _RunRng
    best: BestEpoch
    history: list = dataclasses.field(default_factory=list)
    position: int = 0     # index in the caller's list


def check_group(configs: list[TrainConfig]) -> None:
    """Raise GroupError unless the configs differ only in RUN_FIELDS."""
    if not configs:
        raise GroupError("train_group needs at least one TrainConfig")
    first = dataclasses.asdict(configs[0])
    for i, cfg in enumerate(configs[1:], 1):
        other = dataclasses.asdict(cfg)
        diff = sorted(k for k in first if k not in RUN_FIELDS and first[k] != other[k])
        if diff:
            raise GroupError(f"run {i} differs from run 0 in {diff}: a group shares every setting except "
                             f"{', '.join(RUN_FIELDS)}; train such runs in separate groups")


def _distinct(objects, what: str) -> None:
    given = [o for o in objects if o is not None]
    if len({id(o) for o in given}) != len(given):
        raise GroupError(f"the same {what} object is given to two runs: each run needs its own (they hold "
                         "per-run state and parameters)")


def train_group(data, configs: list[TrainConfig], samplers: list | None = None, extensions: list | None = None,
                progress: bool = True, shared_product: bool = True) -> list[dict]:
    """Train the runs `configs` (with optional per-run `samplers` and `extensions`, as train() takes them)
    in one group; return their train() result dicts in the same order, each with a "group" entry.

    `shared_product=False` propagates each LightGCN run with its own sparse products (same results): on a
    loaded 2-core CPU one product over [n_nodes, R * d] was not cheaper than R products over [n_nodes, d]
    (torch profiler), so bench/cf_grid.py times both."""
    check_group(configs)
    n = len(configs)
    samplers, extensions = samplers or [None] * n, extensions or [None] * n
    if len(samplers) != n or len(extensions) != n:
        raise GroupError(f"{n} configs but {len(samplers)} samplers and {len(extensions)} extensions")
    _distinct(samplers, "sampler")
    _distinct(extensions, "extension")
    cfg = configs[0]
    ks = check_config(cfg)
    require_targets(data)
    device = resolve_device(cfg.device)
    torch.set_num_threads(torch.get_num_threads())   # as train() does (MKL dynamic threading off)
    members, shared = [], None
    for i, (c, s, e) in enumerate(zip(configs, samplers, extensions)):
        run = build_run(data, c, device, e, s, positives=shared)
        shared = run.positives if shared is None else shared
        members.append(_Member(run, _RunRng(device), BestEpoch(c.patience), position=i))
    group = _Group(members, cfg.lr, shared_product)
    all_users, all_items = training_pairs(data, device)
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.model} x{n}", disable=not progress, leave=False)
    for epoch in bar:
        rows = group.epoch(all_users, all_items, epoch)
        if is_eval_epoch(epoch, cfg):
            _validate(data, group, rows, ks, epoch)
        for m, row in zip(group.members, rows):
            m.history.append(row)
        group.drop([m for m in group.members if m.best.stop])
        bar.set_postfix(running=len(group.members))
        if not group.members:
            break
    group.drop(group.members)
    results = []
    for m in members:
        result = finish_run(data, m.run, m.best, m.history, ks)
        result["group"] = {"size": n, "position": m.position}
        results.append(result)
    return results


def _validate(data, group: _Group, rows: list[dict], ks, epoch: int) -> None:
    """One evaluation of every running run on valid; records each run's score for early stopping."""
    t0 = time.perf_counter()
    with torch.no_grad():
        embeddings = group.final_embeddings()
    cfg = group.members[0].run.cfg
    results = evaluate_many(data, embeddings, "valid", ks, cfg.eval_batch_size)
    share = (time.perf_counter() - t0) / len(group.members)
    for m, row, valid in zip(group.members, rows, results):
        row["eval_s"] = share
        row["valid"] = valid_metrics(valid)
        m.best.record(epoch, valid[cfg.metric], m.run.modules)


class _Group:
    """The running members' stacked layer-0 tables, the optimiser over them, and one lockstep epoch."""

    def __init__(self, members: list[_Member], lr: float, shared_product: bool):
        self.members, self.lr, self.shared_product = members, lr, shared_product
        self.template = members[0].run.model      # propagation and combination rules (shared graph)
        for m in members[1:]:
            if isinstance(m.run.model, LightGCN):
                m.run.model.share_graph(self.template)
        with torch.no_grad():
            user = torch.stack([m.run.model.user_emb.weight for m in members])
            item = torch.stack([m.run.model.item_emb.weight for m in members])
        self.user, self.item = nn.Parameter(user), nn.Parameter(item)
        self.optimiser = torch.optim.Adam(self._params(), lr=lr)
        self._bind()

    def _params(self) -> list:
        extra = [p for m in self.members for mod in m.run.modules[1:] for p in mod.parameters()]
        return [self.user, self.item] + extra

    def _bind(self) -> None:
        """Point each member's backbone weights at its slice of the tables: its state_dict (best-epoch
        snapshots) and any read of its weights see the current values without a copy."""
        for k, m in enumerate(self.members):
            model = m.run.model
            model.user_emb.weight = nn.Parameter(self.user.detach()[k], requires_grad=False)
            model.item_emb.weight = nn.Parameter(self.item.detach()[k], requires_grad=False)

    def drop(self, leaving: list[_Member]) -> None:
        """Take finished members out: their backbones get their own weights back, the tables and Adam's
        moments shrink to the members left."""
        if not leaving:
            return
        for m in leaving:
            model = m.run.model
            model.user_emb.weight = nn.Parameter(model.user_emb.weight.detach().clone())
            model.item_emb.weight = nn.Parameter(model.item_emb.weight.detach().clone())
        keep = [k for k, m in enumerate(self.members) if all(m is not x for x in leaving)]
        self.members = [self.members[k] for k in keep]
        if not self.members:
            return
        old_state, old = self.optimiser.state, (self.user, self.item)
        self.user = nn.Parameter(self.user.detach()[keep].clone())
        self.item = nn.Parameter(self.item.detach()[keep].clone())
        self.optimiser = torch.optim.Adam(self._params(), lr=self.lr)
        for before, after in zip(old, (self.user, self.item)):
            if before in old_state:
                self.optimiser.state[after] = {k: v[keep].clone() if v.dim() == 3 else v.clone()
                                               for k, v in old_state[before].items()}
        for p in self._params()[2:]:
            if p in old_state:
                self.optimiser.state[p] = old_state[p]
        self._bind()

    def final_embeddings(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._propagate()[1]

    def epoch(self, all_users, all_items, epoch: int) -> list[dict]:
        """One lockstep pass: every member's own permutation, same batch boundaries, one backward and one
        Adam step per batch for all members."""
        runs = [m.run for m in self.members]
        t0 = time.perf_counter()
        self.template.train()
        for run in runs:
            run.ctx.epoch = epoch - 1
            run.model.train()
        orders = [torch.randperm(len(all_users), generator=run.gen, device=all_users.device) for run in runs]
        sample_s, totals = [0.0] * len(runs), [0.0] * len(runs)
        batch_size = runs[0].cfg.batch_size
        for start in range(0, len(all_users), batch_size):
            idx = [o[start:start + batch_size] for o in orders]
            users, pos = [all_users[i] for i in idx], [all_items[i] for i in idx]
            layer0 = self._set_contexts()
            negs = self._sample(users, pos, sample_s)
            losses = []
            for k, m in enumerate(self.members):
                with m.rng:
                    losses.append(batch_loss(m.run, users[k], pos[k], negs[k], layer0[k]))
            self.optimiser.zero_grad(set_to_none=True)
            sum(losses).backward()
            self.optimiser.step()
            for k, loss in enumerate(losses):
                totals[k] += float(loss.detach()) * len(users[k])
        for run in runs:
            clear_batch_context(run.ctx)
        share = (time.perf_counter() - t0) / len(runs)
        return [{"loss": t / len(all_users), "train_s": share, "sample_s": s, "epoch": epoch}
                for t, s in zip(totals, sample_s)]

    def _propagate(self):
        """Every member's layers, final embeddings and layer-0 tables, as per-member (user, item) slices.
        With `shared_product` one sparse product per layer serves all members, else one per member."""
        # One unbind per tensor: where a tensor is used twice (MF: the tables are layer 0, the final
        # embeddings and the L2 operand) every use goes through the same slice, as through the one weight
        # alone, so gradients accumulate in the same order.
        slices = {}

        def split(t):
            if id(t) not in slices:
                slices[id(t)] = t.unbind(0)
            return slices[id(t)]

        first = list(zip(split(self.user), split(self.item)))
        if self.shared_product:
            layers = self.template.layers_from(self.user, self.item)
            user_f, item_f = self.template.combine(layers)
            per_member = [list(m) for m in zip(*[list(zip(split(u), split(i))) for u, i in layers])]
            return per_member, list(zip(split(user_f), split(item_f))), first
        per_member = [self.template.layers_from(u, i) for u, i in first]
        return per_member, [self.template.combine(layers) for layers in per_member], first

    def _set_contexts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Propagate, and give each member its own slices (per layer and final) in its sampler context;
        returns each member's layer-0 (user, item) tables for the L2 term."""
        per_member, finals, first = self._propagate()
        for m, layers, final in zip(self.members, per_member, finals):
            m.run.ctx.layers = layers
            m.run.ctx.user_emb, m.run.ctx.item_emb = final
        return first

    def _sample(self, users, pos, sample_s) -> list[Negatives]:
        """Every member's negatives from its own sampler, on its slices of the batch's embeddings."""
        negs = []
        for k, m in enumerate(self.members):
            ts = time.perf_counter()
            with m.rng:
                negs.append(m.run.sampler.sample(users[k], pos[k], m.run.model, m.run.ctx))
            sample_s[k] += time.perf_counter() - ts
        return negs
