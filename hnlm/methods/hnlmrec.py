"""Module 4 (HNLMRec): the fine-tuned LLM's emitted hard-negative vectors, through module 3's alignment into
uniform ID negatives, as the paper integrates them."""

from __future__ import annotations

from dataclasses import dataclass, field

from hnlm.cf.samplers import RNS
from hnlm.cf.search import ALPHA
from hnlm.methods import Method, register
from hnlm.semantic.alignment import AlignmentConfig, alignment_config, alignment_for
from hnlm.semantic.resources import hnlmrec_bank


@dataclass
class HNLMRecSettings(AlignmentConfig):
    signal: str = field(default="text", metadata={
        "help": "CF signal the LLM was fine-tuned with: text (the released code) or soft (prompt tokens)"})


def build(data, settings, resources, seed):
    bank = resources[hnlmrec_bank(settings.signal)]
    return RNS(), alignment_for(data, bank, alignment_config(settings), seed)


register(Method("hnlmrec", "fine-tuned LLM's emitted hard-negative vectors, aligned and mixed (paper, module 4)",
                HNLMRecSettings, build, lambda s: (hnlmrec_bank(s.signal),), family="llm",
                search={"alpha": ALPHA}))
