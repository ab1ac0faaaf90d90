"""Modules 2-3: the LLM's generated hard negatives (embedded text) mixed into uniform ID negatives through a
trained adapter, as the paper does, and the two ablations that remove the semantics."""

from __future__ import annotations

from hnlm.cf.samplers import RNS
from hnlm.cf.search import ALPHA
from hnlm.methods import Method, register
from hnlm.semantic.alignment import AlignmentConfig, alignment_for
from hnlm.semantic.resources import SNS_BANK


def needs_bank(settings) -> tuple:
    return (SNS_BANK,)


def build_sns(data, settings, resources, seed):
    return RNS(), alignment_for(data, resources[SNS_BANK], settings, seed)


def build_random(data, settings, resources, seed):
    return RNS(), alignment_for(data, resources[SNS_BANK].randomized(seed), settings, seed)


def build_shuffled(data, settings, resources, seed):
    return RNS(), alignment_for(data, resources[SNS_BANK].shuffled(seed), settings, seed)


register(Method("sns", "LLM hard negative per user, aligned and mixed into a uniform negative (paper, modules 2-3)",
                AlignmentConfig, build_sns, needs_bank, family="llm", search={"alpha": ALPHA}))
register(Method("sns-random", "sns with every bank vector replaced by a random one of the same norm (ablation)",
                AlignmentConfig, build_random, needs_bank, family="llm", ablation_of="sns"))
register(Method("sns-shuffled", "sns with the bank vectors permuted across users (ablation)",
                AlignmentConfig, build_shuffled, needs_bank, family="llm", ablation_of="sns"))
