"""`hnlm train` methods of modules 2-3 and the RLMRec-Con baseline: options and builders.

Each builder is `builder(data, args) -> (sampler or None, extension or None)`:
  sns           uniform ID negatives + AlignmentExtension over the SNS text-embedding bank
  sns-random    the same with every bank vector replaced by a random one of the same norm (ablation)
  sns-shuffled  the same with the bank vectors permuted across users (ablation)
  sns-grounded  GroundedSampler: ID negatives drawn from the catalogue items nearest the SNS texts
  rlmrec-con    uniform ID negatives + RLMRecExtension (profile embeddings aligned by InfoNCE)
"""

from __future__ import annotations

import numpy as np
import torch

from hnlm.cf.samplers import Negatives, Sampler
from hnlm.errors import UserFacingError
from hnlm.semantic.alignment import AlignmentConfig, AlignmentExtension
from hnlm.semantic.bank import BankIndex, NegativeBank
from hnlm.semantic.sns import Budget


def add_options(parser) -> None:
    g = parser.add_argument_group("semantic negatives (modules 2-3) and RLMRec-Con")
    g.add_argument("--sns-llm", default="qwen2.5-0.5b", help="LLM whose SNS artefacts to use")
    g.add_argument("--sns-budget", default="per-user:1", help="budget the SNS artefacts were built with")
    g.add_argument("--sns-split-seed", type=int, default=None,
                   help="data split of the SNS artefacts (default: the run's split seed, else 0)")
    g.add_argument("--align-alpha", type=float, default=0.01, help="mixing weight of adapter(h)")
    g.add_argument("--align-weight", type=float, default=1e-3, help="contrastive term weight")
    g.add_argument("--align-tau", type=float, default=0.2, help="contrastive temperature")
    g.add_argument("--align-hidden", default="256", help="adapter hidden sizes, comma separated ('' = linear)")
    g.add_argument("--align-train", default="anchor", choices=["anchor", "joint"],
                   help="how the adapter learns (hnlm.semantic.alignment): catalogue anchors, or jointly "
                        "through BPR (collapses; an ablation)")
    g.add_argument("--align-anchor-weight", type=float, default=1.0, help="weight of the anchor term")
    g.add_argument("--align-lookup", default="user", choices=["pair", "user"],
                   help="pair: only the exact (user, pos) negative; user: else one of the user's negatives")
    g.add_argument("--grounded-share", type=float, default=0.5,
                   help="sns-grounded: share of pairs whose negative comes from the grounded pool")
    g.add_argument("--grounded-pool", type=int, default=20, help="sns-grounded: nearest items used per text")
    g.add_argument("--rlmrec-text", default="profiles", choices=["profiles", "metadata"])
    g.add_argument("--rlmrec-weight", type=float, default=1e-2)
    g.add_argument("--rlmrec-tau", type=float, default=0.2)
    g.add_argument("--rlmrec-max-anchors", type=int, default=0,
                   help="speed option that changes the method: at most this many distinct users / items per "
                        "batch in each InfoNCE (0 = all of them, exact RLMRec-Con)")
    g.add_argument("--profiles-llm", default=None, help="LLM of the module-1 profiles (default --sns-llm)")


def hidden_sizes(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(spec).split(",") if x.strip())


def _split_seed(args) -> int:
    if getattr(args, "sns_split_seed", None) is not None:
        return args.sns_split_seed
    return int(getattr(args, "split_seed", 0) or 0)


def _run_seed(args) -> int:
    return int(getattr(args, "seed", 0) or 0)


def bank_for(data, args) -> NegativeBank:
    from hnlm.semantic.sns import load_bank
    return load_bank(data, args.sns_llm, Budget.parse(args.sns_budget), _split_seed(args))


def align_config(args) -> AlignmentConfig:
    return AlignmentConfig(alpha=args.align_alpha, weight=args.align_weight, tau=args.align_tau,
                           hidden=hidden_sizes(args.align_hidden), lookup=args.align_lookup,
                           train=args.align_train, anchor_weight=args.align_anchor_weight,
                           seed=_run_seed(args))


def catalogue_text(data, bank: NegativeBank) -> np.ndarray:
    """MiniLM text embeddings of every catalogue item: the space of module 2's negatives and of the
    targets module 4 is fine-tuned on, so the anchor adapter applies to both."""
    from hnlm.llm.encoders import get_text_encoder
    from hnlm.semantic.sns import item_embeddings
    encoder = get_text_encoder("minilm")
    if bank.dim != encoder.dim:
        raise UserFacingError(f"bank {bank.source} has dimension {bank.dim}, not the catalogue text space "
                              f"({encoder.dim}); use --align-train joint for other spaces")
    return item_embeddings(data, encoder)


def make_alignment(data, bank: NegativeBank, config: AlignmentConfig) -> AlignmentExtension:
    return AlignmentExtension(bank, config, catalogue_text(data, bank) if config.train == "anchor" else None)


def alignment(data, bank: NegativeBank, args) -> AlignmentExtension:
    return make_alignment(data, bank, align_config(args))


def uniform_sampler():
    from hnlm.cf.samplers import get_sampler
    return get_sampler("rns")


def build_sns(data, args):
    return uniform_sampler(), alignment(data, bank_for(data, args), args)


def build_sns_random(data, args):
    bank = bank_for(data, args).randomized(seed=_run_seed(args))
    return uniform_sampler(), alignment(data, bank, args)


def build_sns_shuffled(data, args):
    bank = bank_for(data, args).shuffled(seed=_run_seed(args))
    return uniform_sampler(), alignment(data, bank, args)


def build_sns_grounded(data, args):
    from hnlm.semantic.sns import load_grounded
    grounded = load_grounded(data, args.sns_llm, Budget.parse(args.sns_budget), _split_seed(args))
    sampler = GroundedSampler(grounded, data, uniform_sampler(), share=args.grounded_share,
                              pool=args.grounded_pool, lookup=args.align_lookup, seed=_run_seed(args),
                              source=f"sns:{args.sns_llm}:{args.sns_budget}")
    return sampler, None


def build_rlmrec(data, args):
    from hnlm.llm.encoders import get_text_encoder
    from hnlm.semantic.rlmrec import RLMRecConfig, RLMRecExtension, text_embeddings
    users, items = text_embeddings(data, args.rlmrec_text, get_text_encoder("minilm"),
                                   args.profiles_llm or args.sns_llm)
    config = RLMRecConfig(weight=args.rlmrec_weight, tau=args.rlmrec_tau,
                          hidden=hidden_sizes(args.align_hidden), seed=_run_seed(args),
                          max_anchors=getattr(args, "rlmrec_max_anchors", 0))
    return uniform_sampler(), RLMRecExtension(users, items, config, source=args.rlmrec_text)


BUILDERS = {"sns": build_sns, "sns-random": build_sns_random, "sns-shuffled": build_sns_shuffled,
            "sns-grounded": build_sns_grounded, "rlmrec-con": build_rlmrec}


class GroundedSampler(Sampler):
    """ID negatives from the grounded SNS pools: for a share of the pairs, a random item among the
    catalogue items nearest the pair's (or, with lookup "user", the user's) generated negatives (training
    items were excluded when grounding); the other pairs, and pairs without a pool, use the base sampler
    (counted)."""

    name = "sns-grounded"

    def __init__(self, grounded, data, base, share: float = 0.5, pool: int = 20, lookup: str = "user",
                 seed: int = 0, source: str = "sns"):
        pools = np.array([np.asarray(p, dtype=np.int64)[:pool] for p in grounded["pool"]])
        self.pools = pools.reshape(len(grounded), -1)
        self.index = BankIndex(NegativeBank(np.zeros((len(grounded), 1), np.float32),
                                            grounded["user"].to_numpy(), grounded["item"].to_numpy(),
                                            source), data.n_items)
        self.base, self.share, self.lookup, self.source = base, share, lookup, source
        self.pool = self.pools.shape[1]
        self.rng = np.random.default_rng(seed)
        self._counts = {"pairs": 0, "grounded": 0, "base_by_share": 0, "base_no_pool": 0}

    def sample(self, users, pos, model, ctx):
        negs = self.base.sample(users, pos, model, ctx)
        u, p = users.cpu().numpy(), pos.cpu().numpy()
        rows, _ = self.index.lookup(u, p, self.lookup, self.rng)
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
                                     "lookup": self.lookup, "source": self.source}}
