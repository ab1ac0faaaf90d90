"""The one place that says how big each notebook's run is under each study profile.

`smoke` is for the test suite (the whole notebook suite in a few minutes on 2 CPU cores: tiny epochs, the
small LLM on a handful of prompts), `quick` is a fast pass (`make study PROFILE=quick`, under 10 minutes),
`full` is the study (`make study`, under an hour from a cold cache). A notebook reads its block with
`settings(profile, notebook)`; common keys (seeds, ...) are merged in, and the notebook's block wins.
"""

from __future__ import annotations

import copy

from hnlm.errors import UserFacingError

PROFILE_NAMES = ("smoke", "quick", "full")

# Keys every notebook sees unless its own block overrides them.
COMMON = {
    "smoke": {"seeds": [0, 1], "ks": [10, 20, 50], "split_seed": 0},
    "quick": {"seeds": [0, 1, 2], "ks": [10, 20, 50], "split_seed": 0},
    "full": {"seeds": [0, 1, 2], "ks": [10, 20, 50], "split_seed": 0},
}

# CF training budgets shared by the notebooks that train LightGCN/MF (06, 08, 09, convergence).
_CF = {
    "smoke": {"epochs": 1, "patience": 1, "dim": 16, "batch_size": 16384, "lr": 5e-3, "eval_every": 1},
    "quick": {"epochs": 30, "patience": 10, "dim": 64, "batch_size": 2048, "lr": 5e-3, "eval_every": 1},
    "full": {"epochs": 200, "patience": 20, "dim": 64, "batch_size": 2048, "lr": 5e-3, "eval_every": 1},
}
for _conf in _CF.values():
    _conf.update({"metric": "recall@20", "reference_metric": "recall@20"})

NOTEBOOK_SETTINGS = {
    "01_data": {
        "smoke": {"datasets": ["ml-100k", "ml-1m"], "top_items": 5},
        "quick": {"datasets": ["ml-100k", "ml-1m"], "top_items": 10},
        "full": {"datasets": ["ml-100k", "ml-1m"], "top_items": 10},
    },
    "06_main_results": {
        "smoke": {**_CF["smoke"], "backbones": ["mf", "lightgcn"], "methods": ["rns", "pns"]},
        "quick": {**_CF["quick"], "backbones": ["mf", "lightgcn"],
                  "methods": ["rns", "pns", "dns", "mixgcf", "ahns"]},
        "full": {**_CF["full"], "backbones": ["mf", "lightgcn"],
                 "methods": ["rns", "pns", "dns", "dns-mn", "mixgcf", "dens", "ahns"]},
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
}


def settings(profile: str, notebook: str) -> dict:
    """Settings of `notebook` (e.g. "06_main_results") under `profile`; a fresh copy the caller may edit."""
    if profile not in PROFILE_NAMES:
        raise UserFacingError(f"unknown study profile {profile!r}: choose one of {', '.join(PROFILE_NAMES)}")
    block = NOTEBOOK_SETTINGS.get(notebook, {}).get(profile, {})
    return copy.deepcopy({**COMMON[profile], **block, "profile": profile})
