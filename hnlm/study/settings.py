"""Study profiles: how big each notebook's run is under `smoke`, `quick` and `full` (the default).

A profile is a set of overrides of the package's own defaults (TrainConfig for CF runs, each method's
settings dataclass in hnlm.methods, FinetuneConfig for HNLMRec), never a re-typed copy of them.

`smoke` is for the test suite (the whole notebook suite in a few minutes on 2 CPU cores: tiny epochs, the
small LLM on a handful of prompts), `quick` is a fast pass (`make study PROFILE=quick`: 2 seeds, shorter CF
runs), `full` is the study (`make study`: 48 minutes on 2 CPU cores with its LLM outputs shipped or cached;
making them takes minutes on a GPU, `hnlm study --llm-only`, and hours on that CPU). quick shares full's LLM
outputs. A notebook reads its block with `settings(profile, notebook)`; common keys (seeds, ...) are merged
in, and the notebook's block wins.
"""

from __future__ import annotations

import copy

from hnlm.errors import UserFacingError
from hnlm.methods import Variant, variant
from hnlm.semantic.common import SNS_DECODING

PROFILE_NAMES = ("smoke", "quick", "full")
STAGES = ("profiles", "sns", "judge", "hnlmrec", "transfer", "llm_size")   # the LLM work of `hnlm study --llm-only`
DEFAULT_PROFILE = "full"     # of `make study`, `hnlm study` and a notebook opened without parameters

# Keys every notebook sees unless its own block overrides them.
COMMON = {
    "smoke": {"seeds": [0, 1], "ks": [10, 20, 50], "split_seed": 0},
    "quick": {"seeds": [0, 1], "ks": [10, 20, 50], "split_seed": 0},
    "full": {"seeds": [0, 1, 2], "ks": [10, 20, 50], "split_seed": 0},
}

# CF training shared by the notebooks that train LightGCN/MF (04-11), as overrides of hnlm.cf.TrainConfig (dim 64,
# 3 layers, L2 1e-4, cap 300 epochs, patience 20 on valid recall@20, test read once at the best valid epoch).
# `full` is the converged protocol: every method trains to its own convergence under that one rule (a run that
# its cap stopped is flagged, `stopped_by_cap`); batch 8192 and lr 2e-2 keep LightGCN runs affordable on 2 CPU
# cores (at lr 2e-2 RNS peaks near epoch 50 on ml-100k, DNS(M,N) near 15; a 40-epoch cap, used before, stopped
# the random-sampler family while it was still improving). `quick` is a fast pass whose short cap is flagged.
#
# Tuning (hnlm.study.tuning): `full` tunes every method of 04-06 on seed 0 over hnlm.cf.search.TRAIN_SEARCH and the
# method's own declared axes, widening an axis up to 3 steps past a best edge, and records every trial in
# results/<dataset>/tuning.csv (replayed, not retrained, when present). Its lr and batch_size below are then only
# the untuned starting point. `smoke` runs the same protocol on a tiny space; `quick` does not tune (its short cap
# would pick whatever starts fastest) and runs every method at the shared setting.
_CF = {
    "smoke": {"epochs": 1, "patience": 1, "dim": 16, "batch_size": 16384, "lr": 5e-3,
              "tuning": {"lr": [5e-3, 2e-2], "batch_size": [16384], "method_values": 2, "widen": 1}},
    "quick": {"epochs": 15, "patience": 5, "batch_size": 8192, "lr": 2e-2},
    "full": {"batch_size": 8192, "lr": 2e-2, "tuning": {}},
}

# Method settings a profile changes (every other setting is the method's own default, hnlm.methods). Fast
# profiles give RLMRec-Con metadata texts, so that they do not need every module-1 profile.
_METADATA = {"method_settings": {"rlmrec-con": {"text": "metadata"}}}

# Module 4 (05) and its transfer (10) share one fine-tuning run per profile, and quick shares full's: the
# LLM work (fine-tuning ~2 passes over one pair per user, embedding every user) is the same, only the CF
# budgets differ, so a cache made once (on a GPU: ~1 min; on 2 CPU cores: hours) serves both. The
# embedding pass costs about 0.2-0.7 s per query for smollm2-135m on 2 CPU cores, so smoke embeds the first
# 32 users only (infer_users; the other users' pairs keep their ID negative and are counted by module 3).
_HNLMREC_FULL = {"max_steps": 240, "save_steps": 60}    # FinetuneConfig / RunConfig / TeacherConfig overrides
_HNLMREC = {
    "smoke": {"max_steps": 2, "batch_size": 4, "save_steps": 2, "teacher_epochs": 2, "infer_users": 32,
              "infer_batch": 32},
    "quick": _HNLMREC_FULL,
    "full": _HNLMREC_FULL,
}

# Transfer to ml-1m (10): ml-1m has 10x ml-100k's interactions, so the study keeps its first 2,000 users (all
# their splits; ~1/3 of ml-1m) to stay affordable on 2 cores, embeds all of them (target_users None), and its
# own teacher uses large batches. quick and full share the LLM side (one embedding pass), as in module 4.
TARGET_DATASET = "ml-1m"   # the dataset notebook 10 (and `hnlm study --llm-only`'s transfer stage) transfers to
_TARGET = {"target_dataset": TARGET_DATASET, "target_first_users": 2000, "target_users": None,
           "target_teacher": {"epochs": 20, "batch_size": 8192}}
_TRANSFER = {
    "smoke": {**_CF["smoke"], "methods": ["rns", "dns"], "target_dataset": TARGET_DATASET,
              "target_first_users": 1000, "target_users": 16,
              "target_teacher": {"epochs": 1, "batch_size": 16384}},
    "quick": {**_CF["quick"], "epochs": 5, "methods": ["rns"], **_TARGET},  # keeps quick near 10 minutes
    "full": {**_CF["full"], "methods": ["rns", "dns"], **_TARGET},
}

# Methods that try to beat DNS(M,N), the strongest classic sampler (hnlm/methods/dnsmn_aligned.py, dnsmn_guard.py,
# teacher_negatives.py). They need no LLM output beyond notebook 03's SNS bank: dnsmn-guard reads MiniLM item
# texts, teacher-* a CF teacher trained on first use (input teacher(<model>)). 04 runs them (full: with
# their ablations) with dns-mn among the baselines, 06 the three main ones on both backbones.
_BEAT_DNSMN = {
    "quick": ["sns-dnsmn", "sns-dnsmn-random", "dnsmn-guard", "teacher-negatives", "teacher-aligned"],
    "full": ["sns-dnsmn", "sns-dnsmn-random", "sns-dnsmn-shuffled", "dnsmn-guard", "dnsmn-guard-random",
             "dnsmn-guard-shuffled", "teacher-negatives", "teacher-aligned"],
}
_BEAT_DNSMN_MAIN = ["sns-dnsmn", "dnsmn-guard", "teacher-negatives"]
# The LLM as a judge of false negatives (hnlm/semantic/judge.py, hnlm/methods/dnsmn_judge.py): full only. Its scores
# (20 yes/no prompts per user, all 943: an hour or more on 2 CPU cores) are not made on smoke or quick sizes; 07
# reports the marks' precision. Where they are neither shipped nor made, 04 and 06 leave these methods out and 07 its
# precision cell, saying why (hnlm.study.inputs.judge_missing).
JUDGE_METHODS = ["dnsmn-judge", "dnsmn-judge-random", "dnsmn-judge-shuffled"]

NOTEBOOK_SETTINGS = {
    "01_data": {
        "smoke": {"datasets": ["ml-100k", "ml-1m"], "top_items": 5},
        "quick": {"datasets": ["ml-100k", "ml-1m"], "top_items": 10},
        "full": {"datasets": ["ml-100k", "ml-1m"], "top_items": 10},
    },
    "02_profiles": {
        "smoke": {"limit": 4, "examples": 2},
        "quick": {"limit": 48, "examples": 3},
        "full": {"limit": None, "examples": 3},
    },
    "03_sns": {
        # decoding: a name of hnlm.semantic.sns.DECODINGS ("sampled": K negatives per user, draw filter); smoke makes
        # its own (SmolLM2, 4 users), quick and full use the shipped qwen2.5-0.5b ones (SNS_DECODING)
        "smoke": {"limit_users": 4, "context": "profile", "examples": 4, "decoding": "sampled"},
        "quick": {"limit_users": 48, "context": "profile", "examples": 8, "decoding": SNS_DECODING},
        "full": {"limit_users": None, "context": "profile", "examples": 10, "decoding": SNS_DECODING},
    },
    # 04 (full) runs MF too: a method's gain on either backbone is the LLM's only if it beats its ablations there.
    "04_alignment": {
        "smoke": {**_CF["smoke"], "backbones": ["lightgcn"], "methods": ["rns", "sns", "sns-random", "sns-grounded"],
                  "baselines": ["rns"], "alpha_sweep": [0.1], **_METADATA},
        "quick": {**_CF["quick"], "backbones": ["lightgcn"],
                  "methods": ["rns", "dns", "dns-mn", "sns", "sns-grounded", "sns-random", "rlmrec-con",
                              *_BEAT_DNSMN["quick"]],
                  "baselines": ["rns", "dns", "dns-mn"], "alpha_sweep": [0.1], **_METADATA},
        "full": {**_CF["full"], "backbones": ["lightgcn", "mf"],
                 "methods": ["rns", "dns", "dns-mn", "mixgcf", "sns", "sns-grounded", "sns-random", "sns-shuffled",
                             "rlmrec-con", *_BEAT_DNSMN["full"], *JUDGE_METHODS],
                 "baselines": ["rns", "dns", "dns-mn", "mixgcf"], "alpha_sweep": [0.1, 0.5]},
    },
    "05_hnlmrec": {
        "smoke": {**_CF["smoke"], "backbones": ["lightgcn"], "methods": ["rns", "sns"], "signals": ["text"],
                  **_METADATA, "hnlmrec": _HNLMREC["smoke"]},
        "quick": {**_CF["quick"], "backbones": ["lightgcn"], "methods": ["rns", "dns", "sns"],
                  "signals": ["text", "soft"], **_METADATA, "hnlmrec": _HNLMREC["quick"]},
        "full": {**_CF["full"], "backbones": ["lightgcn"], "methods": ["rns", "dns", "mixgcf", "sns"],
                 "signals": ["text", "soft"], "hnlmrec": _HNLMREC["full"]},
    },
    "06_main_results": {
        "smoke": {**_CF["smoke"], "backbones": ["mf", "lightgcn"], "methods": ["rns", "pns"],
                  "semantic_methods": [], "hnlmrec_signals": [], **_METADATA},
        "quick": {**_CF["quick"], "backbones": ["mf", "lightgcn"], "methods": ["rns", "dns", "dns-mn", "mixgcf"],
                  "semantic_methods": ["sns", "rlmrec-con", *_BEAT_DNSMN_MAIN], "hnlmrec_signals": ["text", "soft"],
                  **_METADATA, "hnlmrec": _HNLMREC["quick"]},
        "full": {**_CF["full"], "backbones": ["mf", "lightgcn"], "seeds": [0, 1, 2, 3, 4],   # the main table
                 "methods": ["rns", "pns", "dns", "dns-mn", "dnsmn-static", "mixgcf", "dens", "ahns"],
                 "semantic_methods": ["sns", "sns-grounded", "rlmrec-con", *_BEAT_DNSMN_MAIN, *JUDGE_METHODS],
                 "hnlmrec_signals": ["text", "soft"],
                 "hnlmrec": _HNLMREC["full"]},
    },
    "07_false_negatives": {
        "smoke": {"judge": False},
        "quick": {"judge": False},
        "full": {"judge": True},
    },
    "08_popularity": {
        "smoke": {"head_share": 0.2, "k": 20},
        "quick": {"head_share": 0.2, "k": 20},
        "full": {"head_share": 0.2, "k": 20},
    },
    "09_sparsity": {
        "smoke": {"n_groups": 4, "metric": "recall@20", "reference_method": "rns"},
        "quick": {"n_groups": 4, "metric": "recall@20", "reference_method": "rns"},
        "full": {"n_groups": 4, "metric": "recall@20", "reference_method": "rns"},
    },
    "10_generalisation": {
        name: {**_TRANSFER[name], "backbones": ["lightgcn"], "signals": ["text"],
               "hnlmrec": _HNLMREC[name]}
        for name in PROFILE_NAMES
    },
    # LLM size (11): both packaged LLMs with the same prompts (history context: no profiles needed) and
    # the same fine-tuning budget; a GPU model joins by adding its spec (e.g. "hf:/models/Llama-3.1-8B").
    # `hnlm study --llm-only --stages llm_size` makes (and with --publish ships) every LLM's outputs it needs.
    "11_llm_size": {
        "smoke": {**_CF["smoke"], "backbones": ["lightgcn"], "llms": ["smollm2-135m"], "methods": ["sns"],
                  "limit_users": 4, "context": "history", "decoding": "greedy", "signals": ["text"],
                  "hnlmrec": _HNLMREC["smoke"]},
        **{name: {**_CF[name], "backbones": ["lightgcn"], "llms": ["smollm2-135m", "qwen2.5-0.5b"], "methods": ["sns"],
                  "limit_users": None, "context": "history", "decoding": "greedy", "signals": ["text"],
                  "hnlmrec": _HNLMREC[name]} for name in ("quick", "full")},
    },
}


def settings(profile: str | None, notebook: str) -> dict:
    """Settings of `notebook` (e.g. "06_main_results") under `profile`; a fresh copy the caller may edit."""
    profile = profile or DEFAULT_PROFILE
    if profile not in PROFILE_NAMES:
        raise UserFacingError(f"unknown study profile {profile!r}: choose one of {', '.join(PROFILE_NAMES)}")
    block = NOTEBOOK_SETTINGS.get(notebook, {}).get(profile, {})
    return copy.deepcopy({**COMMON[profile], **block, "profile": profile})


def variants(conf: dict, names) -> list[Variant]:
    """The methods `names` with the profile's `method_settings` applied; each keeps its name as label."""
    changed = conf.get("method_settings", {})
    return [variant(name, label=name, **changed.get(name, {})) for name in names]


def hnlmrec_variants(signals) -> list[Variant]:
    """HNLMRec with each fine-tuning CF signal, labelled hnlmrec-<signal>."""
    return [variant("hnlmrec", label=f"hnlmrec-{s}", signal=s) for s in signals]
