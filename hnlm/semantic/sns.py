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

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

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
RECORD_COLUMNS = ["user", "item", "ok", "text", "reasoning", "reason", "words", "truncated", "context"]


# ---------------------------------------------------------------- prompts

def sampling_tag(temperature: float, top_p: float, seed: int) -> str:
    """Decoding part of a record's context tag: "greedy", or the sampling settings."""
    return "greedy" if temperature <= 0 else f"sample-t{temperature:g}-p{top_p:g}-s{seed}"


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

    def __init__(self, data, context: str = "profile", profiles_llm: str | None = None, seed: int = 0,
                 decoding: str = "greedy"):
        self.data = data
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


def generate_negatives(data, backend, pairs: pd.DataFrame, builder: PromptBuilder, out: Path,
                       chunk: int = 32, max_new_tokens: int | None = None, order_seed: int = 0) -> dict:
    """Generate the pairs missing from out/<builder.records_file>, appending each chunk as it finishes."""
    path = out / builder.records_file
    done = read_negatives(path, builder.tag, builder.columns)
    have = set(zip(done["user"].astype(int), done["item"].astype(int)))
    todo = [(int(u), int(i)) for u, i in zip(pairs["user"], pairs["item"]) if (int(u), int(i)) not in have]
    # Users in a seeded random order: an interrupted run leaves an unbiased subset of users covered.
    rank = np.random.default_rng(order_seed).permutation(data.n_users)
    todo.sort(key=lambda pair: rank[pair[0]])
    budget = max_new_tokens or builder.max_new_tokens
    cached = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        results = backend.generate_json([builder.messages(u, i) for u, i in part], builder.json_schema(),
                                        max_new_tokens=budget,
                                        desc=f"SNS {start + len(part)}/{len(todo)}")
        cached += sum(bool(getattr(res, "cached", False)) for res in results)
        append_lines(path, [json.dumps({"user": u, "item": i, **builder.parse(res, u, i), "context": builder.tag})
                            for (u, i), res in zip(part, results)])
    fallbacks = builder.profile_fallbacks(pairs)
    if fallbacks["pairs_item_without_profile"]:
        print(f"SNS: {fallbacks['pairs_item_without_profile']} pairs ({fallbacks['items_without_profile']} items) "
              f"have no item profile: their genres stand in for it", file=sys.stderr)
    return {"requested": len(pairs), "already_done": len(pairs) - len(todo), "generated": len(todo),
            "from_llm_cache": cached, **fallbacks}


def sns_schema() -> dict:
    """The JSON schema, with per-field token budgets where the LLM layer reads them."""
    schema = json.loads(json.dumps(SNS_SCHEMA))
    for name, tokens in FIELD_TOKENS.items():
        schema["properties"][name]["x-max-tokens"] = tokens
    return schema


# ---------------------------------------------------------------- embedding, grounding, quality

_TITLE_ARTICLE = re.compile(r"^(.*), (the|a|an|la|le|les|il|el|das|der|die)$", re.I)


def norm_title(title: str) -> str:
    """'Godfather, The (1972)' -> 'the godfather' (for matching titles inside generated text)."""
    t = re.sub(r"\s*\(.*?\)\s*", " ", str(title)).strip()
    m = _TITLE_ARTICLE.match(t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", t.lower()).split())


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


def quality(data, rec: pd.DataFrame, neg_emb: np.ndarray, short_emb: np.ndarray, nearest: np.ndarray,
            nearest_any: np.ndarray, top: np.ndarray, seed: int = 0) -> dict:
    """Quality of the valid negatives `rec` (rows aligned with neg_emb); held-out items read here only.

    Similarities (`similarity_to_positive`) compare like with like: a generated text (a title and a short
    description) against the positive's short text (title and genres, `short_emb`), with two baselines.
    Distinct shares: distinct generated texts (case-folded), and distinct nearest catalogue items (grounding),
    over valid negatives. false_hard_negative_share (the nearest non-train item is a held-out item of the
    user) comes with its chance level (a uniform non-train item)."""
    users, items = rec["user"].to_numpy(int), rec["item"].to_numpy(int)
    titles = [norm_title(t) for t in data.items["title"].fillna("")]
    names_train = names_pos = held_near = held_pool = 0
    chance_near = 0.0
    in_train_any = 0
    for r, (u, i, text) in enumerate(zip(users, items, rec["text"])):
        train = data.train_items(u)
        held = set(data.heldout_items(u).tolist())
        names_train += names_any(text, [titles[j] for j in train])
        names_pos += names_any(text, [titles[i]])
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
    }


def embed_and_ground(data, ok: pd.DataFrame, encoder, pool: int, seed: int) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Valid records `ok` embedded, grounded to their nearest catalogue items (the user's training items excluded)
    and measured: (their vectors, the grounded frame: user, item, text, nearest, similarity, pool; `quality`)."""
    neg_emb = encoder.encode(ok["text"].tolist()) if len(ok) else np.zeros((0, encoder.dim), np.float32)
    item_emb = item_embeddings(data, encoder)
    nearest, sim, top, nearest_any = ground(neg_emb, ok["user"].to_numpy(int), item_emb, data, pool)
    q = quality(data, ok, neg_emb, short_embeddings(data, encoder), nearest, nearest_any, top, seed=seed)
    grounded = pd.DataFrame({"user": ok["user"].astype(int), "item": ok["item"].astype(int), "text": ok["text"],
                             "nearest": nearest.astype(int), "similarity": sim.astype(float),
                             "pool": [list(map(int, p)) for p in top]})
    return neg_emb, grounded, q


def generated_records(data, llm: str, budget: Budget, pair_seed: int, records: pd.DataFrame, allow_missing: bool,
                      command: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(every generated record of the budget's pairs, the valid ones, pairs never generated). Missing pairs
    (an interrupted run) are an error unless allowed, and are counted apart from invalid answers."""
    pairs = select_pairs(data, budget, pair_seed)
    rec = pairs.merge(records, on=["user", "item"], how="left")
    missing = int(rec["ok"].isna().sum())
    if missing and not allow_missing:
        raise MissingInputError(f"{missing} of {len(rec)} pairs of budget {budget.spec} have no generated output "
                                f"in {sns_dir(data.name, llm, split_id_of(data))}: run `{command} --budget "
                                f"{budget.spec} {split_options(data)}` first (or build from what exists with "
                                f"--allow-missing)")
    rec = rec[rec["ok"].notna()].reset_index(drop=True)
    return rec, rec[rec["ok"].astype(bool)].reset_index(drop=True), missing


def build_artifacts(data, llm: str, budget: Budget, encoder, pair_seed: int = 0, pool: int = 20,
                    extra_meta: dict | None = None, allow_missing: bool = False, context: str | None = None) -> dict:
    """Embed, ground and measure the negatives of a budget; write bank / grounded / quality / meta."""
    out = sns_dir(data.name, llm, split_id_of(data))
    pairs = select_pairs(data, budget, pair_seed)
    command = f"hnlm sns --dataset {data.name} --llm {llm} --pair-seed {pair_seed}" + (
        f" --context {parse_tag(context)[0]}" if context else "")
    rec, ok, missing = generated_records(data, llm, budget, pair_seed, read_negatives(out / "negatives.jsonl", context),
                                         allow_missing, command)
    neg_emb, grounded, q = embed_and_ground(data, ok, encoder, pool, pair_seed)
    q.update({"budget_pairs": int(len(pairs)), "not_generated": missing,
              "coverage_users": int(ok["user"].nunique()) / data.n_users,
              "requested": int(len(rec)), "valid_json_rate": len(ok) / max(len(rec), 1),
              "invalid": int(len(rec) - len(ok)), "truncated_to_20_words": int(ok["truncated"].sum()),
              "invalid_reasons": rec.loc[~rec["ok"].astype(bool), "reason"].value_counts().to_dict()})
    tag = budget.tag
    NegativeBank(neg_emb, ok["user"].to_numpy(np.int64), ok["item"].to_numpy(np.int64),
                 source=f"sns:{llm}:{budget.spec}").save(out / f"bank_{tag}.npz")
    with atomic_path(out / f"grounded_{tag}.parquet") as tmp:
        grounded.to_parquet(tmp)
    meta = {"dataset": data.name, "llm": llm, "budget": budget.spec, "pair_seed": pair_seed,
            "split_seed": split_seed_of(data), "train_fingerprint": train_fingerprint(data),
            "encoder": getattr(encoder, "identity", type(encoder).__name__), "grounding_pool": pool,
            **(extra_meta or {})}
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
                              "valid_json_rate": q["valid_json_rate"], "context": meta.get("context")})


def load_grounded(data, llm: str, budget: Budget) -> pd.DataFrame:
    return pd.read_parquet(_artifact(data, llm, budget, "grounded_{tag}.parquet"))


# ---------------------------------------------------------------- shipped negatives, else cached, else made

SHIPPED_KIND = "sns-negatives"   # hnlm.semantic.outputs kind of the negatives shipped in outputs/
SHIPPED_FIELDS = ("ok", "text", "reasoning", "reason", "words", "truncated")


def shipped_slot(builder: PromptBuilder, split_id: str) -> str:
    return f"{safe_name(builder.tag)}_split-{split_id}"


def shipped_key(data, backend, builder: PromptBuilder, split_seed: int) -> dict:
    """What identifies shipped negatives besides their prompts, from the objects that make them: the builder's
    schema, decoding budget, template and context tag, the backend's weights and decoding, the training split."""
    schema = builder.json_schema()
    _, total = field_budgets(schema, builder.max_new_tokens)
    return {"model": backend.weights_identity, "schema": schema, "decoding": backend.decoding(total),
            "max_words": MAX_WORDS, "context": builder.tag, "prompt_seed": builder.seed,
            "templates": outputs.template_hashes([builder.template]),
            "split": train_fingerprint(data), "split_seed": split_seed}


def prompt_hashes(builder: PromptBuilder, pairs: pd.DataFrame) -> dict:
    """{(user, item): prompt_sha} of the pairs' prompts."""
    return {(int(u), int(i)): outputs.prompt_sha(builder.messages(int(u), int(i)))
            for u, i in zip(pairs["user"], pairs["item"])}


def lookup_shipped(data, llm: str, builder: PromptBuilder, pairs: pd.DataFrame, split_seed: int,
                   backend=None) -> outputs.Lookup:
    """The shipped negatives of `pairs` made with these prompts and settings (`backend`: the one that would make
    them, default `llm`'s; made only when something is shipped in the slot)."""
    slot = shipped_slot(builder, split_id_of(data))
    none = outputs.not_shipped(SHIPPED_KIND, data.name, llm, slot)
    if none is not None:
        return none
    key = shipped_key(data, backend or make_backend(llm, progress=False), builder, split_seed)
    return outputs.lookup(SHIPPED_KIND, data.name, llm, slot, key, prompt_hashes(builder, pairs),
                          id_fields=("user", "item"))


def copy_into_cache(rows: list[dict], folder: Path, context: str) -> int:
    """Append shipped records to artifacts' negatives.jsonl where it lacks them or holds other answers
    (the last record of a pair wins), so grounding and banks are built from the shipped answers."""
    have = read_negatives(folder / "negatives.jsonl", context)
    known = {(int(r.user), int(r.item)): tuple(getattr(r, f) for f in SHIPPED_FIELDS) for r in have.itertuples()}
    new = [r for r in rows if known.get((r["user"], r["item"])) != tuple(r[f] for f in SHIPPED_FIELDS)]
    if new:
        append_lines(folder / "negatives.jsonl", [json.dumps({"user": r["user"], "item": r["item"],
                                                              **{f: r[f] for f in SHIPPED_FIELDS}, "context": context})
                                                  for r in new])
    return len(new)


def obtain_negatives(data, llm: str, pairs: pd.DataFrame, builder: PromptBuilder, split_seed: int,
                     chunk: int = 32) -> dict:
    """The negatives of `pairs` in artifacts' negatives.jsonl: shipped ones whose prompts match are copied there,
    else the missing pairs are generated (LLM cache, then the model). Returns the generation counts."""
    backend = make_backend(llm)
    folder = sns_dir(data.name, llm, split_id_of(data))
    found = lookup_shipped(data, llm, builder, pairs, split_seed, backend)
    if found.shipped is not None:
        copied = copy_into_cache(found.rows, folder, builder.tag)
        outputs.report(SHIPPED_KIND, f"{found.shipped.line(len(found.rows))}; {copied} records copied into "
                                     f"{folder / 'negatives.jsonl'}")
        return {"requested": len(pairs), "already_done": len(pairs), "generated": 0, "from_llm_cache": 0,
                "shipped": len(found.rows), "backend": found.shipped.manifest["key"]["model"],
                "made_with": found.shipped.made_with, "seconds": None, "prompts_per_s": None, "tokens_per_s": None}
    gen = generate_negatives(data, backend, pairs, builder, folder, chunk=chunk)
    outputs.report(SHIPPED_KIND, f"{gen['already_done']} already in {folder / 'negatives.jsonl'}, "
                                 f"{gen['from_llm_cache']} from the LLM cache, generated "
                                 f"{gen['generated'] - gen['from_llm_cache']} ({found.reason})")
    return {**gen, "backend": backend.identity, "shipped": 0,
            **{k: backend.last_stats.get(k) for k in ("seconds", "prompts_per_s", "tokens_per_s")}}


def obtain_built(data, llm: str, budget: Budget, context: str = "profile", pair_seed: int = 0,
                 encoder: str = "minilm", pool: int = 20) -> None:
    """Make sure module 2's bank, grounding and quality of these settings are in artifacts/, without an LLM:
    shipped negatives whose prompts match are copied into negatives.jsonl (then the bank is built from them);
    else a bank built there with this context and pair seed is kept; else it is built from the records there,
    and missing pairs are an error naming the `hnlm sns` that generates them."""
    builder = PromptBuilder(data, context, llm, seed=pair_seed)
    folder = sns_dir(data.name, llm, split_id_of(data))
    pairs = select_pairs(data, budget, pair_seed)
    found = lookup_shipped(data, llm, builder, pairs, split_seed_of(data))
    copied = copy_into_cache(found.rows, folder, builder.tag) if found.shipped is not None else 0
    meta_path = folder / f"meta_{budget.tag}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not copied and (meta.get("context_tag"), meta.get("pair_seed")) == (builder.tag, pair_seed):
        outputs.report(SHIPPED_KIND, f"bank built in {folder} ({found.reason})")
        return
    where = found.shipped.line(len(found.rows)) if found.shipped is not None else str(folder / "negatives.jsonl")
    outputs.report(SHIPPED_KIND, f"building the bank from {where} ({found.reason})")
    build_artifacts(data, llm, budget, get_text_encoder(encoder), pair_seed, pool, extra_meta=builder.describe(),
                    context=builder.tag)


def records_to_ship(data, llm: str, builder: PromptBuilder, pairs: pd.DataFrame) -> tuple[list[dict], Path]:
    """The generated records of `pairs` in artifacts/ as they ship (with their prompt hashes; fewer than the
    pairs while generation is incomplete), and the file they come from."""
    path = sns_dir(data.name, llm, split_id_of(data)) / "negatives.jsonl"
    done = pairs.merge(read_negatives(path, builder.tag), on=["user", "item"])
    shas = prompt_hashes(builder, pairs)
    return [{"user": int(r.user), "item": int(r.item), **{f: plain(getattr(r, f)) for f in SHIPPED_FIELDS},
             "prompt_sha": shas[(int(r.user), int(r.item))]} for r in done.itertuples()], path


def plain(value):
    """numpy scalars and NaN (pandas' missing values) as JSON values."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def parse_tag(tag: str) -> tuple[str, str, str]:
    """(context, profiles LLM or "", decoding) of a PromptBuilder.tag
    "<history | profile:<llm>>|<template>-<prompt hash>|<greedy | sample-...>"."""
    parts = tag.split("|")
    context, _, profiles_llm = parts[0].partition(":")
    return context, profiles_llm, parts[-1]


def shipped_builder(data, key: dict) -> PromptBuilder:
    """The PromptBuilder that made shipped negatives of key `key` (its context tag and prompt seed)."""
    context, profiles_llm, _ = parse_tag(key["context"])
    return PromptBuilder(data, context, profiles_llm or None, seed=key.get("prompt_seed", 0))


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
                 decoding: str = "greedy"):
        self.pool = training_pool(data)
        super().__init__(data, context, profiles_llm, seed, decoding)

    def json_schema(self) -> dict:
        return pick_schema()

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
