"""RLMRec-Con, the LLM-enhanced baseline: projected profile (or metadata) text embeddings aligned with the CF
embeddings by InfoNCE, uniform ID negatives."""

from __future__ import annotations

from dataclasses import dataclass, field

from hnlm.cf.samplers import RNS
from hnlm.cf.search import Axis
from hnlm.methods import Method, register
from hnlm.semantic.resources import rlmrec_text
from hnlm.semantic.rlmrec import RLMRecConfig, RLMRecExtension, rlmrec_config


@dataclass
class RLMRecSettings(RLMRecConfig):
    text: str = field(default="profiles", metadata={
        "help": "text embedded per user and item: profiles (module 1, as RLMRec) or metadata (titles, genres, "
                "history)"})


def build(data, settings, resources, seed):
    users, items = resources[rlmrec_text(settings.text)]
    return RNS(), RLMRecExtension(users, items, rlmrec_config(settings), source=settings.text, seed=seed)


register(Method("rlmrec-con", "RLMRec-Con baseline: profile text embeddings aligned with CF by InfoNCE",
                RLMRecSettings, build, lambda s: (rlmrec_text(s.text),), family="llm",
                search={"weight": Axis((1e-3, 1e-2, 1e-1), low=1e-5, high=10.0)}))
