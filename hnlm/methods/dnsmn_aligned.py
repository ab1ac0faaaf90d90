"""LLM hard-negative vectors mixed into DNS(M,N)'s negative instead of a uniform one.

The paper (and the methods `sns`, `hnlmrec`) mixes one LLM vector per pair into a UNIFORM random ID negative,
e_neg' = alpha * h + (1 - alpha) * e_neg with alpha 0.01: it moves about 1% of the negative and never chooses
which item is pushed down, so at best it ties RNS. Here DNS(M,N) chooses the ID negative (one of the top-N of
M uniform candidates by the current CF score, re-picked every batch) and module 3's alignment mixes the same
aligned vector h into it, with the same adapter, contrastive term and missing-vector rule
(hnlm.semantic.alignment). So `sns-dnsmn` vs `dns-mn` measures what the LLM vector adds on top of the
strongest classic sampler, and the `-random` / `-shuffled` ablations (every vector replaced by a random one
of the same norm / permuted across users) measure what of that is semantics.

One builder serves module 2's bank (SNS_BANK) and module 4's emitted vectors (hnlmrec_bank(signal)).
"""

from __future__ import annotations

from dataclasses import dataclass

from hnlm.cf.samplers import DNSMN
from hnlm.cf.search import ALPHA
from hnlm.methods import Method, register, setting_like
from hnlm.methods.classic import settings_of
from hnlm.methods.hnlmrec import HNLMRecSettings
from hnlm.semantic.alignment import AlignmentConfig, alignment_config, alignment_for
from hnlm.semantic.resources import SNS_BANK, hnlmrec_bank


@dataclass
class AlignedDNSMNSettings(AlignmentConfig):
    candidates: int = setting_like(settings_of(DNSMN), "candidates")
    top: int = setting_like(settings_of(DNSMN), "top")


@dataclass
class HNLMRecDNSMNSettings(AlignedDNSMNSettings):
    signal: str = setting_like(HNLMRecSettings, "signal")


def builder(bank_key, ablation: str | None):
    """build() mixing the bank `bank_key(settings)` (made "random" or "shuffled" for an ablation) into
    DNS(M,N)'s negative."""
    def build(data, settings, resources, seed):
        bank = resources[bank_key(settings)]
        if ablation is not None:
            bank = bank.randomized(seed) if ablation == "random" else bank.shuffled(seed)
        sampler = DNSMN(candidates=settings.candidates, top=settings.top)
        return sampler, alignment_for(data, bank, alignment_config(settings), seed)
    return build


SOURCES = {   # method prefix: (settings, resource key, summary)
    "sns": (AlignedDNSMNSettings, lambda s: SNS_BANK,
            "LLM hard negative (module 2) aligned and mixed into DNS(M,N)'s negative, not a uniform one"),
    "hnlmrec": (HNLMRecDNSMNSettings, lambda s: hnlmrec_bank(s.signal),
                "fine-tuned LLM's emitted vector aligned and mixed into DNS(M,N)'s negative, not a uniform one"),
}
ABLATIONS = {"random": "with every vector random of the same norm (ablation)",
             "shuffled": "with the vectors permuted across users (ablation)"}

for _prefix, (_settings, _key, _summary) in SOURCES.items():
    _name, _needs = f"{_prefix}-dnsmn", (lambda s, key=_key: (key(s),))
    register(Method(_name, _summary, _settings, builder(_key, None), _needs, family="llm",
                    search={**DNSMN.search, "alpha": ALPHA}))
    for _ablation, _note in ABLATIONS.items():
        register(Method(f"{_name}-{_ablation}", f"{_name} {_note}", _settings, builder(_key, _ablation), _needs,
                        family="llm", ablation_of=_name))
