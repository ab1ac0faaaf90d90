"""Module 2: semantic negative sampling (SNS).

For a training pair (user, positive item) an LLM is prompted with the user's profile and the item's title
and profile and returns one hard negative as JSON `{"hard_negative_item": <= 20 words, "reasoning": ...}`
(schema-constrained, cached and resumable through the LLM layer). Each text is embedded with a text encoder
and stored by (user, item); the grounded variant maps it to the nearest real catalogue item that is not in
the user's training history. Quality measures are written next to the artefacts.

Artefacts, under artifacts/<dataset>/sns/<llm>/split-<seed>/:
  negatives.jsonl        every generated pair (append-only; a rerun only generates missing pairs)
  bank_<budget>.npz      users, items, emb (text embeddings of the valid negatives of that budget)
  grounded_<budget>.parquet  user, item, nearest catalogue item (train items excluded), its similarity, pool
  quality_<budget>.json  valid-JSON rate, train-item / held-out (false hard negative) shares, similarities
  meta_<budget>.json     budget, LLM / encoder identity, prompt context, train fingerprint

Only training interactions reach prompts and candidate pools; held-out items are read for the quality
measures alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.errors import DataFormatError, MissingInputError, UserFacingError
from hnlm.paths import artifacts_dir
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import (Budget, domain_of, history_context, item_context, safe_name, select_pairs,
                                  title_of, train_fingerprint)
from hnlm.semantic.profiles import profiles_of

PROMPT_DIR = Path(__file__).parent / "prompts"
MAX_WORDS = 20
SNS_SCHEMA = {
    "type": "object",
    "properties": {
        "hard_negative_item": {"type": "string"},
        "reasoning": {"type": "string"},
    },
    "required": ["hard_negative_item", "reasoning"],
    "additionalProperties": False,
}
# Token budgets per string field (the LLM layer forces the closing quote when one is spent).
FIELD_TOKENS = {"hard_negative_item": 28, "reasoning": 14}
ITEM_PROFILE_WORDS = 60  # item profiles are cut to this many words in the prompt


# ---------------------------------------------------------------- prompts

def load_template(domain: str) -> tuple[str, str]:
    """(system, user) parts of prompts/sns_<domain>.txt, separated by a line '---'."""
    path = PROMPT_DIR / f"sns_{domain}.txt"
    if not path.exists():
        path = PROMPT_DIR / "sns_item.txt"
    system, _, user = path.read_text().partition("\n---\n")
    if not user:
        raise DataFormatError(f"{path}: expected a system part, a line '---', then the user part")
    return system.strip(), user.strip()


class PromptBuilder:
    """Messages for one (user, item) pair. context: "profile" (module 1 profiles) or "history"."""

    def __init__(self, data, context: str = "profile", profiles_llm: str | None = None, seed: int = 0):
        self.data = data
        self.context = context
        self.system, self.user_template = load_template(domain_of(data.name))
        self.item_profiles: dict[int, str] = {}
        self.user_profiles: dict[int, str] = {}
        if context == "profile":
            self.item_profiles, self.user_profiles = profiles_of(data, profiles_llm)
        elif context != "history":
            raise UserFacingError(f"unknown SNS context {context!r}: use 'profile' or 'history'")
        self.seed = seed
        # Stored with every record: negatives made from another context are never reused for this one.
        self.tag = "history" if context == "history" else f"profile:{profiles_llm}"

    def user_text(self, user: int) -> str:
        if self.context == "profile":
            if user not in self.user_profiles:
                raise MissingInputError(f"no profile for user {user}: run `hnlm profiles` for all users "
                                        f"or use --context history")
            return self.user_profiles[user]
        return history_context(self.data, user, np.random.default_rng([self.seed, user]))

    def item_text(self, item: int) -> str:
        return item_context(self.data, self.item_profiles, item, ITEM_PROFILE_WORDS)

    def messages(self, user: int, item: int) -> list[dict]:
        text = self.user_template.format(user_profile=self.user_text(user),
                                         item_title=title_of(self.data, item),
                                         item_profile=self.item_text(item))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def describe(self) -> dict:
        return {"context": self.context, "context_tag": self.tag, "item_profiles": len(self.item_profiles),
                "user_profiles": len(self.user_profiles), "template": f"sns_{domain_of(self.data.name)}"}


# ---------------------------------------------------------------- generation (cached, resumable)

def sns_dir(dataset: str, llm: str, split_seed: int) -> Path:
    return artifacts_dir(dataset, "sns", safe_name(llm), f"split-{split_seed}")


def read_negatives(path: Path, context: str | None = None) -> pd.DataFrame:
    """Generated records (of one prompt context when `context` is a PromptBuilder.tag); a torn last line
    (interrupted write) is ignored."""
    cols = ["user", "item", "ok", "text", "reasoning", "reason", "words", "truncated", "context"]
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
    """Generate the pairs missing from out/negatives.jsonl, appending each chunk as it finishes."""
    path = out / "negatives.jsonl"
    done = read_negatives(path, builder.tag)
    have = set(zip(done["user"].astype(int), done["item"].astype(int)))
    todo = [(int(u), int(i)) for u, i in zip(pairs["user"], pairs["item"]) if (int(u), int(i)) not in have]
    # Users in a seeded random order: an interrupted run leaves an unbiased subset of users covered.
    rank = np.random.default_rng(order_seed).permutation(data.n_users)
    todo.sort(key=lambda pair: rank[pair[0]])
    budget = max_new_tokens or sum(FIELD_TOKENS.values()) + 16
    cached = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        results = backend.generate_json([builder.messages(u, i) for u, i in part], sns_schema(),
                                        max_new_tokens=budget,
                                        desc=f"SNS {start + len(part)}/{len(todo)}")
        with path.open("a") as fh:
            for (u, i), res in zip(part, results):
                cached += bool(getattr(res, "cached", False))
                fh.write(json.dumps({"user": u, "item": i, **parse_answer(res), "context": builder.tag}) + "\n")
    return {"requested": len(pairs), "already_done": len(pairs) - len(todo), "generated": len(todo),
            "from_llm_cache": cached}


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


def quality(data, rec: pd.DataFrame, neg_emb: np.ndarray, item_emb: np.ndarray, nearest: np.ndarray,
            nearest_any: np.ndarray, top: np.ndarray, seed: int = 0) -> dict:
    """Quality of the valid negatives `rec` (rows aligned with neg_emb); held-out items read here only."""
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
    rng = np.random.default_rng(seed)
    sim_pos = np.einsum("nd,nd->n", neg_emb, item_emb[items]) if len(rec) else np.zeros(0)
    rand_items = rng.integers(0, data.n_items, size=len(rec))
    sim_rand = np.einsum("nd,nd->n", item_emb[rand_items], item_emb[items]) if len(rec) else np.zeros(0)
    return {
        "n_valid": int(len(rec)),
        "names_train_item_share": names_train / n,
        "names_positive_share": names_pos / n,
        "nearest_catalogue_item_in_train_share": in_train_any / n,
        "false_hard_negative_share": held_near / n,
        "false_hard_negative_chance": chance_near / n,
        "pool_heldout_share": held_pool / n,
        "sim_to_positive_mean": float(sim_pos.mean()) if len(rec) else None,
        "sim_random_item_to_positive_mean": float(sim_rand.mean()) if len(rec) else None,
        "distinct_texts_share": rec["text"].str.lower().nunique() / n,
    }


def build_artifacts(data, llm: str, budget: Budget, encoder, split_seed: int = 0, pair_seed: int = 0,
                    pool: int = 20, extra_meta: dict | None = None, allow_missing: bool = False,
                    context: str | None = None) -> dict:
    """Embed, ground and measure the negatives of a budget; write bank / grounded / quality / meta."""
    out = sns_dir(data.name, llm, split_seed)
    pairs = select_pairs(data, budget, pair_seed)
    allrec = read_negatives(out / "negatives.jsonl", context)
    rec = pairs.merge(allrec, on=["user", "item"], how="left")
    missing = int(rec["ok"].isna().sum())
    if missing and not allow_missing:
        raise MissingInputError(f"{missing} of {len(rec)} pairs of budget {budget.spec} have no generated "
                                f"negative in {out}: run `hnlm sns --budget {budget.spec}` first "
                                f"(or build from what exists with --allow-missing)")
    # Pairs never generated (an interrupted run) are counted apart from invalid answers.
    rec = rec[rec["ok"].notna()].reset_index(drop=True)
    ok = rec[rec["ok"].astype(bool)].reset_index(drop=True)
    neg_emb = encoder.encode(ok["text"].tolist()) if len(ok) else np.zeros((0, encoder.dim), np.float32)
    item_emb = item_embeddings(data, encoder)
    nearest, sim, top, nearest_any = ground(neg_emb, ok["user"].to_numpy(int), item_emb, data, pool)
    q = quality(data, ok, neg_emb, item_emb, nearest, nearest_any, top, seed=pair_seed)
    q.update({"budget_pairs": int(len(pairs)), "not_generated": missing,
              "coverage_users": int(ok["user"].nunique()) / data.n_users,
              "requested": int(len(rec)), "valid_json_rate": len(ok) / max(len(rec), 1),
              "invalid": int(len(rec) - len(ok)), "truncated_to_20_words": int(ok["truncated"].sum()),
              "invalid_reasons": rec.loc[~rec["ok"].astype(bool), "reason"].value_counts().to_dict()})
    tag = budget.tag
    np.savez(out / f"bank_{tag}.npz", users=ok["user"].to_numpy(np.int64),
             items=ok["item"].to_numpy(np.int64), emb=neg_emb.astype(np.float32))
    pd.DataFrame({"user": ok["user"].astype(int), "item": ok["item"].astype(int), "text": ok["text"],
                  "nearest": nearest.astype(int), "similarity": sim.astype(float),
                  "pool": [list(map(int, p)) for p in top]}).to_parquet(out / f"grounded_{tag}.parquet")
    meta = {"dataset": data.name, "llm": llm, "budget": budget.spec, "pair_seed": pair_seed,
            "split_seed": split_seed, "train_fingerprint": train_fingerprint(data),
            "encoder": getattr(encoder, "identity", type(encoder).__name__), "grounding_pool": pool,
            **(extra_meta or {})}
    (out / f"quality_{tag}.json").write_text(json.dumps(q, indent=2))
    (out / f"meta_{tag}.json").write_text(json.dumps(meta, indent=2))
    return {"quality": q, "meta": meta, "folder": str(out)}


# ---------------------------------------------------------------- loading for training

def _artifact(data, llm: str, budget: Budget, split_seed: int, name: str) -> Path:
    out = sns_dir(data.name, llm, split_seed)
    path = out / name.format(tag=budget.tag)
    if not path.exists():
        raise MissingInputError(f"{path} is missing: run `hnlm sns --dataset {data.name} --llm {llm} "
                                f"--budget {budget.spec}` first")
    meta = json.loads((out / f"meta_{budget.tag}.json").read_text())
    if meta["train_fingerprint"] != train_fingerprint(data):
        raise UserFacingError(f"{out} was built for another training split (fingerprint "
                              f"{meta['train_fingerprint']}); regenerate it for this split")
    return path


def load_meta(data, llm: str, budget: Budget, split_seed: int = 0) -> dict:
    _artifact(data, llm, budget, split_seed, "bank_{tag}.npz")
    out = sns_dir(data.name, llm, split_seed)
    meta = json.loads((out / f"meta_{budget.tag}.json").read_text())
    meta["quality"] = json.loads((out / f"quality_{budget.tag}.json").read_text())
    return meta


def load_bank(data, llm: str, budget: Budget, split_seed: int = 0) -> NegativeBank:
    """The text-embedding bank of a budget, for `AlignmentExtension`."""
    z = np.load(_artifact(data, llm, budget, split_seed, "bank_{tag}.npz"))
    meta = load_meta(data, llm, budget, split_seed)
    q = meta.pop("quality")
    return NegativeBank(z["emb"], z["users"], z["items"], source=f"sns:{llm}:{budget.spec}",
                        meta={"budget": budget.spec, "llm": llm, "encoder": meta["encoder"],
                              "valid_json_rate": q["valid_json_rate"], "context": meta.get("context")})


def load_grounded(data, llm: str, budget: Budget, split_seed: int = 0) -> pd.DataFrame:
    return pd.read_parquet(_artifact(data, llm, budget, split_seed, "grounded_{tag}.parquet"))
