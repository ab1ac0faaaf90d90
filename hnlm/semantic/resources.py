"""What LLM-based methods train with, by name, each with a content digest that joins a CF run's identity.

Keys:
  "sns_bank"               NegativeBank of module 2's text embeddings
  "sns_grounded"           frame of module 2's negatives grounded to catalogue items (pools)
  "rlmrec_text:<source>"   (user, item) text embeddings, source "profiles" or "metadata"
  "hnlmrec_bank:<signal>"  NegativeBank of module 4's emitted vectors, CF signal "text" or "soft"
  "teacher:<model>"        TeacherTable: a CF teacher ("lightgcn" or "mf") and the hard negative it mined for
                           every training pair (no LLM: the upper bound of methods/teacher_negatives.py)

Values are given directly (the study) or as loaders that read saved artefacts on first use (the CLI), so a
run loads only what its method needs. A run is reused from disk exactly when its inputs' digests match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from hnlm.errors import MissingInputError
from hnlm.llm.encoders import get_text_encoder
from hnlm.paths import artifacts_dir
from hnlm.semantic import sns
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, split_id_of
from hnlm.semantic.hnlmrec.queries import MiningConfig, Teacher, mine_hard_negatives
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, get_teacher, load_bank
from hnlm.semantic.rlmrec import text_embeddings


def array_digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


TEACHER_MODELS = ("lightgcn", "mf")


@dataclass
class TeacherTable:
    """A CF teacher trained on the training split and the hard negative it mined for each training pair
    (`mine_hard_negatives` with MiningConfig's defaults: the best-scored of M uniform non-interacted candidates
    outside the user's top share, as for HNLMRec's fine-tuning set). Pairs where no candidate passed that guard
    are left out (`counts`)."""

    teacher: Teacher
    users: np.ndarray
    items: np.ndarray
    neg: np.ndarray
    counts: dict


def teacher_dir(data, model: str) -> Path:
    """artifacts/<dataset>/teacher/split-<split id>/<model>/ (`split_id_of`: seed, and kind unless random)."""
    return artifacts_dir(data.name, "teacher", f"split-{split_id_of(data)}", model)


def teacher_table(data, model: str = TeacherConfig.model, config: TeacherConfig | None = None) -> TeacherTable:
    """Teacher with TeacherConfig's defaults (`config` overrides them), cached on disk under
    `teacher_dir` and retrained when the training split or its settings change; the mining over every training
    pair (about 20 s on ml-100k) runs each time."""
    cfg = config or TeacherConfig(model=model)
    teacher = get_teacher(data, cfg, teacher_dir(data, cfg.model))
    coo = data.train.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    neg, counts = mine_hard_negatives(data, teacher, users, items, MiningConfig())
    keep = neg >= 0
    return TeacherTable(teacher, users[keep], items[keep], neg[keep], {**counts, "teacher": teacher.meta})


def content_digest(value) -> str:
    """Changes whenever the vectors, pairs or rows of a resource do."""
    if isinstance(value, NegativeBank):
        return array_digest(value.emb, value.users, value.items)
    if isinstance(value, TeacherTable):
        return array_digest(value.teacher.user_emb, value.teacher.item_emb, value.users, value.items, value.neg)
    if isinstance(value, pd.DataFrame):
        return hashlib.sha256(value.to_json().encode()).hexdigest()[:16]
    if isinstance(value, (tuple, list)):
        return array_digest(*[np.asarray(v) for v in value])
    return array_digest(np.asarray(value))


class Resources:
    """Named inputs: `provide(key, value)` or `provide(key, loader=fn)`; `res[key]`, `res.digest(key)`."""

    def __init__(self, **values):
        self._values: dict = dict(values)
        self._loaders: dict[str, Callable] = {}
        self._digests: dict[str, str] = {}

    def provide(self, key: str, value=None, loader: Callable | None = None) -> "Resources":
        if loader is None:
            self._values[key] = value
        else:
            self._loaders[key] = loader
        self._digests.pop(key, None)
        return self

    def __contains__(self, key: str) -> bool:
        return key in self._values or key in self._loaders

    def __getitem__(self, key: str):
        if key not in self._values:
            if key not in self._loaders:
                raise MissingInputError(f"this run has no {key!r} (known: {', '.join(self.keys()) or 'none'}); "
                                        "in the study, the notebook that makes it must run first")
            self._values[key] = self._loaders[key]()
        return self._values[key]

    def keys(self) -> list[str]:
        return sorted(set(self._values) | set(self._loaders))

    def digest(self, key: str) -> str:
        if key not in self._digests:
            self._digests[key] = content_digest(self[key])
        return self._digests[key]


def provide_teachers(res: Resources, data) -> Resources:
    """Loaders of "teacher:<model>" for every teacher backbone (trained only when a method asks)."""
    for model in TEACHER_MODELS:
        res.provide(f"teacher:{model}", loader=lambda m=model: teacher_table(data, m))
    return res


def saved_resources(data, llm: str, sns_budget: str = "per-user:1", hnlmrec_run: str | None = None) -> Resources:
    """Loaders for the artefacts that `hnlm sns`, `hnlm profiles` and `hnlm finetune` saved for `llm` on `data`'s
    split, and for the CF teachers (trained and cached on first use)."""
    budget = Budget.parse(sns_budget)
    res = Resources()
    res.provide("sns_bank", loader=lambda: sns.load_bank(data, llm, budget))
    res.provide("sns_grounded", loader=lambda: sns.load_grounded(data, llm, budget))
    for source in ("profiles", "metadata"):
        res.provide(f"rlmrec_text:{source}",
                    loader=lambda s=source: text_embeddings(data, s, get_text_encoder("minilm"), llm))
    run = RunConfig()
    for signal in ("text", "soft"):
        res.provide(f"hnlmrec_bank:{signal}",
                    loader=lambda s=signal: load_bank(data, llm, s, run.finetune.budget, run.infer_budget,
                                                      run=hnlmrec_run))
    return provide_teachers(res, data)
