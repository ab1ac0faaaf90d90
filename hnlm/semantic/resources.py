"""What LLM-based methods train with: typed keys (`Need`), one provider of their values for every door.

Needs (a method declares them from its settings, e.g. `hnlmrec_bank(settings.signal)`):
  SNS_BANK                NegativeBank of module 2's text embeddings
  SNS_GROUNDED            frame of module 2's negatives grounded to catalogue items (pools)
  rlmrec_text(source)     (user, item) text embeddings, source "profiles" or "metadata"
  hnlmrec_bank(signal)    NegativeBank of module 4's emitted vectors, CF signal "text" or "soft"
  teacher(model)          TeacherTable: a CF teacher ("lightgcn" or "mf") and the hard negative it mined for
                          every training pair (no LLM: the input of methods/teacher_negatives.py)
  JUDGE_SCORES            frame of the LLM judge's scores: per user, its list of a teacher's top unseen items and
                          the LLM's yes/no score of each (hnlm.semantic.judge; methods/dnsmn_judge.py)

`provide_inputs` gives each need a loader with one rule, the same for `hnlm train`, the notebooks and the study:
the shipped output in outputs/ whose key matches these settings, then artifacts/ made with these settings, then
(where `make` allows and making is cheap or asked for) made here, else a one-line MissingInputError naming the
command that makes it. Values may also be given directly (`Resources.provide`). A run is reused from disk
exactly when its inputs' digests match; a need's name (`str(need)`) is what run keys record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from hnlm.cf.config import TrainConfig
from hnlm.cf.frozen import frozen_model
from hnlm.cf.search import lr_protocol
from hnlm.errors import MissingInputError
from hnlm.llm.encoders import get_text_encoder
from hnlm.semantic import judge, sns
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import SNS_DECODING, Budget, split_seed_of
from hnlm.semantic.hnlmrec.banks import obtain_bank, run_bank
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.queries import MiningConfig, Teacher, mine_hard_negatives
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig
from hnlm.semantic.rlmrec import text_embeddings

NEED_KINDS = {"sns_bank": None, "sns_grounded": None, "rlmrec_text": ("profiles", "metadata"),
              "hnlmrec_bank": ("text", "soft", "none"), "teacher": ("lightgcn", "mf"),
              "judge_scores": None}   # kind: its options


@dataclass(frozen=True)
class Need:
    """One input a method trains with: a kind of NEED_KINDS and, for kinds that have them, an option."""

    kind: str
    option: str | None = None

    def __post_init__(self):
        if self.kind not in NEED_KINDS:
            raise ValueError(f"unknown input kind {self.kind!r}: {', '.join(NEED_KINDS)}")
        options = NEED_KINDS[self.kind]
        if (self.option is None) != (options is None) or (options and self.option not in options):
            raise ValueError(f"input {self.kind} takes {'one of ' + ', '.join(options) if options else 'no option'}, "
                             f"not {self.option!r}")

    def __str__(self) -> str:
        return self.kind if self.option is None else f"{self.kind}:{self.option}"


SNS_BANK = Need("sns_bank")
SNS_GROUNDED = Need("sns_grounded")
JUDGE_SCORES = Need("judge_scores")


def rlmrec_text(source: str) -> Need:
    return Need("rlmrec_text", source)


def hnlmrec_bank(signal: str) -> Need:
    return Need("hnlmrec_bank", signal)


def teacher(model: str) -> Need:
    return Need("teacher", model)


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


def teacher_config(model: str) -> TrainConfig:
    """The teacher of the teacher-* methods: `model` with uniform negatives, trained to convergence under the
    study's protocol (early stopping on valid recall@20, lr-scaled validation, cap), at TrainConfig's defaults."""
    return TrainConfig(model=model, sampler="rns", **lr_protocol(TrainConfig.lr, TrainConfig.epochs))


def teacher_table(data, model: str = TeacherConfig.model, config: TrainConfig | None = None) -> TeacherTable:
    """A converged teacher (`teacher_config`, `hnlm.cf.frozen`: selected on validation, cached by content key) and
    the hard negative it mines for every training pair (`mine_hard_negatives` with MiningConfig's defaults, about
    20 s on ml-100k, run each time). Its validation score is in `counts["teacher"]`, to set beside the students'.
    HNLMRec's fine-tuning keeps its own fixed-epoch teacher (`hnlm.semantic.hnlmrec.run.get_teacher`): the
    shipped banks were made with it. `config` replaces the teacher's training (tests train a small one)."""
    frozen = frozen_model(data, config or teacher_config(model))
    meta = {"model": model, "best_epoch": frozen.summary["best_epoch"], "epochs_run": frozen.summary["epochs_run"],
            "valid": {k: v for k, v in frozen.summary["valid"].items() if "@" in k}}
    teacher = Teacher(frozen.user_emb, frozen.item_emb, meta)
    coo = data.train.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    neg, counts = mine_hard_negatives(data, teacher, users, items, MiningConfig())
    keep = neg >= 0
    return TeacherTable(teacher, users[keep], items[keep], neg[keep], {**counts, "teacher": meta})


def content_digest(value) -> str:
    """Changes whenever the vectors, pairs or rows of a resource do."""
    if isinstance(value, NegativeBank):   # the samples' order counts when there are several
        extra = (value.samples,) if value.n_samples > 1 else ()
        return array_digest(value.emb, value.users, value.items, *extra)
    if isinstance(value, TeacherTable):
        return array_digest(value.teacher.user_emb, value.teacher.item_emb, value.users, value.items, value.neg)
    if isinstance(value, pd.DataFrame):
        return hashlib.sha256(value.to_json().encode()).hexdigest()[:16]
    if isinstance(value, (tuple, list)):
        return array_digest(*[np.asarray(v) for v in value])
    return array_digest(np.asarray(value))


class Resources:
    """Inputs by `Need`: `provide(need, value)` or `provide(need, loader=fn)`; `res[need]`, `res.digest(need)`."""

    def __init__(self, values: dict | None = None):
        self._values: dict[Need, object] = {}
        self._loaders: dict[Need, Callable] = {}
        self._digests: dict[Need, str] = {}
        for need, value in (values or {}).items():
            self.provide(need, value)

    def provide(self, need: Need, value=None, loader: Callable | None = None) -> "Resources":
        if not isinstance(need, Need):
            raise TypeError(f"inputs are keyed by Need, not {need!r}")
        if loader is None:
            self._values[need] = value
        else:
            self._loaders[need] = loader
        self._digests.pop(need, None)
        return self

    def __contains__(self, need: Need) -> bool:
        return need in self._values or need in self._loaders

    def __getitem__(self, need: Need):
        if need not in self._values:
            if need not in self._loaders:
                raise MissingInputError(f"this run has no {need} (known: {', '.join(self.keys()) or 'none'}); "
                                        "in the study, the notebook that makes it must run first")
            self._values[need] = self._loaders[need]()
        return self._values[need]

    def keys(self) -> list[str]:
        return sorted(str(n) for n in set(self._values) | set(self._loaders))

    def digest(self, need: Need) -> str:
        if need not in self._digests:
            self._digests[need] = content_digest(self[need])
        return self._digests[need]

    def digests(self, needs) -> dict[str, str]:
        """{need name: content digest}: what a run's key and result record of its inputs."""
        return {str(n): self.digest(n) for n in needs}


def provide_inputs(data, llm: str, res: Resources | None = None, sns_budget: str = "per-user:1",
                   sns_context: str = "profile", hnlmrec_config: Callable[[str], RunConfig] | None = None,
                   hnlmrec_run: str | None = None, make: bool = False, sns_decoding: str = SNS_DECODING) -> Resources:
    """Loaders of every need for `llm` on `data`'s split (each made only when a method asks for it): SNS bank and
    grounding (`sns.obtain_built` with sns.DECODINGS[sns_decoding]: shipped negatives of these settings, then
    artifacts/ built with them, else the error naming `hnlm sns`), RLMRec's text embeddings and the CF teachers
    (made here: minutes at most), the judge's scores (`judge.obtain_scores`: shipped, else artifacts/, else made
    only when `make`, else the error naming `hnlm judge`), module 4's banks (`banks.obtain_bank` with
    `hnlmrec_config(signal)`, default: `hnlm finetune`'s defaults; fine-tuned here only when `make`, else the error
    naming `hnlm finetune`; `hnlmrec_run`: that run-<hash> folder instead)."""
    res = res if res is not None else Resources()
    budget, split_seed = Budget.parse(sns_budget), split_seed_of(data)

    def built(load):
        def loader():
            sns.obtain_built(data, llm, budget, sns_context, decoding=sns.DECODINGS[sns_decoding])
            return load(data, llm, budget)
        return loader

    res.provide(SNS_BANK, loader=built(sns.load_bank))
    res.provide(SNS_GROUNDED, loader=built(sns.load_grounded))
    for source in NEED_KINDS["rlmrec_text"]:
        res.provide(rlmrec_text(source),
                    loader=lambda s=source: text_embeddings(data, s, get_text_encoder("minilm"), llm))
    config = hnlmrec_config or (lambda s: RunConfig(finetune=FinetuneConfig(llm=llm, cf_signal=s)))
    for signal in ("text", "soft"):
        if hnlmrec_run is not None:
            res.provide(hnlmrec_bank(signal), loader=lambda s=signal: run_bank(data, config(s), hnlmrec_run))
        else:
            res.provide(hnlmrec_bank(signal),
                        loader=lambda s=signal: obtain_bank(data, config(s), split_seed, fine_tune=make)[1])
    for model in NEED_KINDS["teacher"]:
        res.provide(teacher(model), loader=lambda m=model: teacher_table(data, m))
    res.provide(JUDGE_SCORES, loader=lambda: judge.obtain_scores(data, llm, make=make))
    return res
