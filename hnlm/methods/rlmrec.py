"""RLMRec-Con, the LLM-enhanced baseline: projected profile (or metadata) text embeddings aligned with the CF
embeddings by InfoNCE, uniform ID negatives."""

from __future__ import annotations

from dataclasses import dataclass

from hnlm.cf.samplers import RNS
from hnlm.methods import Method, register
from hnlm.semantic.resources import rlmrec_text
from hnlm.semantic.rlmrec import RLMRecConfig, RLMRecExtension


@dataclass
class RLMRecSettings(RLMRecConfig):
    text: str = "profiles"    # "profiles" (module 1, as RLMRec) or "metadata" (titles, genres, history)


def build(data, settings, resources, seed):
    users, items = resources[rlmrec_text(settings.text)]
    config = RLMRecConfig(weight=settings.weight, tau=settings.tau, hidden=settings.hidden,
                          max_anchors=settings.max_anchors)
    return RNS(), RLMRecExtension(users, items, config, source=settings.text, seed=seed)


register(Method("rlmrec-con", "RLMRec-Con baseline: profile text embeddings aligned with CF by InfoNCE",
                RLMRecSettings, build, lambda s: (rlmrec_text(s.text),), family="llm"))
