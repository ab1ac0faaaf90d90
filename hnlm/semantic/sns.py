"""Module 2: semantic negative sampling (SNS).

For a training pair (user, positive item) an LLM is prompted with the user's profile and the item's title
and profile and returns one hard negative as JSON `{"reasoning": ..., "hard_negative_item": <= 20 words}`
(schema-constrained, cached and resumable through the LLM layer; the reasoning comes first so the title is
written after it). Decoding is greedy or sampled (temperature / top-p with a fixed seed, LocalBackend); the
sampling settings and a hash of the prompt template and schema are part of every record's context tag, so
records made with other settings or another prompt are never reused. Each text is embedded with a text encoder
and stored by (user, item); the grounded variant maps it to the nearest real catalogue item that is not in
the user's training history. Quality measures are written next to the artefacts.

Artefacts, under artifacts/<dataset>/sns/<llm>/split-<split id>/ (`split_id_of`: the seed, and the kind unless
random):
  negatives.jsonl        every generated pair (append-only; a rerun only generates missing pairs)
  bank_<budget>.npz      users, items, emb (text embeddings of the valid negatives of that budget)
  grounded_<budget>.parquet  user, item, nearest catalogue item (train items excluded), its similarity, pool
  quality_<budget>.json  valid-JSON rate, train-item / held-out (false hard negative) shares, similarities
  meta_<budget>.json     budget, LLM / encoder identity, prompt context, train fingerprint (checked on loading)

Only training interactions reach prompts and candidate pools; held-out items are read for the quality
measures alone. Items without a module-1 profile are described by their genres; such pairs are counted.

Candidate-list variant (`hnlm sns --variant pick`, see the section below): the LLM picks, from
PICK_CANDIDATES real catalogue items, those the user would not enjoy; its control picks as many items of the
same list uniformly.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hnlm.atomic import append_lines, atomic_path, write_text
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.backends import make_backend
from hnlm.llm.catalog import redact
from hnlm.llm.encoders import get_text_encoder
from hnlm.llm.structured import field_budgets
from hnlm.paths import artifacts_dir
from hnlm.semantic import outputs
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import (
    SNS_DECODING_NAMES,
    Budget,
    chat_template,
    check_split,
    domain_of,
    history_context,
    item_context,
    safe_name,
    select_pairs,
    split_id_of,
    split_options,
    split_seed_of,
    template_path,
    title_of,
    train_fingerprint,
)
from hnlm.semantic.profiles import profiles_of

MAX_WORDS = 20
SNS_SCHEMA = {  # property order is the order the constrained decoder writes them in: reasoning first
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "hard_negative_item": {"type": "string"},
    },
    "required": ["reasoning", "hard_negative_item"],
    "additionalProperties": False,
}
# Token budgets per string field (the LLM layer forces the closing quote when one is spent).
FIELD_TOKENS = {"reasoning": 24, "hard_negative_item": 28}
ITEM_PROFILE_WORDS = 60  # item profiles are cut to this many words in the prompt
RECORD_COLUMNS = ["user", "item", "ok", "text", "reasoning", "reason", "words", "truncated", "context", "sample",
                  "tries", "rejected"]
DRAW_STRIDE = 1000   # try t of the sample with sampling seed s draws with seed s + DRAW_STRIDE * t
COPY_FILTER = "titles8items5"   # DrawFilter's rules (in the tag: records of other rules are not reused as they are)
# Earlier DrawFilter rules, each rejecting a subset of what COPY_FILTER's reject: their shipped draws are re-judged
# by the current rules (`superseded_records`), so a stricter rule costs only the draws it newly needs. Only shipped
# outputs are read: the rule of the last shipped output is enough.
SUPERSEDED_FILTERS = ("titles7items5",)


# ---------------------------------------------------------------- prompts

def sampling_tag(temperature: float, top_p: float, seed: int, tries: int = 0) -> str:
    """Decoding part of a record's context tag: "greedy", or the sampling settings; "-nocopy<tries>-<filter>"
    when copies of training items and answers naming no item are drawn again (`tries` draws at most, the
    rules of DrawFilter, versioned by COPY_FILTER)."""
    base = "greedy" if temperature <= 0 else f"sample-t{temperature:g}-p{top_p:g}-s{seed}"
    return base + (f"-nocopy{tries}-{COPY_FILTER}" if tries else "")


_TAG = re.compile(r"^(?:greedy|sample-t(?P<t>[0-9.e+-]+)-p(?P<p>[0-9.e+-]+)-s(?P<seed>\d+))"
                  r"(?:-nocopy(?P<tries>\d+)-[a-z0-9]+)?$")


def decoding_of(tag: str) -> "Decoding":
    """The one-sample Decoding a `sampling_tag` names (its seed: that sample's)."""
    m = _TAG.match(tag)
    if m is None:
        raise ValueError(f"not a decoding tag: {tag!r}")
    return Decoding(float(m.group("t") or 0), float(m.group("p") or 1), int(m.group("seed") or 0), 1,
                    int(m.group("tries") or 0))


@dataclass(frozen=True)
class Decoding:
    """How module 2 decodes: K = `samples` negatives per pair, sample k drawn at `temperature` / `top_p` with
    sampling seed `seed` + k; a draw that names one of the user's training items or no item at all
    (`DrawFilter`) is drawn again with seed + k + DRAW_STRIDE * t, `tries` draws in all (then the pair's sample k
    is invalid, with the last draw's reason, counted);
    tries 0: no filter. Each sample is its own record set (context tag `tag(k)`), shipped output and row block
    of the bank, so a larger K extends a smaller one. K = 4, the least the study asks for, chosen for generation
    time (each sample is one more row per pair, plus redraws of copies; bench/README.md): on SmolLM2 (32 users,
    history context, t 0.8 / top-p 0.95) the 4 samples were 95% distinct against 34% for greedy, and on the
    smoke profile notebook 03 runs in under 2 minutes (docs/usage.md, Methods)."""

    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    samples: int = 4
    tries: int = 4

    def tag(self, k: int = 0) -> str:
        return sampling_tag(self.temperature, self.top_p, self.seed + k, self.tries)

    def backend_options(self) -> dict:
        """make_backend's sampling options (none for greedy)."""
        return ({"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
                if self.temperature > 0 else {})


SAMPLED = Decoding()   # the study's negatives (notebooks 03-08)
GREEDY = Decoding(temperature=0.0, top_p=1.0, seed=0, samples=1, tries=0)   # one greedy negative, no filter: the
# negatives shipped before K samples existed (notebook 11 compares LLM sizes with them)
DECODINGS = dict(zip(SNS_DECODING_NAMES, (SAMPLED, GREEDY)))   # by the name study settings use
COPY_REASON = "copy of a training item"   # reason of a sample whose last draw was a copy
NOT_ITEM_REASON = "names no item"   # reason of a sample whose last draw named no item (DrawFilter.names_no_item)
FILTER_REASONS = (COPY_REASON, NOT_ITEM_REASON)   # answered, but every draw rejected by the DrawFilter
# Words that name no particular item: with the catalogue's genre words, a text made only of them is no item.
NOT_ITEM_WORDS = frozenset("the a an and or of with in to on s is it its this that about for from by as at be are was "
                           "movie film title hard negative item genre kind type none unknown n romantic epic "
                           "theme psychological science fiction classic dystopian future why not try first "
                           "one late scifi animated criminal story novel name".split())
FIELD_WORDS = frozenset({"reasoning"})   # a JSON field's name inside the answer: the format leaked, no item
USER_WORDS = frozenset({"user", "users"})   # a text about the user describes a taste, not an item
REFUSAL = re.compile(r"\b(i m sorry|i am sorry|i can t|i cannot|as an ai)\b")   # on norm_title's text
NEAR_COPY_WORDS = 8      # a text of at most this many words may be a near-copy of a title (longer: a description)
NEAR_COPY_RATIO = 0.75   # difflib ratio at or above which a title-like text is a misspelt title ("Imortal Beloved")
COPY_WORD_CHARS = 5      # a one-word text this long that is a word of a training title is a copy ("Vampire")
NO_ITEM_CHARS = 3        # a text with fewer letters and digits names no item ("Bo")


class DrawFilter:
    """Which sampled draws are not negatives, and why (`reject_reason`): a copy of one of the user's TRAINING
    items (`names_any` of their title forms, or a `near_copy`, one word of a title included), or a text that names
    no item at all (only genre words of the catalogue and NOT_ITEM_WORDS, e.g. "Drama", "The (1993)", "Dystopian
    future"; fewer than NO_ITEM_CHARS letters, "Bo"; the JSON field's name, "First Reasoning"; one about the user,
    "The user dislikes ..."; a refusal, "I'm sorry, but I can't ..."). Every rule comes from reading
    qwen2.5-0.5b's draws record by record (bench/README.md, module 2). Built from the
    training interaction matrix and the catalogue alone, so it cannot see held-out items: `of(data)` reads
    `data.train` and `data.items`; anything but a sparse matrix is refused."""

    def __init__(self, train, titles: list[str], genre_words: frozenset[str] = frozenset()):
        if not sp.issparse(train):
            raise TypeError(f"DrawFilter takes the training interaction matrix, not {type(train).__name__}")
        self.train = sp.csr_matrix(train)
        self.titles = [title_forms(t) for t in titles]
        self.no_item_words = NOT_ITEM_WORDS | genre_words

    @classmethod
    def of(cls, data) -> "DrawFilter":
        return cls(data.train, list(data.items["title"].fillna("")), genre_words_of(data))

    def items(self, user: int) -> np.ndarray:
        return self.train.indices[self.train.indptr[user]:self.train.indptr[user + 1]]

    def is_copy(self, user: int, text: str) -> bool:
        forms = [form for j in self.items(user) for form in self.titles[j]]
        return names_any(text, forms) or near_copy(text, forms, self.no_item_words)

    def names_no_item(self, text: str) -> bool:
        words = norm_title(text).split()
        if REFUSAL.search(" ".join(words)) or len("".join(words)) < NO_ITEM_CHARS:
            return True
        return all(w.isdigit() or not self.no_item_words.isdisjoint(word_forms(w)) for w in words) or bool(
            (USER_WORDS | FIELD_WORDS) & set(words))

    def reject_reason(self, user: int, text: str) -> str | None:
        """NOT_ITEM_REASON first: a text naming no item copies nothing, however like a title word it looks."""
        if self.names_no_item(text):
            return NOT_ITEM_REASON
        return COPY_REASON if self.is_copy(user, text) else None


def near_copy(text: str, forms: list[str], no_item_words: frozenset[str] = frozenset()) -> bool:
    """Is a title-like text (at most NEAR_COPY_WORDS words) one of the title forms without its article ("Juror" of
    'Juror, The', however short), part of one ("Three Colors" of 'Three Colors: Red', "Water For Chocolate" of
    'Like Water for Chocolate'; >= 2 words and >= 8 characters), a misspelling of one (difflib ratio >=
    NEAR_COPY_RATIO, forms of >= BARE_TITLE_CHARS characters) or a `word_copy` of one? Leading articles are
    ignored on both sides; a part may also be what is left once words naming no item are dropped ("The classic
    American Quilt" of 'How to Make an American Quilt', "The Brain Candy movie"). Read in qwen's kept negatives:
    under exact matching 43 of 644 were such near-copies at a ratio of 0.8 (39 at 0.85; each hit read: all
    copies); once one-word copies were rejected, 16 of 1,618 kept were at 0.75 to 0.8, each read: 14 copies
    ("Chroning Amy", "Someday in Time", "The Love and the Beast"), one other film ("The Lord of the Rings", 0.75
    to 'Hour of the Pig'), one no item; of the 2,214 kept then, 8 were parts once words naming no item were
    dropped, each read: all copies."""
    t = without_article(norm_title(text))
    if not t or len(t.split()) > NEAR_COPY_WORDS:
        return False
    part = len(t) >= 8 and len(t.split()) >= 2
    core = " ".join(w for w in t.split() if w not in no_item_words)   # "classic american quilt" -> "american quilt"
    core_part = core != t and len(core) >= 8 and len(core.split()) >= 2
    for form in map(without_article, forms):
        if t == form or part and f" {t} " in f" {form} " or word_copy(t, form, no_item_words):
            return True
        if core_part and f" {core} " in f" {form} ":
            return True
        if len(form) >= BARE_TITLE_CHARS and difflib.SequenceMatcher(None, t, form).ratio() >= NEAR_COPY_RATIO:
            return True
    return False


def word_copy(word: str, form: str, no_item_words: frozenset[str]) -> bool:
    """Is a one-word text (article-less, normalised) a word of the title form ("Vampire", "The Mohicans"; >=
    COPY_WORD_CHARS characters, not a word naming no item), a misspelt one ("Claybourne" of 'Dolores
    Claiborne'; title words of >= BARE_TITLE_CHARS characters) or the title cut short ("Casab" of
    'Casablanca'; >= 4 characters)? Found reading the kept negatives of the titles6items4 rules: 33 of 1,147
    were such one-word copies, each read."""
    if " " in word or len(word) < 4:
        return False
    if form.startswith(word):
        return True
    return len(word) >= COPY_WORD_CHARS and any(
        w not in no_item_words and (w == word or len(w) >= BARE_TITLE_CHARS and
                                    difflib.SequenceMatcher(None, word, w).ratio() >= NEAR_COPY_RATIO)
        for w in form.split())


def word_forms(word: str) -> set[str]:
    """A word and its possible singulars: 'comedies' -> comedies, comedie, comedy; 'movies' -> ..., movie."""
    forms = {word}
    if word.endswith("s") and len(word) > 3:
        forms.add(word[:-1])
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    return forms


def without_article(normalised: str) -> str:
    """A normalised title without its leading English article."""
    first, _, rest = normalised.partition(" ")
    return rest if first in _LEADING_ARTICLES and rest else normalised


def genre_words_of(data) -> frozenset[str]:
    """The words of the catalogue's categories ("Sci-Fi|Film-Noir" -> sci, fi, film, noir)."""
    cats = data.items["categories"].fillna("") if "categories" in data.items else pd.Series([], dtype=str)
    return frozenset(w for c in cats for w in re.sub(r"[^a-z0-9]+", " ", str(c).lower()).split())


class PromptBuilder:
    """Messages for one (user, item) pair. context: "profile" (module 1 profiles) or "history";
    `decoding`: sampling_tag() of the backend's settings (part of the context tag)."""

    template_prefix = "sns"
    records_file = "negatives.jsonl"
    columns = RECORD_COLUMNS
    max_new_tokens = sum(FIELD_TOKENS.values()) + 16

    def json_schema(self) -> dict:
        return sns_schema()

    def parse(self, result, user: int, item: int) -> dict:
        return parse_answer(result)

    @staticmethod
    def decoding_of(tag: str) -> "Decoding":
        return decoding_of(tag)

    def __init__(self, data, context: str = "profile", profiles_llm: str | None = None, seed: int = 0,
                 decoding: str = "greedy", sample: int = 0):
        self.data = data
        self.sample, self.decoding = sample, self.decoding_of(decoding)
        self.draw_seed, self.tries = self.decoding.seed, self.decoding.tries
        self._filter: DrawFilter | None = None
        self.context = context
        self.template = template_path(self.template_prefix, data.name)
        self.system, self.user_template = chat_template(self.template)
        if context not in ("profile", "history"):
            raise UserFacingError(f"unknown SNS context {context!r}: use 'profile' or 'history'")
        self.profiles_llm = profiles_llm
        self._profiles: tuple[dict[int, str], dict[int, str]] | None = None if context == "profile" else ({}, {})
        self.seed = seed
        self.items_without_profile: set[int] = set()
        # Stored with every record: negatives made from another context, prompt or decoding are never reused.
        base = "history" if context == "history" else f"profile:{redact(str(profiles_llm))}"  # written: no credentials
        prompt = json.dumps([self.system, self.user_template, self.json_schema()])
        prompt = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        self.tag = f"{base}|{self.template_prefix}-{prompt}|{decoding}"

    @property
    def draw_filter(self) -> DrawFilter | None:
        """The filter of these records' draws (None without one)."""
        if self.tries and self._filter is None:
            self._filter = DrawFilter.of(self.data)
        return self._filter

    @property
    def item_profiles(self) -> dict[int, str]:
        """Module-1 item profiles by id (read on first use: the tag and the slot need none)."""
        return self._loaded_profiles()[0]

    @property
    def user_profiles(self) -> dict[int, str]:
        return self._loaded_profiles()[1]

    def _loaded_profiles(self) -> tuple[dict[int, str], dict[int, str]]:
        if self._profiles is None:
            self._profiles = profiles_of(self.data, self.profiles_llm)
        return self._profiles

    def user_text(self, user: int) -> str:
        if self.context == "profile":
            if user not in self.user_profiles:
                raise MissingInputError(f"no profile for user {user}: run `hnlm profiles` for all users "
                                        f"or use --context history")
            return self.user_profiles[user]
        return history_context(self.data, user, np.random.default_rng([self.seed, user]))

    def item_text(self, item: int) -> str:
        if self.context == "profile" and item not in self.item_profiles:
            self.items_without_profile.add(item)
        return item_context(self.data, self.item_profiles, item, ITEM_PROFILE_WORDS)

    def profile_fallbacks(self, pairs: pd.DataFrame) -> dict:
        """Pairs (and distinct items) whose positive item has no module-1 profile, so that its genres stand
        in for it in the prompt (0 with the "history" context, which uses genres by design)."""
        if self.context != "profile":
            return {"pairs_item_without_profile": 0, "items_without_profile": 0}
        missing = ~pairs["item"].astype(int).isin(list(self.item_profiles))
        return {"pairs_item_without_profile": int(missing.sum()),
                "items_without_profile": int(pairs.loc[missing, "item"].nunique())}

    def messages(self, user: int, item: int) -> list[dict]:
        text = self.user_template.format(user_profile=self.user_text(user),
                                         item_title=title_of(self.data, item),
                                         item_profile=self.item_text(item))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def describe(self) -> dict:
        return {"context": self.context, "context_tag": self.tag, "item_profiles": len(self.item_profiles),
                "user_profiles": len(self.user_profiles),
                "template": f"{self.template_prefix}_{domain_of(self.data.name)}"}


# ---------------------------------------------------------------- generation (cached, resumable)

def sns_dir(dataset: str, llm: str, split_id: str) -> Path:
    """The folder of one LLM's SNS artefacts on the split `split_id` (from `split_id_of`)."""
    return artifacts_dir(dataset, "sns", safe_name(llm), f"split-{split_id}")


def read_negatives(path: Path, context: str | None = None, cols: list[str] = RECORD_COLUMNS) -> pd.DataFrame:
    """Generated records (of one prompt context when `context` is a PromptBuilder.tag); a torn last line
    (interrupted write) is ignored."""
    if not path.exists():
        return pd.DataFrame(columns=cols)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    frame = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    if context is not None:
        frame = frame[frame["context"] == context]
    return frame.drop_duplicates(["user", "item"], keep="last")


def parse_answer(result) -> dict:
    """One LLM result -> record fields; the text is cut to MAX_WORDS words (and counted)."""
    value = result.value if result.ok else None
    text = (value or {}).get("hard_negative_item")
    if not isinstance(text, str) or not text.strip():
        reason = result.reason if not result.ok else "empty hard_negative_item"
        return {"ok": False, "text": None, "reasoning": None, "reason": reason or "invalid",
                "words": 0, "truncated": False}
    words = text.split()
    return {"ok": True, "text": " ".join(words[:MAX_WORDS]), "reasoning": str(value.get("reasoning", "")),
            "reason": None, "words": len(words), "truncated": len(words) > MAX_WORDS}


def sample_builders(data, context: str, profiles_llm: str | None, pair_seed: int, decoding: Decoding,
                    make=PromptBuilder) -> list[PromptBuilder]:
    """One PromptBuilder per sample k of `decoding` (context tag `decoding.tag(k)`), in sample order."""
    return [make(data, context, profiles_llm, seed=pair_seed, decoding=decoding.tag(k), sample=k)
            for k in range(decoding.samples)]


def draw_records(backend, part: list[tuple[PromptBuilder, int, int]], budget: int, desc: str,
                 resumed: dict[int, tuple[int, list[str]]] | None = None) -> list[dict]:
    """Records of the (builder, user, item) triples `part` (several samples of one pair ask the same prompt with
    their own seeds, in one call: one prefill per prompt). With a draw filter (builder.tries > 0) an answer the
    filter rejects (a copy of one of the user's training items, or no item) is drawn again with the sample's next
    seed (sampled decoding only: greedy would repeat it), builder.tries draws in all; `rejected` keeps the
    rejected draws, `tries` the draws made; a pair-sample still rejected after its last draw is invalid (reason:
    its last draw's, one of FILTER_REASONS). `resumed`: {index in part: (draws made, texts rejected)} of records
    drawn under a laxer filter (`rejudge`), whose drawing goes on from their next try."""
    resumed = resumed or {}
    prompts: dict[tuple[int, int], list[dict]] = {}
    messages = [prompts.setdefault((u, i), b.messages(u, i)) for b, u, i in part]
    sampled = getattr(backend, "temperature", 0) > 0
    records: list[dict] = [{} for _ in part]
    tries = [resumed[j][0] if j in resumed else 0 for j in range(len(part))]
    rejected = [list(resumed[j][1]) if j in resumed else [] for j in range(len(part))]
    todo, exhausted, rounds = list(range(len(part))), {}, 0
    while todo:
        results = backend.generate_json([messages[j] for j in todo], part[0][0].json_schema(), max_new_tokens=budget,
                                        desc=desc if rounds == 0 else f"{desc} redraw {rounds}",
                                        seeds=[part[j][0].draw_seed + DRAW_STRIDE * tries[j] for j in todo])
        again = []
        for j, res in zip(todo, results):
            builder, u, i = part[j]
            tries[j] += 1
            records[j] = {**builder.parse(res, u, i), "cached": bool(getattr(res, "cached", False))}
            rules = builder.draw_filter
            why = rules.reject_reason(u, records[j]["text"]) if rules is not None and records[j]["ok"] else None
            if why is not None:
                rejected[j].append(records[j]["text"])
                if sampled and tries[j] < builder.tries:
                    again.append(j)
                else:
                    exhausted[j] = why
        todo, rounds = again, rounds + 1
    for j, why in exhausted.items():
        records[j].update(ok=False, text=None, reason=why)
    return [{**rec, "tries": n, "rejected": rej} for rec, n, rej in zip(records, tries, rejected)]


def rejudge(builder: PromptBuilder, user: int, record) -> dict | tuple[int, list[str]]:
    """A record drawn under a laxer DrawFilter (SUPERSEDED_FILTERS), judged by the builder's: the record as it now
    stands, or, when its kept draw is rejected and draws are left, (draws made, texts rejected) to draw on from."""
    fields, rules = shipped_fields(record), builder.draw_filter
    passing = [t for t in fields["rejected"] if rules.reject_reason(user, t) is None]
    if passing:   # the current rules would have kept an earlier draw: only drawing again gives their record
        raise ValueError(f"rule {COPY_FILTER} accepts {passing[0]!r}, which a superseded rule rejected (user "
                         f"{user}): SUPERSEDED_FILTERS must hold only rules that reject less than {COPY_FILTER}")
    why = rules.reject_reason(user, fields["text"]) if fields["ok"] else None
    if why is None:
        return fields
    rejected = [*fields["rejected"], fields["text"]]
    if fields["tries"] < builder.tries:
        return fields["tries"], rejected
    return {**fields, "ok": False, "text": None, "reason": why, "rejected": rejected}


def generate_negatives(data, backend, pairs: pd.DataFrame, builders, out: Path, chunk: int = 32,
                       max_new_tokens: int | None = None, order_seed: int = 0,
                       prior: dict[tuple[int, int, int], dict] | None = None) -> dict:
    """Generate the records missing from out/<records_file> of each of `builders` (one PromptBuilder, or the samples
    of `sample_builders`): `chunk` pairs at a time with all their missing samples in one call (`draw_records`:
    one prefill per prompt, draws the DrawFilter rejects drawn again), appending each chunk as it finishes.
    `prior`: {(sample, user, item): record} drawn under a laxer filter (`superseded_records`), re-judged instead
    of drawn again (`rejudge`): only the samples whose kept draw is now rejected draw on."""
    builders = builders if isinstance(builders, list) else [builders]
    prior = prior or {}
    path = out / builders[0].records_file
    # Users in a seeded random order: an interrupted run leaves an unbiased subset of users covered.
    rank = np.random.default_rng(order_seed).permutation(data.n_users)
    todo, settled, resumed = [], [], {}
    for b in builders:
        done = read_negatives(path, b.tag, b.columns)
        have = set(zip(done["user"].astype(int), done["item"].astype(int)))
        for u, i in zip(pairs["user"].astype(int), pairs["item"].astype(int)):
            old = None if (u, i) in have else prior.get((b.sample, u, i))
            state = None if old is None else rejudge(b, u, old)
            if isinstance(state, dict):
                settled.append(json.dumps({"user": u, "item": i, **state, "context": b.tag, "sample": b.sample}))
            elif (u, i) not in have:
                todo.append((b, u, i))
                if state is not None:
                    resumed[(b.sample, u, i)] = state
    if settled:
        append_lines(path, settled)
    todo.sort(key=lambda t: (rank[t[1]], t[1], t[2], t[0].sample))
    budget = max_new_tokens or builders[0].max_new_tokens
    cached = redrawn = 0
    step = chunk * len(builders)
    for start in range(0, len(todo), step):
        part = todo[start:start + step]
        goes_on = {j: resumed[(b.sample, u, i)] for j, (b, u, i) in enumerate(part) if (b.sample, u, i) in resumed}
        records = draw_records(backend, part, budget, f"SNS {start + len(part)}/{len(todo)}", goes_on)
        for j, rec in enumerate(records):
            cached += rec.pop("cached")
            redrawn += rec["tries"] - goes_on.get(j, (0,))[0] - 1   # draws of this run beyond its first
        append_lines(path, [json.dumps({"user": u, "item": i, **rec, "context": b.tag, "sample": b.sample})
                            for (b, u, i), rec in zip(part, records)])
    fallbacks = builders[0].profile_fallbacks(pairs)
    if fallbacks["pairs_item_without_profile"]:
        print(f"SNS: {fallbacks['pairs_item_without_profile']} pairs ({fallbacks['items_without_profile']} items) "
              f"have no item profile: their genres stand in for it", file=sys.stderr)
    requested = len(pairs) * len(builders)
    return {"requested": requested, "already_done": requested - len(todo) - len(settled), "generated": len(todo),
            "rejudged": len(settled) + len(resumed), "from_llm_cache": cached, "redrawn": redrawn, **fallbacks}


def sns_schema() -> dict:
    """The JSON schema, with per-field token budgets where the LLM layer reads them."""
    schema = json.loads(json.dumps(SNS_SCHEMA))
    for name, tokens in FIELD_TOKENS.items():
        schema["properties"][name]["x-max-tokens"] = tokens
    return schema


# ---------------------------------------------------------------- embedding, grounding, quality

_LEADING_ARTICLES = ("the", "a", "an")   # dropped from a title's front ("Die Hard" keeps its "Die")
BARE_TITLE_CHARS = 6
_TITLE_ARTICLE = re.compile(r"^(.*), (the|a|an|la|le|les|il|el|das|der|die)$", re.I)


def norm_title(title: str) -> str:
    """'Godfather, The (1972)' -> 'the godfather' (for matching titles inside generated text)."""
    t = re.sub(r"\s*\(.*?\)\s*", " ", str(title)).strip()
    m = _TITLE_ARTICLE.match(t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", t.lower()).split())


def title_forms(title: str) -> tuple[str, ...]:
    """The normalised forms of a catalogue title a text may use: its article in front, left behind as the
    catalogue writes it, or dropped: 'Secret Garden, The (1993)' -> ('the secret garden', 'secret garden the',
    'secret garden'). The form without its article is kept when it has >= BARE_TITLE_CHARS characters, so that
    'Net, The' does not match every text with the word "net" in it."""
    as_written = " ".join(re.sub(r"[^a-z0-9 ]+", " ", re.sub(r"\s*\(.*?\)\s*", " ", str(title)).lower()).split())
    full = norm_title(title)
    moved = _TITLE_ARTICLE.match(re.sub(r"\s*\(.*?\)\s*", " ", str(title)).strip())
    first, _, rest = full.partition(" ")
    bare = rest if (moved or first in _LEADING_ARTICLES) and len(rest) >= BARE_TITLE_CHARS else None
    return tuple(f for f in dict.fromkeys((full, as_written, bare)) if f)


def names_any(text: str, titles: list[str]) -> bool:
    """Does the text name one of the titles (whole-word match of a normalised title of >= 4 chars)?"""
    t = f" {norm_title(text)} "
    return any(len(x) >= 4 and f" {x} " in t for x in titles)


def item_embeddings(data, encoder) -> np.ndarray:
    """Catalogue items embedded from their metadata text (the grounding targets)."""
    return encoder.encode([data.item_text(i) for i in range(data.n_items)])


def short_text(data, item: int) -> str:
    """An item as the same kind of short text the LLM writes: title (year) and genres."""
    cats = data.items.iloc[item].get("categories")
    return f"{title_of(data, item)}: {cats}" if cats else title_of(data, item)


def short_embeddings(data, encoder) -> np.ndarray:
    """Catalogue items embedded as short texts (the reference of the similarity measures)."""
    return encoder.encode([short_text(data, i) for i in range(data.n_items)])


def ground(neg_emb: np.ndarray, users: np.ndarray, item_emb: np.ndarray, data,
           pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest catalogue item of each negative excluding the user's training items (cosine), its
    similarity, the top-`pool` such items, and the nearest item over the whole catalogue."""
    sims = neg_emb @ item_emb.T
    nearest_any = sims.argmax(axis=1)
    for r, u in enumerate(users):
        sims[r, data.train_items(int(u))] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :pool]
    nearest = top[:, 0]
    return nearest, sims[np.arange(len(users)), nearest], top, nearest_any


def similarity_to_positive(neg_emb: np.ndarray, items: np.ndarray, short_emb: np.ndarray,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """The one "similarity to the positive" of the study, per negative: the inner product (cosine of the
    unit-norm MiniLM vectors) of each generated text (rows of neg_emb, for positives `items`) with its
    positive's short text (`short_embeddings`), and of its two baselines with the same positive: a random
    catalogue item's short text, and another pair's generated text (a derangement of the rows)."""
    items = np.asarray(items, int)
    n = len(items)
    rng = np.random.default_rng(seed)
    rand_items = rng.integers(0, len(short_emb), size=n)
    other = (np.arange(n) + 1 + rng.integers(0, max(n - 1, 1))) % max(n, 1)
    return {"generated negative": np.einsum("nd,nd->n", neg_emb, short_emb[items]),
            "random item": np.einsum("nd,nd->n", short_emb[rand_items], short_emb[items]),
            "another pair's negative": np.einsum("nd,nd->n", neg_emb[other], short_emb[items])}


def copy_shares(data, rec: pd.DataFrame) -> dict:
    """What the draw filter met, over every answered record (`rec`: valid ones and those the filter left invalid):
    copies of the user's training items and texts naming no item (`DrawFilter`), in the first draw (`rejected`
    holds it, or the kept text does when no draw was rejected) and in the kept text; rejected draws by reason, and
    pair-samples left invalid by reason."""
    rules = DrawFilter.of(data)
    n = max(len(rec), 1)
    rejected = [r if isinstance(r, list) else [] for r in rec.get("rejected", pd.Series([None] * len(rec)))]
    kept = [t if bool(ok) else None for t, ok in zip(rec["text"], rec["ok"])]
    firsts = [rej[0] if rej else t for rej, t in zip(rejected, kept)]
    users = rec["user"].astype(int).tolist()

    def share(texts, test) -> float:
        return sum(t is not None and test(u, t) for u, t in zip(users, texts)) / n

    def no_item(_, t):
        return rules.names_no_item(t)

    reasons = [rules.reject_reason(u, t) for u, rej in zip(users, rejected) for t in rej]
    return {"copy_share_before_filter": share(firsts, rules.is_copy),
            "copy_share_after_filter": share(kept, rules.is_copy),
            "no_item_share_before_filter": share(firsts, no_item), "no_item_share_after_filter": share(kept, no_item),
            "copies_rejected": reasons.count(COPY_REASON), "no_items_rejected": reasons.count(NOT_ITEM_REASON),
            "copy_filter_exhausted": int(sum(r == COPY_REASON for r in rec["reason"])),
            "no_item_exhausted": int(sum(r == NOT_ITEM_REASON for r in rec["reason"]))}


def answered(rec: pd.DataFrame) -> pd.DataFrame:
    """The records with an answer: valid ones and those the draw filter left invalid (FILTER_REASONS)."""
    return rec[rec["ok"].astype(bool) | rec["reason"].isin(FILTER_REASONS)]


def catalogue_share(data, texts) -> float:
    """Share of texts that name some catalogue item (a title form of >= 4 characters, `title_forms`): the rest
    are not items of this catalogue (inventions, descriptions, or none)."""
    titles = sorted({f for x in data.items["title"].fillna("") for f in title_forms(x) if len(f) >= 4})
    texts = list(texts)
    return sum(names_any(t, titles) for t in texts) / max(len(texts), 1)


def quality(data, rec: pd.DataFrame, neg_emb: np.ndarray, short_emb: np.ndarray, nearest: np.ndarray,
            nearest_any: np.ndarray, top: np.ndarray, seed: int = 0, similarity: np.ndarray | None = None) -> dict:
    """Quality of the valid negatives `rec` (rows aligned with neg_emb); held-out items read here only.

    Similarities (`similarity_to_positive`) compare like with like: a generated text (a title and a short
    description) against the positive's short text (title and genres, `short_emb`), with two baselines.
    Distinct shares: distinct generated texts (case-folded), and distinct nearest catalogue items (grounding),
    over valid negatives. false_hard_negative_share (the nearest non-train item is a held-out item of the
    user) comes with its chance level (a uniform non-train item). grounding_distance_mean: 1 - cosine of each
    text with its nearest non-train item (`similarity`); catalogue_item_share: texts naming a catalogue title."""
    users, items = rec["user"].to_numpy(int), rec["item"].to_numpy(int)
    titles = [title_forms(t) for t in data.items["title"].fillna("")]
    names_train = names_pos = held_near = held_pool = 0
    chance_near = 0.0
    in_train_any = 0
    for r, (u, i, text) in enumerate(zip(users, items, rec["text"])):
        train = data.train_items(u)
        held = set(data.heldout_items(u).tolist())
        names_train += names_any(text, [f for j in train for f in titles[j]])
        names_pos += names_any(text, list(titles[i]))
        in_train_any += int(nearest_any[r]) in set(train.tolist())
        held_near += int(nearest[r]) in held
        held_pool += sum(int(j) in held for j in top[r]) / top.shape[1]
        chance_near += len(held) / (data.n_items - len(train))
    n = max(len(rec), 1)
    sim = similarity_to_positive(neg_emb, items, short_emb, seed)
    return {
        "n_valid": int(len(rec)),
        "names_train_item_share": names_train / n,
        "names_positive_share": names_pos / n,
        "nearest_catalogue_item_in_train_share": in_train_any / n,
        "false_hard_negative_share": held_near / n,
        "false_hard_negative_chance": chance_near / n,
        "pool_heldout_share": held_pool / n,
        "sim_to_positive_mean": float(sim["generated negative"].mean()) if len(rec) else None,
        "sim_random_item_to_positive_mean": float(sim["random item"].mean()) if len(rec) else None,
        "sim_other_pairs_negative_to_positive_mean": float(sim["another pair's negative"].mean())
        if len(rec) > 1 else None,
        "similarity_reference": "positive's short text (title + genres), as the generated text",
        "distinct_texts_share": rec["text"].str.lower().nunique() / n,
        "distinct_nearest_items_share": len(set(nearest.tolist())) / n,
        "grounding_distance_mean": float(1 - np.mean(similarity)) if similarity is not None and len(rec) else None,
        "catalogue_item_share": catalogue_share(data, rec["text"]),
    }


REPORT = {   # quality key: what it says (the measures `hnlm sns` and notebook 03 report per output)
    "copy_share_before_filter": "names a training item of the user, first draw (before the draw filter)",
    "copy_share_after_filter": "names a training item of the user, kept negative (after the filter)",
    "no_item_share_before_filter": "names no item (genre words only, the user, a field name), first draw",
    "no_item_share_after_filter": "names no item, kept negative (after the filter)",
    "false_hard_negative_share": "nearest non-train catalogue item is a held-out positive of the user",
    "false_hard_negative_chance": "the same for a uniform non-train item (chance)",
    "distinct_texts_share": "distinct negatives (case-folded texts) over valid ones",
    "invalid_share": "answers without a usable negative (invalid JSON, or rejected at every draw)",
    "non_catalogue_share": "valid negatives naming no catalogue title (other films, descriptions, inventions)",
    "grounding_distance_mean": "1 - cosine of a negative with its nearest non-train catalogue item",
}


def report(q: dict) -> dict:
    """The REPORT measures of a quality dict (invalid and non-catalogue shares derived from it)."""
    derived = {"invalid_share": 1 - q["valid_json_rate"] if q.get("valid_json_rate") is not None else None,
               "non_catalogue_share": 1 - q["catalogue_item_share"] if q.get("catalogue_item_share") is not None
               else None}
    return {k: derived[k] if k in derived else q.get(k) for k in REPORT}


def copy_examples(data, rec: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to n records whose first draw the draw filter rejected: the rejected draws and what was kept."""
    hit = rec[[isinstance(r, list) and len(r) > 0 for r in rec.get("rejected", [None] * len(rec))]].head(n)
    return pd.DataFrame({"user": hit["user"].astype(int), "positive": [title_of(data, int(i)) for i in hit["item"]],
                         "rejected draws": [" | ".join(r) for r in hit["rejected"]],
                         "kept negative": hit["text"].where(hit["ok"].astype(bool), "(none: every draw rejected)")})


def embed_and_ground(data, ok: pd.DataFrame, encoder, pool: int, seed: int) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Valid records `ok` embedded, grounded to their nearest catalogue items (the user's training items excluded)
    and measured: (their vectors, the grounded frame: user, item, text, nearest, similarity, pool; `quality`)."""
    neg_emb = encoder.encode(ok["text"].tolist()) if len(ok) else np.zeros((0, encoder.dim), np.float32)
    item_emb = item_embeddings(data, encoder)
    nearest, sim, top, nearest_any = ground(neg_emb, ok["user"].to_numpy(int), item_emb, data, pool)
    q = quality(data, ok, neg_emb, short_embeddings(data, encoder), nearest, nearest_any, top, seed=seed,
                similarity=sim)
    grounded = pd.DataFrame({"user": ok["user"].astype(int), "item": ok["item"].astype(int), "text": ok["text"],
                             "nearest": nearest.astype(int), "similarity": sim.astype(float),
                             "pool": [list(map(int, p)) for p in top], "sample": sample_column(ok)})
    return neg_emb, grounded, q


def sample_column(frame: pd.DataFrame) -> np.ndarray:
    """Each record's sample index (0 where records have none: one sample)."""
    if "sample" not in frame:
        return np.zeros(len(frame), np.int64)
    return frame["sample"].fillna(0).to_numpy(np.int64)


def read_samples(path: Path, contexts: list[str], cols: list[str] = RECORD_COLUMNS) -> pd.DataFrame:
    """The records of each context tag (sample k: contexts[k]), with their sample index."""
    frames = [read_negatives(path, c, cols).assign(sample=k) for k, c in enumerate(contexts)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def generated_records(data, llm: str, budget: Budget, pair_seed: int, records: pd.DataFrame, allow_missing: bool,
                      command: str, samples: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(every generated record of the budget's pairs and `samples` samples, the valid ones, pair-samples never
    generated). Missing ones (an interrupted run) are an error unless allowed, and are counted apart from
    invalid answers."""
    pairs = select_pairs(data, budget, pair_seed).merge(pd.DataFrame({"sample": range(samples)}), how="cross")
    records = records.assign(sample=sample_column(records))
    rec = pairs.merge(records, on=["user", "item", "sample"], how="left")
    missing = int(rec["ok"].isna().sum())
    if missing and not allow_missing:
        raise MissingInputError(f"{missing} of {len(rec)} pair-samples of budget {budget.spec} have no generated "
                                f"output in {sns_dir(data.name, llm, split_id_of(data))}: run `{command} --budget "
                                f"{budget.spec} {split_options(data)}` first (or build from what exists with "
                                f"--allow-missing)")
    rec = rec[rec["ok"].notna()].reset_index(drop=True)
    return rec, rec[rec["ok"].astype(bool)].reset_index(drop=True), missing


def build_artifacts(data, llm: str, budget: Budget, encoder, pair_seed: int = 0, pool: int = 20,
                    extra_meta: dict | None = None, allow_missing: bool = False, contexts: list[str] = ()) -> dict:
    """Embed, ground and measure the negatives of a budget, sample k made with context tag contexts[k]; write
    bank (rows in sample blocks, `NegativeBank.samples`) / grounded / quality / meta (the contexts in order)."""
    out = sns_dir(data.name, llm, split_id_of(data))
    pairs = select_pairs(data, budget, pair_seed)
    command = f"hnlm sns --dataset {data.name} --llm {llm} --pair-seed {pair_seed}" + (
        f" --context {parse_tag(contexts[0])[0]}" if contexts else "")
    records = read_samples(out / "negatives.jsonl", list(contexts)) if contexts else read_negatives(
        out / "negatives.jsonl")
    rec, ok, missing = generated_records(data, llm, budget, pair_seed, records, allow_missing, command,
                                         max(len(contexts), 1))
    neg_emb, grounded, q = embed_and_ground(data, ok, encoder, pool, pair_seed)
    q.update(copy_shares(data, answered(rec)))
    q.update({"budget_pairs": int(len(pairs)), "samples": max(len(contexts), 1), "not_generated": missing,
              "coverage_users": int(ok["user"].nunique()) / data.n_users,
              "requested": int(len(rec)), "valid_json_rate": len(ok) / max(len(rec), 1),
              "invalid": int(len(rec) - len(ok)), "truncated_to_20_words": int(ok["truncated"].sum()),
              "invalid_reasons": rec.loc[~rec["ok"].astype(bool), "reason"].value_counts().to_dict()})
    tag = budget.tag
    NegativeBank(neg_emb, ok["user"].to_numpy(np.int64), ok["item"].to_numpy(np.int64),
                 source=f"sns:{llm}:{budget.spec}", samples=sample_column(ok)).save(out / f"bank_{tag}.npz")
    with atomic_path(out / f"grounded_{tag}.parquet") as tmp:
        grounded.to_parquet(tmp)
    meta = {"dataset": data.name, "llm": llm, "budget": budget.spec, "pair_seed": pair_seed,
            "split_seed": split_seed_of(data), "train_fingerprint": train_fingerprint(data),
            "encoder": getattr(encoder, "identity", type(encoder).__name__), "grounding_pool": pool,
            "samples": max(len(contexts), 1), "sample_contexts": list(contexts), **(extra_meta or {})}
    write_text(out / f"quality_{tag}.json", json.dumps(q, indent=2))
    write_text(out / f"meta_{tag}.json", json.dumps(meta, indent=2))
    return {"quality": q, "meta": meta, "folder": str(out)}


# ---------------------------------------------------------------- loading for training

def _artifact(data, llm: str, budget: Budget, name: str) -> Path:
    """An artefact of `data`'s split, checked against its training split (the fingerprint in meta_<budget>)."""
    out = sns_dir(data.name, llm, split_id_of(data))
    path = out / name.format(tag=budget.tag)
    command = f"hnlm sns --dataset {data.name} --llm {llm} --budget {budget.spec} {split_options(data)}"
    if not path.exists():
        raise MissingInputError(f"{path} is missing: run `{command}` first")
    meta = json.loads((out / f"meta_{budget.tag}.json").read_text())
    check_split(path, meta["train_fingerprint"], train_fingerprint(data), command)
    return path


def load_meta(data, llm: str, budget: Budget) -> dict:
    _artifact(data, llm, budget, "bank_{tag}.npz")
    out = sns_dir(data.name, llm, split_id_of(data))
    meta = json.loads((out / f"meta_{budget.tag}.json").read_text())
    meta["quality"] = json.loads((out / f"quality_{budget.tag}.json").read_text())
    return meta


def load_bank(data, llm: str, budget: Budget) -> NegativeBank:
    """The text-embedding bank of a budget, for `AlignmentExtension`."""
    path = _artifact(data, llm, budget, "bank_{tag}.npz")
    meta = load_meta(data, llm, budget)
    q = meta.pop("quality")
    return NegativeBank.load(path, f"sns:{llm}:{budget.spec}",
                             {"budget": budget.spec, "llm": llm, "encoder": meta["encoder"],
                              "valid_json_rate": q["valid_json_rate"], "context": meta.get("context"),
                              "samples": meta.get("samples", 1), "sample_contexts": meta.get("sample_contexts")})


def load_grounded(data, llm: str, budget: Budget) -> pd.DataFrame:
    return pd.read_parquet(_artifact(data, llm, budget, "grounded_{tag}.parquet"))


# ---------------------------------------------------------------- shipped negatives, else cached, else made

SHIPPED_KIND = "sns-negatives"   # hnlm.semantic.outputs kind of the negatives shipped in outputs/
SHIPPED_FIELDS = ("ok", "text", "reasoning", "reason", "words", "truncated", "tries", "rejected")
FIELD_DEFAULTS = {"tries": 1, "rejected": []}   # of records shipped before the draw filter existed


def shipped_slot(builder: PromptBuilder, split_id: str) -> str:
    """One slot per sample: its context tag names its decoding, sampling seed and draw filter."""
    return f"{safe_name(builder.tag)}_split-{split_id}"


def shipped_key(data, backend, builder: PromptBuilder, split_seed: int) -> dict:
    """What identifies shipped negatives besides their prompts, from the objects that make them: the builder's
    schema, decoding budget, template and context tag, the backend's weights and decoding (sampled: with the
    sample's seed), the training split; a sample other than 0 records its index."""
    schema = builder.json_schema()
    _, total = field_budgets(schema, builder.max_new_tokens)
    decoding = backend.decoding(total)
    if "seed" in decoding:
        decoding["seed"] = builder.draw_seed
    key = {"model": backend.weights_identity, "schema": schema, "decoding": decoding,
           "max_words": MAX_WORDS, "context": builder.tag, "prompt_seed": builder.seed,
           "templates": outputs.template_hashes([builder.template]),
           "split": train_fingerprint(data), "split_seed": split_seed}
    return {**key, "sample": builder.sample} if builder.sample else key


def prompt_hashes(builder: PromptBuilder, pairs: pd.DataFrame) -> dict:
    """{(user, item): prompt_sha} of the pairs' prompts."""
    return {(int(u), int(i)): outputs.prompt_sha(builder.messages(int(u), int(i)))
            for u, i in zip(pairs["user"], pairs["item"])}


def lookup_shipped(data, llm: str, builder: PromptBuilder, pairs: pd.DataFrame, split_seed: int,
                   backend=None) -> outputs.Lookup:
    """The shipped negatives of `pairs` made with these prompts and settings (`backend`: the one that would make
    them, default `llm`'s with the builder's decoding; made only when something is shipped in the slot)."""
    slot = shipped_slot(builder, split_id_of(data))
    none = outputs.not_shipped(SHIPPED_KIND, data.name, llm, slot)
    if none is not None:
        return none
    backend = backend or make_backend(llm, progress=False, **builder.decoding.backend_options())
    return outputs.lookup(SHIPPED_KIND, data.name, llm, slot, shipped_key(data, backend, builder, split_seed),
                          prompt_hashes(builder, pairs), id_fields=("user", "item"))


def shipped_fields(record) -> dict:
    """SHIPPED_FIELDS of a record (a dict or a row), FIELD_DEFAULTS where it has none."""
    get = record.get if isinstance(record, dict) else lambda f, d=None: getattr(record, f, d)
    values = {f: plain(get(f, None)) for f in SHIPPED_FIELDS}
    return {f: FIELD_DEFAULTS[f] if v is None and f in FIELD_DEFAULTS else v for f, v in values.items()}


def copy_into_cache(rows: list[dict], folder: Path, builder: PromptBuilder) -> int:
    """Append shipped records to artifacts' negatives.jsonl where it lacks them or holds other answers
    (the last record of a pair wins), so grounding and banks are built from the shipped answers."""
    have = read_negatives(folder / "negatives.jsonl", builder.tag)
    known = {(int(r.user), int(r.item)): shipped_fields(r) for r in have.itertuples()}
    new = [r for r in rows if known.get((r["user"], r["item"])) != shipped_fields(r)]
    if new:
        append_lines(folder / "negatives.jsonl", [json.dumps({"user": r["user"], "item": r["item"], **shipped_fields(r),
                                                              "context": builder.tag, "sample": builder.sample})
                                                  for r in new])
    return len(new)


def superseded_records(data, llm: str, builder: PromptBuilder, pairs: pd.DataFrame, split_seed: int,
                       backend) -> dict[tuple[int, int, int], dict]:
    """{(sample, user, item): record} of the builder's sample shipped under a SUPERSEDED_FILTERS rule with the same
    prompts and decoding: the same draws (a try's seed does not depend on the rule), judged by a laxer filter."""
    found = {}
    for rule in SUPERSEDED_FILTERS if builder.tries else ():
        tag = builder.tag.rsplit("|", 1)[1].replace(f"-{COPY_FILTER}", f"-{rule}")
        older = type(builder)(data, builder.context, builder.profiles_llm, builder.seed, tag, builder.sample)
        rows = lookup_shipped(data, llm, older, pairs, split_seed, backend).rows or []
        found.update({(builder.sample, r["user"], r["item"]): r for r in rows})
    return found


def obtain_negatives(data, llm: str, pairs: pd.DataFrame, builders: list[PromptBuilder], split_seed: int,
                     chunk: int = 32) -> dict:
    """The negatives of `pairs`, every sample of `builders` (`sample_builders`), in artifacts' negatives.jsonl:
    shipped samples whose prompts match are copied there, the others' missing records are generated together
    (LLM cache, then the model). Returns the generation counts over pair-samples, with the rate of the model."""
    backend = make_backend(llm, **builders[0].decoding.backend_options())
    folder = sns_dir(data.name, llm, split_id_of(data))
    todo, reasons, shipped, made_with, prior = [], [], 0, None, {}
    for b in builders:
        found = lookup_shipped(data, llm, b, pairs, split_seed, backend)
        if found.shipped is None:   # a partly shipped output (blocks of users) is resumed, not made again
            copied = copy_into_cache(found.rows, folder, b) if found.rows else 0
            prior.update(superseded_records(data, llm, b, pairs, split_seed, backend))
            todo.append(b)
            reasons.append(found.reason + (f"; its {copied} fitting records copied" if copied else ""))
            continue
        copied = copy_into_cache(found.rows, folder, b)
        outputs.report(SHIPPED_KIND, f"{found.shipped.line(len(found.rows))}; {copied} records copied into "
                                     f"{folder / 'negatives.jsonl'}")
        shipped, made_with = shipped + len(found.rows), found.shipped.made_with
    gen = {"generated": 0, "rejudged": 0, "from_llm_cache": 0, "redrawn": 0, "already_done": 0}
    t0 = time.perf_counter()
    if todo:
        gen = generate_negatives(data, backend, pairs, todo, folder, chunk=chunk, prior=prior)
        outputs.report(SHIPPED_KIND, f"{gen['already_done']} already in {folder / 'negatives.jsonl'}, "
                                     f"{gen['rejudged']} re-judged from draws of a superseded filter, "
                                     f"{gen['from_llm_cache']} from the LLM cache, generated "
                                     f"{gen['generated'] - gen['from_llm_cache']} and {gen['redrawn']} redraws of "
                                     f"copies ({'; '.join(dict.fromkeys(reasons))})")
    seconds = time.perf_counter() - t0
    made = gen["generated"] - gen["from_llm_cache"] + gen["redrawn"]
    return {**gen, "requested": len(pairs) * len(builders), "already_done": gen["already_done"] + shipped,
            "shipped": shipped, "samples": len(builders), "made_with": made_with,
            "backend": backend.identity if todo else found.shipped.manifest["key"]["model"],
            "seconds": round(seconds, 1) if made else None, "prompts_per_s": made / seconds if made else None,
            "tokens_per_s": backend.tokens_out / seconds if made else None}


def obtain_built(data, llm: str, budget: Budget, context: str = "profile", pair_seed: int = 0,
                 encoder: str = "minilm", pool: int = 20, decoding: Decoding = SAMPLED) -> None:
    """Make sure module 2's bank, grounding and quality of these settings are in artifacts/, without an LLM:
    shipped negatives (of every sample of `decoding`) whose prompts match are copied into negatives.jsonl (then
    the bank is built from them); else a bank built there with these contexts and pair seed is kept; else it is
    built from the records there, and missing pairs are an error naming the `hnlm sns` that generates them."""
    builders = sample_builders(data, context, llm, pair_seed, decoding)
    folder = sns_dir(data.name, llm, split_id_of(data))
    pairs = select_pairs(data, budget, pair_seed)
    found = [lookup_shipped(data, llm, b, pairs, split_seed_of(data)) for b in builders]
    copied = sum(copy_into_cache(f.rows, folder, b) for f, b in zip(found, builders) if f.shipped is not None)
    meta_path = folder / f"meta_{budget.tag}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tags = [b.tag for b in builders]
    reasons = "; ".join(dict.fromkeys(f.reason for f in found))
    if not copied and (meta.get("sample_contexts"), meta.get("pair_seed")) == (tags, pair_seed):
        outputs.report(SHIPPED_KIND, f"bank built in {folder} ({reasons})")
        return
    shipped = [f.shipped.line(len(f.rows)) for f in found if f.shipped is not None]
    outputs.report(SHIPPED_KIND, f"building the bank from {'; '.join(shipped) or folder / 'negatives.jsonl'} "
                                 f"({reasons})")
    build_artifacts(data, llm, budget, get_text_encoder(encoder), pair_seed, pool,
                    extra_meta={**builders[0].describe(), "decoding": decoding_meta(decoding)}, contexts=tags)


def decoding_meta(decoding: Decoding) -> dict:
    return {"temperature": decoding.temperature, "top_p": decoding.top_p, "seed": decoding.seed,
            "samples": decoding.samples, "copy_filter_tries": decoding.tries}


def records_to_ship(data, llm: str, builder: PromptBuilder, pairs: pd.DataFrame) -> tuple[list[dict], Path]:
    """The generated records of `pairs` (of the builder's sample) in artifacts/ as they ship (with their prompt
    hashes; fewer than the pairs while generation is incomplete), and the file they come from."""
    path = sns_dir(data.name, llm, split_id_of(data)) / "negatives.jsonl"
    done = pairs.merge(read_negatives(path, builder.tag), on=["user", "item"])
    shas = prompt_hashes(builder, pairs)
    return [{"user": int(r.user), "item": int(r.item), **shipped_fields(r),
             "prompt_sha": shas[(int(r.user), int(r.item))]} for r in done.itertuples()], path


def plain(value):
    """numpy scalars and NaN (pandas' missing values) as JSON values."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def parse_tag(tag: str) -> tuple[str, str, str]:
    """(context, profiles LLM or "", decoding) of a PromptBuilder.tag
    "<history | profile:<llm>>|<template>-<prompt hash>|<greedy | sample-...>[-nocopy<tries>-<filter>]"."""
    parts = tag.split("|")
    context, _, profiles_llm = parts[0].partition(":")
    return context, profiles_llm, parts[-1]


def shipped_builder(data, key: dict) -> PromptBuilder:
    """The PromptBuilder that made shipped negatives of key `key` (its context tag, sample and prompt seed)."""
    context, profiles_llm, decoding = parse_tag(key["context"])
    return PromptBuilder(data, context, profiles_llm or None, seed=key.get("prompt_seed", 0), decoding=decoding,
                         sample=key.get("sample", 0))


# ---------------------------------------------------------------- candidate-list variant

PICK_CANDIDATES = 20   # real catalogue items listed per prompt
PICK_MAX = 5           # the most items the LLM may pick
PICK_COLUMNS = ["user", "item", "ok", "candidates", "picked", "out_of_range", "reasoning", "reason", "context"]


def training_pool(data) -> np.ndarray:
    """Items with at least one training interaction: candidate lists never show an item known only from
    valid/test data."""
    return np.flatnonzero(np.asarray(data.train.sum(axis=0)).ravel() > 0)


def pick_schema(n_candidates: int = PICK_CANDIDATES, max_picks: int = PICK_MAX) -> dict:
    return {"type": "object",
            "properties": {"reasoning": {"type": "string", "x-max-tokens": FIELD_TOKENS["reasoning"]},
                           "not_enjoy": {"type": "array", "maxItems": max_picks,
                                         "items": {"type": "integer", "minimum": 1, "maximum": n_candidates}}},
            "required": ["reasoning", "not_enjoy"], "additionalProperties": False}


class PickPromptBuilder(PromptBuilder):
    """Prompts of the candidate-list variant: the user, the liked item, and PICK_CANDIDATES numbered items
    drawn uniformly (seeded by pair) from the training pool minus the user's training items; the answer is
    the numbers of those the user would not enjoy, stored as item ids."""

    template_prefix = "sns_pick"
    records_file = "picks.jsonl"
    columns = PICK_COLUMNS
    max_new_tokens = FIELD_TOKENS["reasoning"] + 3 * PICK_MAX + 24

    def __init__(self, data, context: str = "profile", profiles_llm: str | None = None, seed: int = 0,
                 decoding: str = "greedy", sample: int = 0):
        self.pool = training_pool(data)
        super().__init__(data, context, profiles_llm, seed, decoding, sample)

    def json_schema(self) -> dict:
        return pick_schema()

    @property
    def draw_filter(self) -> None:
        """Picks are ids of real items of the list: no draw filter."""
        return None

    def candidates(self, user: int, item: int) -> np.ndarray:
        unseen = np.setdiff1d(self.pool, self.data.train_items(user))
        rng = np.random.default_rng([self.seed, user, item])
        return rng.choice(unseen, size=min(PICK_CANDIDATES, len(unseen)), replace=False)

    def messages(self, user: int, item: int) -> list[dict]:
        listing = "\n".join(f"{n}. {short_text(self.data, int(j))}"
                            for n, j in enumerate(self.candidates(user, item), 1))
        text = self.user_template.format(user_profile=self.user_text(user), item_title=title_of(self.data, item),
                                         item_profile=self.item_text(item), candidates=listing, max_picks=PICK_MAX)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def parse(self, result, user: int, item: int) -> dict:
        cands = self.candidates(user, item)
        numbers = (result.value or {}).get("not_enjoy") if result.ok else None
        if not isinstance(numbers, list):
            return {"ok": False, "candidates": cands.tolist(), "picked": [], "out_of_range": 0,
                    "reasoning": None, "reason": result.reason or "invalid"}
        valid = [n for n in numbers if isinstance(n, int) and 1 <= n <= len(cands)]
        picked = list(dict.fromkeys(int(cands[n - 1]) for n in valid))  # in order, each once
        return {"ok": True, "candidates": cands.tolist(), "picked": picked, "out_of_range": len(numbers) - len(valid),
                "reasoning": str(result.value.get("reasoning", "")), "reason": None}


def pick_quality(data, rec: pd.DataFrame, seed: int = 0) -> tuple[dict, list[list[int]]]:
    """Quality of valid pick records and their control (as many items of the same list picked uniformly).

    false_hard_negative_share: picked items that are held-out items of the user, over all picks; its chance
    is the held-out share of the lists, weighted by picks; the control's share is measured on its picks.
    distinct_negative_share: distinct picked items over all picks. Held-out items are read here only."""
    rng = np.random.default_rng(seed)
    control, held_llm, held_ctrl, chance, picks = [], 0, 0, 0.0, 0
    for u, cands, picked in zip(rec["user"], rec["candidates"], rec["picked"]):
        held = set(data.heldout_items(int(u)).tolist())
        ctrl = rng.choice(cands, size=len(picked), replace=False).tolist() if len(picked) else []
        control.append([int(j) for j in ctrl])
        held_llm += sum(j in held for j in picked)
        held_ctrl += sum(j in held for j in ctrl)
        chance += len(picked) * sum(j in held for j in cands) / max(len(cands), 1)
        picks += len(picked)
    flat = [j for p in rec["picked"] for j in p]
    flat_ctrl = [j for p in control for j in p]
    n = max(picks, 1)
    return {"n_valid": int(len(rec)), "picks": int(picks), "picks_per_answer": picks / max(len(rec), 1),
            "answers_without_pick": int(sum(len(p) == 0 for p in rec["picked"])),
            "false_hard_negative_share": held_llm / n, "false_hard_negative_chance": chance / n,
            "control_false_hard_negative_share": held_ctrl / n,
            "distinct_negative_share": len(set(flat)) / n,
            "control_distinct_negative_share": len(set(flat_ctrl)) / n}, control


def build_pick_artifacts(data, llm: str, budget: Budget, builder: PickPromptBuilder, pair_seed: int = 0,
                         allow_missing: bool = False) -> dict:
    """picks_<budget>.parquet (user, item, candidates, picked, control) and quality_pick_<budget>.json."""
    out = sns_dir(data.name, llm, split_id_of(data))
    pairs = select_pairs(data, budget, pair_seed)
    rec, ok, missing = generated_records(data, llm, budget, pair_seed,
                                         read_negatives(out / builder.records_file, builder.tag, PICK_COLUMNS),
                                         allow_missing, "hnlm sns --variant pick")
    q, control = pick_quality(data, ok, seed=pair_seed)
    q.update({"budget_pairs": int(len(pairs)), "not_generated": missing, "requested": int(len(rec)),
              "valid_json_rate": len(ok) / max(len(rec), 1), "invalid": int(len(rec) - len(ok)),
              "numbers_out_of_range": int(ok["out_of_range"].sum()) if len(ok) else 0,
              "candidates_per_list": PICK_CANDIDATES, "context": builder.tag})
    with atomic_path(out / f"picks_{budget.tag}.parquet") as tmp:
        pd.DataFrame({"user": ok["user"].astype(int), "item": ok["item"].astype(int),
                      "candidates": ok["candidates"], "picked": ok["picked"], "control": control}).to_parquet(tmp)
    write_text(out / f"quality_pick_{budget.tag}.json", json.dumps(q, indent=2))
    return {"quality": q, "folder": str(out)}
