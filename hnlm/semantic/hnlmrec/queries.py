"""HNLMRec fine-tuning set: collaborative hard negatives and query texts, from the TRAINING split only.

For a training pair (u, i):
  - the hard negative `neg` is chosen by a teacher CF model trained on the training split for a fixed
    number of epochs (no validation-based selection): among `candidates` items drawn uniformly from the
    items u has not interacted with in training, the best-scored one that passes the guard;
  - guard against false negatives: candidates that the teacher ranks in u's top `guard_top` share of
    non-interacted items are skipped (held-out positives concentrate there: they are the items CF would
    recommend), so the chosen item is hard (high score among the rest) but not a likely positive;
  - the query text = instruction + user profile + the item (title, profile) + the CF signal (as text: the
    item's rank for u under the teacher and the teacher's nearest non-interacted items; as soft tokens:
    the teacher's user and item vectors, see model.py);
  - targets: p = text-encoder embedding of `neg`, in-batch negatives n_j = embeddings of the interacted
    items of the batch.
Held-out (valid/test) interactions are never read here.

Length rule: with a tokenizer (`QueryBuilder.fit_to`), a query longer than max_length tokens loses tokens
from the middle of its USER part (replaced by " [...] "); the instruction, the item, the CF signal and the
final cue are never cut. Truncated queries and the tokens cut are counted (`QueryBuilder.counts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import write_npz
from hnlm.errors import DataFormatError, MissingInputError, UserFacingError
from hnlm.semantic.common import (
    Budget,
    cut_words,
    history_context,
    item_context,
    select_pairs,
    template_path,
    title_of,
)

NEIGHBOURS = 3            # teacher-nearest items named in the text CF signal
ITEM_PROFILE_WORDS = 40


@dataclass
class Teacher:
    """Final user/item embeddings of a CF model trained on the training split (scores = dot product)."""

    user_emb: np.ndarray
    item_emb: np.ndarray
    meta: dict

    @property
    def dim(self) -> int:
        return self.user_emb.shape[1]

    def scores(self, user: int) -> np.ndarray:
        return self.item_emb @ self.user_emb[user]

    def save(self, path: Path) -> None:
        import json
        write_npz(path, user_emb=self.user_emb, item_emb=self.item_emb, meta=json.dumps(self.meta))

    @classmethod
    def load(cls, path: Path) -> "Teacher":
        import json
        z = np.load(path)
        return cls(z["user_emb"], z["item_emb"], json.loads(str(z["meta"])))


@dataclass
class MiningConfig:
    candidates: int = 50       # M uniform non-interacted candidates per pair
    guard_top: float = 0.05    # skip candidates in the user's top 5% of non-interacted items
    seed: int = 0


def mine_hard_negatives(data, teacher: Teacher, users: np.ndarray, items: np.ndarray,
                        config: MiningConfig) -> tuple[np.ndarray, dict]:
    """One hard negative per pair (-1 where no candidate passed the guard) and counts."""
    rng = np.random.default_rng(config.seed)
    neg = np.full(len(users), -1, dtype=np.int64)
    guarded = 0
    for r, u in enumerate(users):
        scores = teacher.scores(int(u))
        seen = np.zeros(data.n_items, bool)
        seen[data.train_items(int(u))] = True
        unseen = np.flatnonzero(~seen)
        cut = np.quantile(scores[unseen], 1.0 - config.guard_top)
        cand = rng.choice(unseen, size=min(config.candidates, len(unseen)), replace=False)
        ok = cand[scores[cand] < cut]
        guarded += len(cand) - len(ok)
        if len(ok):
            neg[r] = ok[np.argmax(scores[ok])]
    counts = {"pairs": int(len(users)), "with_negative": int((neg >= 0).sum()),
              "no_candidate_passed_guard": int((neg < 0).sum()),
              "candidates_removed_by_guard": int(guarded), "candidates": config.candidates,
              "guard_top": config.guard_top}
    return neg, counts


def load_template(dataset: str) -> str:
    """The query template of `dataset` (common.template_path's rule), checked for its fields."""
    path = template_path("hnlmrec", dataset)
    text = path.read_text().strip()
    for field in ("{user_profile}", "{item_title}", "{item_profile}", "{cf_signal}"):
        if field not in text:
            raise DataFormatError(f"{path}: template lacks the field {field}")
    return text


class QueryBuilder:
    """Query text of a pair. User context: module-1 profile when given, else the training history
    (demographics + liked titles); which one each query used is counted."""

    def __init__(self, data, teacher: Teacher, cf_signal: str = "text",
                 user_profiles: dict | None = None, item_profiles: dict | None = None, seed: int = 0):
        self.data, self.teacher, self.cf_signal, self.seed = data, teacher, cf_signal, seed
        self.template = load_template(data.name)
        self.user_profiles = user_profiles or {}
        self.item_profiles = item_profiles or {}
        self.counts = {"user_profile": 0, "user_history": 0, "item_without_profile_genres_used": 0,
                       "truncated_queries": 0, "truncated_tokens": 0}
        self.tokenizer, self.max_length = None, None
        item = teacher.item_emb / np.linalg.norm(teacher.item_emb, axis=1, keepdims=True).clip(1e-12)
        self._item_unit = item

    def user_text(self, user: int) -> str:
        if user in self.user_profiles:
            self.counts["user_profile"] += 1
            return cut_words(self.user_profiles[user], 80)
        self.counts["user_history"] += 1
        return history_context(self.data, user, np.random.default_rng([self.seed, user]))

    def fit_to(self, tokenizer, max_length: int) -> "QueryBuilder":
        """Make every query fit `max_length` tokens of `tokenizer` (see the module doc's length rule)."""
        self.tokenizer, self.max_length = tokenizer, max_length
        return self

    def item_text(self, item: int) -> str:
        if self.item_profiles and item not in self.item_profiles:
            self.counts["item_without_profile_genres_used"] += 1
        return item_context(self.data, self.item_profiles, item, ITEM_PROFILE_WORDS)

    def cf_text(self, user: int, item: int) -> str:
        if self.cf_signal == "soft":
            return "given as embedding tokens before this text."
        if self.cf_signal == "none":
            return "not given."
        scores = self.teacher.scores(user)
        top_pct = 100.0 * (scores > scores[item]).mean()
        sims = self._item_unit @ self._item_unit[item]
        sims[self.data.train_items(user)] = -np.inf
        sims[item] = -np.inf
        near = np.argsort(-sims)[:NEIGHBOURS]
        names = "; ".join(title_of(self.data, int(j)) for j in near)
        return (f"the recommender ranks this item in the user's top {top_pct:.0f}%; "
                f"unseen items it places closest to it: {names}.")

    def text(self, user: int, item: int) -> str:
        parts = {"user_profile": self.user_text(user), "item_title": title_of(self.data, item),
                 "item_profile": self.item_text(item), "cf_signal": self.cf_text(user, item)}
        text = self.template.format(**parts)
        if self.tokenizer is None or self._length(text) <= self.max_length:
            return text
        return self._cut_user_part(parts, self._length(text))

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])  # as the collator counts (special tokens included)

    def _cut_user_part(self, parts: dict, n: int) -> str:
        ids = self.tokenizer(parts["user_profile"], add_special_tokens=False)["input_ids"]
        excess = n - self.max_length
        for _ in range(8):
            keep = len(ids) - excess - 4  # 4: room for the " [...] " marker
            if keep < 2:
                break
            head = keep // 2
            user = self.tokenizer.decode(ids[:head]) + " [...] " + self.tokenizer.decode(ids[len(ids) - keep + head:])
            text = self.template.format(**{**parts, "user_profile": user})
            n2 = self._length(text)
            if n2 <= self.max_length:
                self.counts["truncated_queries"] += 1
                self.counts["truncated_tokens"] += len(ids) - keep
                return text
            excess += n2 - self.max_length
        raise UserFacingError(f"HNLMRec queries do not fit max_length={self.max_length} tokens even with their user "
                              f"part cut to a few tokens: raise --max-length")


def build_examples(data, teacher: Teacher, builder: QueryBuilder, budget: Budget, mining: MiningConfig,
                   pair_seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fine-tuning examples (user, item, neg, text) for the training pairs of `budget`."""
    pairs = select_pairs(data, budget, pair_seed)
    users, items = pairs["user"].to_numpy(np.int64), pairs["item"].to_numpy(np.int64)
    neg, counts = mine_hard_negatives(data, teacher, users, items, mining)
    keep = neg >= 0
    users, items, neg = users[keep], items[keep], neg[keep]
    texts = [builder.text(int(u), int(i)) for u, i in zip(users, items)]
    counts = {**counts, **builder.counts}
    return pd.DataFrame({"user": users, "item": items, "neg": neg, "text": texts}), counts


def inference_queries(data, builder: QueryBuilder, budget: Budget, pair_seed: int = 0,
                      max_users: int | None = None) -> pd.DataFrame:
    """Queries for the embedding pass: the training pairs of `budget` (no negative needed), of the
    first `max_users` users only when given (texts are built for the kept pairs only)."""
    pairs = select_pairs(data, budget, pair_seed)
    if max_users is not None:
        pairs = pairs[pairs["user"] < max_users].reset_index(drop=True)
    if not len(pairs):
        raise MissingInputError("no training pairs to embed")
    pairs["text"] = [builder.text(int(u), int(i)) for u, i in zip(pairs["user"], pairs["item"])]
    return pairs
