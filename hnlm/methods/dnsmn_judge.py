"""DNS(M,N) with the LLM as a judge of false negatives: candidates the LLM marked as likely enjoyed by the user are
down-weighted (or vetoed) before DNS(M,N)'s top-N pick.

The marks are, per user, the `marks` items the LLM scored highest (input JUDGE_SCORES, `hnlm.semantic.judge`: a
yes/no score per item) in a list of the JUDGE_CANDIDATES unseen items a converged DNS(M,N) teacher ranks highest:
the items DNS(M,N) most often makes negatives of, and among which the user's held-out positives concentrate.
Per pair, over its M uniform candidates:
  down (default): a marked candidate's CF score is lowered by `weight` standard deviations of its row's scores;
  veto:           marked candidates are removed (a row with fewer than N unmarked candidates keeps some, counted).
Marks cover few items per user, so only pairs whose M candidates include one are touched (`counts()`).
Ablations, at the same number of marks per user: `-random` marks as many items of the user's own list uniformly
(seeded by the run), `-shuffled` gives each user the marks of another user with as many marks (a fixed
derangement within each group of equal mark counts). `judge_precision` measures the marks on validation items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from hnlm.analysis.false_negatives import mark_precision, top_similar_marks
from hnlm.cf.samplers import DNSMN, Negatives, SamplerOptionError, candidate_scores
from hnlm.cf.search import Axis
from hnlm.methods import Method, register, setting_like
from hnlm.methods.classic import settings_of
from hnlm.methods.dnsmn_guard import history_vectors, unit_rows
from hnlm.semantic.judge import JUDGE_CANDIDATES, JUDGE_MARKS, top_marks
from hnlm.semantic.resources import JUDGE_SCORES

MODES = ("down", "veto")
SHUFFLE_SEED = 0   # the shuffled ablation's permutation is fixed: the same for every run and seed


@dataclass
class JudgeSettings:
    candidates: int = setting_like(settings_of(DNSMN), "candidates")
    top: int = setting_like(settings_of(DNSMN), "top")
    mode: str = field(default="down", metadata={
        "help": "down: lower the CF score of candidates the LLM marked as liked; veto: remove them"})
    weight: float = field(default=1.0, metadata={
        "help": "down: how far a marked candidate's score is lowered, in sds of its row's CF scores"})
    marks: int = field(default=JUDGE_MARKS, metadata={
        "help": "how many items of each user's list are marked: those the LLM scored highest"})


class JudgedDNSMN(DNSMN):
    """DNS(M,N) whose top-N is taken after marked candidates are down-weighted or vetoed (module doc)."""

    name = "dnsmn-judge"

    def __init__(self, marked: list[list[int]], n_items: int, settings: JudgeSettings, source: str = "llm"):
        super().__init__(settings.candidates, settings.top)
        if settings.mode not in MODES:
            raise SamplerOptionError(f"dnsmn-judge: mode must be one of {MODES}, got {settings.mode!r} (--set mode=)")
        if not 1 <= settings.marks <= JUDGE_CANDIDATES:
            raise SamplerOptionError(f"dnsmn-judge: marks must be 1 to {JUDGE_CANDIDATES}, got {settings.marks} "
                                     f"(--set marks=)")
        self.mode, self.weight, self.source = settings.mode, float(settings.weight), source
        self.marks = torch.zeros(len(marked), n_items, dtype=torch.bool)
        for user, items in enumerate(marked):
            self.marks[user, list(items)] = True
        self._counts = {"pairs": 0, "pairs_with_marked_candidate": 0, "topn_changed": 0, "picks_changed": 0,
                        "rows_short_of_unmarked": 0}

    def sample(self, users, pos, model, ctx):
        with torch.no_grad():    # same draws, in the same order, as DNSMN.sample
            cands = ctx.positives.uniform(users, self.candidates, ctx.generator)
            scores = candidate_scores(users, cands, ctx)
            pick = torch.randint(0, self.top, (len(users), 1), generator=ctx.generator, device=users.device)
            return Negatives(self.select(users, cands, scores, pick))

    def judged(self, marked, scores) -> torch.Tensor:
        if self.mode == "veto":
            return scores.masked_fill(marked, float("-inf"))
        return scores - self.weight * scores.std(1, keepdim=True, unbiased=False) * marked

    def select(self, users, cands, scores, pick) -> torch.Tensor:
        """Candidate `pick` [B, 1] of the judged top-N (counted against DNS(M,N)'s top-N of the same scores)."""
        self.marks = self.marks.to(cands.device)
        marked = self.marks[users[:, None], cands]
        top = self.judged(marked, scores).topk(self.top, dim=1).indices
        plain = scores.topk(self.top, dim=1).indices
        in_top = torch.zeros_like(marked).scatter_(1, top, True)
        in_plain = torch.zeros_like(marked).scatter_(1, plain, True)
        chosen = top.gather(1, pick)
        c = self._counts
        c["pairs"] += len(users)
        c["pairs_with_marked_candidate"] += int(marked.any(1).sum())
        c["topn_changed"] += int((in_top != in_plain).any(1).sum())
        c["picks_changed"] += int((~in_plain.gather(1, chosen)).sum())
        c["rows_short_of_unmarked"] += int(((~marked).sum(1) < self.top).sum())
        return cands.gather(1, chosen)[:, 0]

    def counts(self) -> dict:
        return {"judge": {**self._counts, "mode": self.mode, "weight": self.weight, "marks": self.source,
                          "marks_per_user": float(self.marks.sum()) / max(len(self.marks), 1)}}

    def describe(self):
        return {"name": self.name, "candidates": self.candidates, "top": self.top, "mode": self.mode,
                "weight": self.weight, "marks": self.source}


def user_marks(scores: pd.DataFrame, n_users: int, marks: int) -> tuple[list[list[int]], list[list[int]]]:
    """(list, its `marks` top-scoring items) of every user (empty for a user without a record)."""
    lists, marked = [[] for _ in range(n_users)], [[] for _ in range(n_users)]
    for u, cands, m in zip(scores["user"], scores["candidates"], top_marks(scores, marks)):
        lists[int(u)], marked[int(u)] = [int(j) for j in cands], m
    return lists, marked


def random_marks(lists, marked, seed: int) -> list[list[int]]:
    """As many items of each user's own list as the LLM marked, uniformly."""
    rng = np.random.default_rng(seed)
    return [[int(j) for j in rng.choice(c, size=len(m), replace=False)] if m else [] for c, m in zip(lists, marked)]


def shuffled_marks(marked, seed: int = SHUFFLE_SEED) -> tuple[list[list[int]], int]:
    """Each user's marks replaced by those of another user with as many marks (within each group of equal counts,
    users in a seeded random order take the marks of the next one: a derangement); and how many users kept their
    own (a group of one user)."""
    counts = np.array([len(m) for m in marked])
    rng = np.random.default_rng(seed)
    out, kept = list(marked), 0
    for n in np.unique(counts):
        order = rng.permutation(np.flatnonzero(counts == n))
        kept += len(order) == 1
        for user, other in zip(order, np.roll(order, -1)):
            out[user] = marked[other]
    return out, kept


def ablated(scores: pd.DataFrame, n_users: int, marks: int, ablation: str | None,
            seed: int) -> tuple[list[list[int]], str]:
    lists, marked = user_marks(scores, n_users, marks)
    if ablation == "random":
        return random_marks(lists, marked, seed), f"random-from-list (seed {seed})"
    if ablation == "shuffled":
        shuffled, kept = shuffled_marks(marked)
        return shuffled, f"another user's (fixed permutation, {kept} kept their own)"
    return marked, "llm"


def judge_precision(data, scores: pd.DataFrame, item_vectors: np.ndarray, marks: int = JUDGE_MARKS,
                    seed: int = 0) -> pd.DataFrame:
    """Precision on validation items of the LLM's marks (each user's `marks` top-scoring items of its list) and,
    at the same number of marks per user, of the
    embedding-similarity guard's choice (the list items closest to the mean text vector of the user's training
    items, as dnsmn-guard), of the teacher's best-ranked items of the list (the LLM adds to CF only above this),
    and of items of the list at random; with the chance level (the same for all: the lists' validation share)."""
    users = scores["user"].astype(int).to_numpy()
    lists = [list(map(int, c)) for c in scores["candidates"]]
    marked = top_marks(scores, marks)
    user_unit, item_unit = unit_rows(history_vectors(data, item_vectors)), unit_rows(item_vectors)
    sims = [(item_unit[c] @ user_unit[u]).numpy() for u, c in zip(users, lists)]
    rows = {"LLM judge": marked, "embedding guard": top_similar_marks(lists, [len(m) for m in marked], sims),
            "teacher's top of the list": [c[:len(m)] for c, m in zip(lists, marked)],
            "random from the list": random_marks(lists, marked, seed)}
    return pd.DataFrame([{"marker": name, **mark_precision(data, users, lists, m)} for name, m in rows.items()])


def builder(ablation: str | None):
    def build(data, settings, resources, seed):
        marked, source = ablated(resources[JUDGE_SCORES], data.n_users, settings.marks, ablation, seed)
        return JudgedDNSMN(marked, data.n_items, settings, source), None
    return build


def needs(settings) -> tuple:
    return (JUDGE_SCORES,)


register(Method("dnsmn-judge", "DNS(M,N) whose candidates the LLM scored as liked (its top `marks` of the "
                "teacher's top unseen items) are down-weighted", JudgeSettings, builder(None), needs, family="llm",
                search={**DNSMN.search, "weight": Axis((0.5, 1.0, 2.0), low=0.1, high=10.0),
                        "marks": Axis((1, 3, 6), low=1, high=JUDGE_CANDIDATES)}))
register(Method("dnsmn-judge-random", "dnsmn-judge with as many marks per user drawn at random from its list "
                "(ablation)", JudgeSettings, builder("random"), needs, family="llm", ablation_of="dnsmn-judge"))
register(Method("dnsmn-judge-shuffled", "dnsmn-judge with another user's marks, as many (ablation)",
                JudgeSettings, builder("shuffled"), needs, family="llm", ablation_of="dnsmn-judge"))
