"""The CF teacher's own mined hard negatives, fed through the LLM methods' two integrations.

HNLMRec fine-tunes its LLM to emit the hard negative that a CF teacher mined for a training pair
(`hnlm.semantic.hnlmrec.queries.mine_hard_negatives`: the best-scored of M uniform non-interacted candidates
outside the user's top share). Here that table is used directly (input `teacher(model)`,
`hnlm.semantic.resources.teacher_table`), in two ways:
  teacher-negatives  as ID negatives: for a `share` of the pairs, drawn anew each batch, the pair's mined
                     item (through `hnlm.cf.samplers.TableSampler`), uniform for the others;
  teacher-aligned    as the vector h of module 3, exactly as `sns` integrates the LLM's vector: the teacher's
                     item embedding of the mined negative, aligned (the adapter learns teacher -> student item
                     vectors from the catalogue) and mixed into a uniform negative at `alpha`.
What they measure, and what they do not: the teacher is trained to convergence and selected on validation (its
valid score is in each teacher-negatives run's counts, to set beside the students'), but its table is mined once
and frozen; so these are "what one static table of a converged model's mined negatives gives through each
integration", not an upper bound of what an LLM could give. The
static-vs-dynamic question itself is `dnsmn-static` against `dns-mn` (hnlm/methods/dnsmn_static.py).
Ablations, under the same integration: `-random` replaces each mined item by a uniform one (teacher-negatives: a
static random table, which separates the table's hardness from its being static) or each vector by a random one of
the same norm (teacher-aligned); `-shuffled` permutes the mined negatives across users.

Family "classic": no LLM and no text is involved (a two-stage CF sampler with a teacher), so it runs on ID-only
data too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hnlm.cf.samplers import RNS, Negatives, Sampler, TableSampler
from hnlm.cf.search import ALPHA, SHARE
from hnlm.methods import Method, register, setting_like
from hnlm.semantic import resources as inputs
from hnlm.semantic.alignment import AlignmentConfig, AlignmentExtension, alignment_config
from hnlm.semantic.bank import NegativeBank, user_derangement
from hnlm.semantic.hnlmrec.config import TeacherConfig


@dataclass
class TeacherIdSettings:
    share: float = field(default=0.5, metadata={
        "help": "share of the pairs (drawn per batch) whose ID negative is the mined one; the others uniform"})
    teacher: str = field(default=TeacherConfig.model, metadata={
        "help": "backbone of the CF teacher that mined the negatives: lightgcn or mf"})


@dataclass
class TeacherAlignedSettings(AlignmentConfig):
    teacher: str = setting_like(TeacherIdSettings, "teacher")


class ShareSampler(Sampler):
    """The `table` sampler's negative for a share of the pairs (drawn per batch with the run's generator),
    the `base` sampler's for the others."""

    name = "table-share"

    def __init__(self, table: Sampler, base: Sampler, share: float, teacher: dict | None = None):
        self.table, self.base, self.share, self.teacher = table, base, float(share), teacher or {}
        self._counts = {"pairs": 0, "table_share": 0}

    def sample(self, users, pos, model, ctx):
        take = torch.rand(len(users), generator=ctx.generator, device=users.device) < self.share
        items = self.base.sample(users, pos, model, ctx).items.clone()
        if take.any():
            items[take] = self.table.sample(users[take], pos[take], model, ctx).items
        self._counts["pairs"] += len(users)
        self._counts["table_share"] += int(take.sum())
        return Negatives(items)

    def counts(self):
        return {**self.table.counts(), "teacher": self.teacher, "share_sampler": {**self._counts, "share": self.share,
                                                          "others": self.base.name}}

    def describe(self):
        return {"name": self.name, "share": self.share, "table": self.table.name, "base": self.base.name}


def mined_items(table, source: str, ablation: str | None, n_items: int, seed: int) -> tuple[np.ndarray, str]:
    """The mined negative of each table row, or its ablation, and the source name."""
    if ablation == "random":
        return np.random.default_rng(seed).integers(0, n_items, len(table.neg)), f"{source}|random-items"
    if ablation == "shuffled":
        return table.neg[user_derangement(table.users, seed)[0]], f"{source}|shuffled-users"
    return table.neg, source


def id_builder(ablation: str | None):
    def build(data, settings, resources, seed):
        table = resources[inputs.teacher(settings.teacher)]
        neg, source = mined_items(table, str(inputs.teacher(settings.teacher)), ablation, data.n_items, seed)
        return ShareSampler(TableSampler(table.users, table.items, neg, data.n_items, source), RNS(),
                            settings.share, table.counts["teacher"]), None
    return build


def aligned_builder(ablation: str | None):
    def build(data, settings, resources, seed):
        table = resources[inputs.teacher(settings.teacher)]
        item_emb = table.teacher.item_emb
        bank = NegativeBank(item_emb[table.neg], table.users, table.items, str(inputs.teacher(settings.teacher)),
                            {"mined_pairs": len(table.neg)})
        if ablation is not None:
            bank = bank.randomized(seed) if ablation == "random" else bank.shuffled(seed)
        config = alignment_config(settings)
        anchors = item_emb if config.train == "anchor" else None   # the catalogue in the teacher's space
        return RNS(), AlignmentExtension(bank, config, anchors, seed=seed)
    return build


def needs_teacher(settings) -> tuple:
    return (inputs.teacher(settings.teacher),)


SHUFFLED = "with the mined negatives permuted across users (ablation)"
KINDS = {   # name: (summary, settings, builder, ablation summaries, search space)
    "teacher-negatives": ("CF teacher's mined-once hard negatives as ID negatives for a share of pairs",
                          TeacherIdSettings, id_builder,
                          {"random": "with uniform items instead of the mined ones (ablation)", "shuffled": SHUFFLED},
                          {"share": SHARE}),
    "teacher-aligned": ("CF teacher's mined-once hard negatives as module 3's vector in a uniform negative",
                        TeacherAlignedSettings, aligned_builder,
                        {"random": "with every vector random of the same norm (ablation)", "shuffled": SHUFFLED},
                        {"alpha": ALPHA}),
}
for _name, (_summary, _settings, _builder, _ablations, _search) in KINDS.items():
    register(Method(_name, _summary, _settings, _builder(None), needs_teacher, search=_search))
    for _ablation, _note in _ablations.items():
        register(Method(f"{_name}-{_ablation}", f"{_name} {_note}", _settings, _builder(_ablation), needs_teacher,
                        ablation_of=_name))
