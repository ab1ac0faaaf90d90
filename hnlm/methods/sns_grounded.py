"""SNS-grounded: each generated negative text is grounded to its nearest catalogue items (the user's
training items excluded), and those real items serve as ID negatives for a share of the pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hnlm.cf.samplers import RNS, Negatives, Sampler
from hnlm.cf.search import SHARE
from hnlm.methods import Method, register
from hnlm.semantic.bank import NegativeBank, RotatingIndex
from hnlm.semantic.resources import SNS_GROUNDED


@dataclass
class GroundedSettings:
    share: float = field(default=0.5, metadata={
        "help": "share of the pairs whose negative comes from the grounded pool (the others: uniform)"})
    pool: int = field(default=20, metadata={"help": "nearest catalogue items kept per generated text"})
    lookup: str = field(default="user", metadata={
        "help": "which pool a pair uses: pair (its own text's only) or user (else one of the user's)"})


class GroundedSampler(Sampler):
    """ID negatives from the grounded SNS pools: for a share of the pairs, a random item among the
    catalogue items nearest the pair's (or, with lookup "user", the user's) generated negatives (training
    items were excluded when grounding); the other pairs, and pairs without a pool, use the base sampler
    (counted). With K sampled negatives per pair (the frame's `sample` column), epoch e uses the pools of
    sample e mod K."""

    name = "sns-grounded"

    def __init__(self, grounded, data, base, share: float = 0.5, pool: int = 20, lookup: str = "user",
                 seed: int = 0, source: str = "sns"):
        pools = np.array([np.asarray(p, dtype=np.int64)[:pool] for p in grounded["pool"]])
        self.pools = pools.reshape(len(grounded), -1)
        samples = grounded["sample"].to_numpy() if "sample" in grounded else None
        self.index = RotatingIndex(NegativeBank(np.zeros((len(grounded), 1), np.float32),
                                                grounded["user"].to_numpy(), grounded["item"].to_numpy(),
                                                source, samples=samples), data.n_items)
        self.base, self.share, self.lookup, self.source = base, share, lookup, source
        self.pool = self.pools.shape[1]
        self.rng = np.random.default_rng(seed)
        self._counts = {"pairs": 0, "grounded": 0, "base_by_share": 0, "base_no_pool": 0}
        self._samples_used: set[int] = set()

    def sample(self, users, pos, model, ctx):
        negs = self.base.sample(users, pos, model, ctx)
        u, p = users.cpu().numpy(), pos.cpu().numpy()
        rows, _ = self.index.lookup(u, p, self.lookup, self.rng, ctx.epoch)
        self._samples_used.add(self.index.sample_of(ctx.epoch))
        take = (rows >= 0) & (self.rng.random(len(rows)) < self.share)
        c = self._counts
        c["pairs"] += len(rows)
        c["grounded"] += int(take.sum())
        c["base_no_pool"] += int((rows < 0).sum())
        c["base_by_share"] += int(((rows >= 0) & ~take).sum())
        if take.any():
            cols = self.rng.integers(0, self.pool, size=int(take.sum()))
            items = negs.items.clone()
            items[torch.from_numpy(take).to(items.device)] = torch.from_numpy(
                self.pools[rows[take], cols]).to(items.device)
            negs = Negatives(items)
        return negs

    def counts(self) -> dict:
        return {"grounded_sampler": {**self._counts, "share": self.share, "pool": self.pool,
                                     "samples": self.index.k, "samples_used": sorted(self._samples_used),
                                     "lookup": self.lookup, "source": self.source}}


def build(data, settings, resources, seed):
    sampler = GroundedSampler(resources[SNS_GROUNDED], data, RNS(), share=settings.share, pool=settings.pool,
                              lookup=settings.lookup, seed=seed, source=str(SNS_GROUNDED))
    return sampler, None


register(Method("sns-grounded", "LLM negatives grounded to their nearest real catalogue items, used as ID negatives",
                GroundedSettings, build, lambda s: (SNS_GROUNDED,), family="llm", search={"share": SHARE}))
