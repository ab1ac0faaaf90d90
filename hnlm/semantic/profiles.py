"""Module 1: item and user profiles written by an LLM, as JSON `{"summarization", "reasoning"}`.

Item prompts: the item's text (title, year, categories, brand, description) plus at most
ITEM_REVIEWS of its TRAINING-split reviews (the first by user id), each cut to REVIEW_WORDS words.
User prompts: the user's side information (age, gender, occupation where present) and TRAINING history
only. Long histories are bounded: at most HISTORY_ITEMS training items, a random sample seeded by
(split seed, user), listed in item-id order, each as "title [categories]" plus the first
PROFILE_SNIPPET_WORDS words of its item profile when one exists; plus at most USER_REVIEWS of the user's
own training reviews of the listed items. Valid/test interactions never reach a prompt (tests assert it).

Summaries are capped at SUMMARY_WORDS words (checked after parsing); token budgets per field keep the
full ml-100k run feasible on a 2-core CPU (see bench/README.md). Files, under
artifacts/<dataset>/profiles/<llm>/: items_split-<split id>.jsonl and users_split-<split id>.jsonl (one row
per item/user: id, ok, summarization, reasoning, reason) and counts_split-<split id>.json, where the split id
(`split_id_of`) is the seed, and the kind unless random. These files record no training-split fingerprint: the
split id in their names is what keeps another split's profiles out. Profiles shipped with the repository
(outputs/, hnlm.semantic.outputs) are used first when their prompts match these prompts exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import atomic_path
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.backends import make_backend
from hnlm.llm.structured import field_budgets
from hnlm.paths import artifacts_dir
from hnlm.semantic import common, outputs
from hnlm.semantic.common import cut_words, split_id_of, split_options, split_seed_of, title_of

SUMMARY_WORDS = 100
REASONING_WORDS = 60
SUMMARY_TOKENS = 56     # decoding budget of "summarization" (~40 words): the main cost of a full run
REASONING_TOKENS = 20   # decoding budget of "reasoning"
HISTORY_ITEMS = 15
PROFILE_SNIPPET_WORDS = 12
ITEM_REVIEWS = 3
USER_REVIEWS = 3
REVIEW_WORDS = 40


def profile_schema(summary_tokens: int = SUMMARY_TOKENS, reasoning_tokens: int = REASONING_TOKENS) -> dict:
    return {
        "type": "object",
        "properties": {
            "summarization": {"type": "string", "minLength": 1, "x-max-words": SUMMARY_WORDS,
                              "x-max-tokens": summary_tokens},
            "reasoning": {"type": "string", "x-max-words": REASONING_WORDS, "x-max-tokens": reasoning_tokens},
        },
        "required": ["summarization", "reasoning"],
        "additionalProperties": False,
    }


def profile_template(kind: str, dataset: str) -> Path:
    """The template of `kind` ("item" or "user") profiles of `dataset` (common.template_path's rule)."""
    return common.template_path(f"profile_{kind}", dataset)


class ProfilePrompts:
    """Builds profile prompts from TRAINING data only (the only data accessors used are
    train_items / train_reviews and side information)."""

    def __init__(self, data, split_seed: int = 0, item_profiles: dict[int, str] | None = None):
        self.data, self.split_seed = data, split_seed
        self.item_profiles = item_profiles or {}
        self.templates = {k: common.chat_template(profile_template(k, data.name)) for k in ("item", "user")}
        reviews = data.train_reviews()
        self._item_reviews = reviews.sort_values(["item", "user"]).groupby("item")["review"].apply(list) \
            if len(reviews) else pd.Series(dtype=object)
        self._user_reviews = reviews.set_index(["user", "item"])["review"] if len(reviews) else None
        self._item_lines: dict[int, str] = {}

    def item_messages(self, item: int) -> list[dict]:
        system, template = self.templates["item"]
        revs = self._item_reviews.get(item, [])[:ITEM_REVIEWS]
        reviews = "Reviews:\n" + "\n".join(f"- {cut_words(r, REVIEW_WORDS)}" for r in revs) if revs else ""
        text = template.format(item_text=self.data.item_text(item), reviews=reviews)
        return [{"role": "system", "content": system}, {"role": "user", "content": _tidy(text)}]

    def history(self, user: int) -> tuple[np.ndarray, int]:
        """The training items shown for `user` (bounded, seeded sample) and the history length."""
        train = np.sort(self.data.train_items(user))
        if len(train) <= HISTORY_ITEMS:
            return train, len(train)
        rng = np.random.default_rng([self.split_seed, user])
        return np.sort(rng.choice(train, HISTORY_ITEMS, replace=False)), len(train)

    def item_line(self, item: int) -> str:
        """'- title [categories]' of a history item, built once per item (pandas row access is slow and every
        user prompt lists up to HISTORY_ITEMS of them)."""
        if item not in self._item_lines:
            cats = self.data.items.iloc[item].get("categories")
            self._item_lines[item] = f"- {title_of(self.data, item)}" + (f" [{cats}]" if cats else "")
        return self._item_lines[item]

    def messages(self, kind: str, ident: int) -> list[dict]:
        return self.item_messages(ident) if kind == "item" else self.user_messages(ident)

    def user_messages(self, user: int) -> list[dict]:
        system, template = self.templates["user"]
        shown, total = self.history(user)
        lines = []
        for item in shown:
            line = self.item_line(int(item))
            if int(item) in self.item_profiles:
                line += ": " + cut_words(self.item_profiles[int(item)], PROFILE_SNIPPET_WORDS)
            lines.append(line)
        reviews = ""
        if self._user_reviews is not None:
            own = [self._user_reviews.get((user, int(i))) for i in shown]
            own = [r for r in own if isinstance(r, str) and r.strip()][:USER_REVIEWS]
            if own:
                reviews = "Their reviews:\n" + "\n".join(f"- {cut_words(r, REVIEW_WORDS)}" for r in own)
        row = self.data.users.iloc[user] if len(self.data.users) > user else {}
        who = ", ".join(f"{c} {row[c]}" for c in ("age", "gender", "occupation")
                        if c in getattr(row, "index", []) and str(row[c]) not in ("", "nan"))
        text = template.format(user_text=who or "(no side information)", shown=len(shown), total=total,
                               history="\n".join(lines), reviews=reviews)
        return [{"role": "system", "content": system}, {"role": "user", "content": _tidy(text)}]


def _tidy(text: str) -> str:
    return re.sub(r"\n{2,}", "\n", text).strip()


def generate_profiles(data, backend, kind: str = "item", limit: int | None = None, split_seed: int = 0,
                      item_profiles: dict[int, str] | None = None, max_new_tokens: int | None = None,
                      schema: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Profiles of the first `limit` items/users (all by default) -> (frame, counts).

    The frame has one row per id: id, ok, summarization, reasoning, reason, cached. Failures keep their
    reason and are counted, never replaced. User prompts include snippets of `item_profiles` if given."""
    if kind not in ("item", "user"):
        raise ValueError(f"kind must be 'item' or 'user', not {kind!r}")
    prompts = ProfilePrompts(data, split_seed, item_profiles)
    n = data.n_items if kind == "item" else data.n_users
    ids = list(range(n if limit is None else min(limit, n)))
    build = prompts.item_messages if kind == "item" else prompts.user_messages
    results = backend.generate_json([build(i) for i in ids], schema or profile_schema(),
                                    max_new_tokens=max_new_tokens, desc=f"{kind} profiles")
    rows = [{"id": i, "ok": r.ok, "summarization": (r.value or {}).get("summarization"),
             "reasoning": (r.value or {}).get("reasoning"), "reason": r.reason, "cached": r.cached,
             "raw": None if r.ok else r.raw, "prompt_truncated": r.prompt_truncated}
            for i, r in zip(ids, results)]
    frame = pd.DataFrame(rows)
    stats = getattr(backend, "last_stats", {})
    counts = {"kind": kind, "requested": len(ids), "generated": int((~frame["cached"]).sum()) if len(frame) else 0,
              "cached": int(frame["cached"].sum()) if len(frame) else 0,
              "failed": int((~frame["ok"]).sum()) if len(frame) else 0,
              "truncated_prompts": int(frame["prompt_truncated"].sum()) if len(frame) else 0,
              "seconds": stats.get("seconds"), "prompts_per_s": stats.get("prompts_per_s"),
              "tokens_per_s": stats.get("tokens_per_s")}
    return frame, counts


def profiles_dir(dataset: str, llm: str) -> Path:
    return artifacts_dir(dataset, "profiles", common.safe_name(llm))


def profiles_path(dataset: str, llm: str, kind: str, split_id: str) -> Path:
    """The one place that names a profile file (`kind` "item" or "user"; `split_id` from `split_id_of`)."""
    return profiles_dir(dataset, llm) / f"{kind}s_split-{split_id}.jsonl"


def profiles_slot(split_id: str) -> str:
    """The slot of shipped profiles (hnlm.semantic.outputs) of the split `split_id` (from `split_id_of`)."""
    return f"split-{split_id}"


def save_profiles(frame: pd.DataFrame, dataset: str, llm: str, kind: str, split_id: str) -> Path:
    """Merge `frame` by id into the saved profiles (its rows win), so a limited run never loses any."""
    path = profiles_path(dataset, llm, kind, split_id)
    if path.exists():
        old = pd.read_json(path, lines=True)
        if len(old):
            frame = pd.concat([old[~old["id"].isin(frame["id"])], frame]).sort_values("id").reset_index(drop=True)
    with atomic_path(path) as tmp:  # readers never see a half-written file
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    return path


def read_profiles(path: Path) -> dict[int, str]:
    frame = pd.read_json(path, lines=True)
    if frame.empty:
        return {}
    ok = frame[frame["ok"].astype(bool)]
    return {int(i): str(s) for i, s in zip(ok["id"], ok["summarization"])}


def load_profiles(data, llm: str) -> tuple[dict[int, str], dict[int, str]]:
    """(item_profiles, user_profiles) saved for `data`'s split: summaries of the valid profiles by integer id
    (failures absent)."""
    out = []
    for kind in ("item", "user"):
        path = profiles_path(data.name, llm, kind, split_id_of(data))
        if not path.exists():
            raise MissingInputError(f"no {kind} profiles at {path}; run: hnlm profiles --dataset {data.name} "
                                    f"--llm {llm} {split_options(data)}")
        out.append(read_profiles(path))
    return out[0], out[1]


def profiles_of(data, llm: str | None) -> tuple[dict[int, str], dict[int, str]]:
    """The profiles made from `data`'s own training split (never another split's: its prompts may hold
    this split's held-out items)."""
    if llm is None:
        raise UserFacingError("user/item profiles need the LLM that wrote them (--profiles-llm)")
    found = shipped_profiles(data, llm, split_seed_of(data))
    if not isinstance(found, outputs.Lookup):
        return found
    items, users = load_profiles(data, llm)
    outputs.report("profiles", f"cached {profiles_dir(data.name, llm)} ({found.reason})")
    return items, users


# ------------------------------------------------------------------------------ shipped profiles

def shipped_key(data, backend, kind: str, split_seed: int, schema: dict | None = None,
                max_new_tokens: int | None = None) -> dict:
    """What identifies a profile file besides its prompts: model weights (not the dtype), schema, decoding,
    template, training split."""
    schema = schema or profile_schema()
    _, total = field_budgets(schema, max_new_tokens)
    return {"model": backend.weights_identity, "schema": schema, "decoding": backend.decoding(total),
            "templates": outputs.template_hashes([profile_template(kind, data.name)]),
            "split": common.train_fingerprint(data), "split_seed": split_seed}


def prompt_hashes(data, kind: str, ids, split_seed: int, item_profiles: dict[int, str] | None = None) -> dict:
    """{(id,): prompt_sha} of the profile prompts of `ids`."""
    prompts = ProfilePrompts(data, split_seed, item_profiles)
    return {(int(i),): outputs.prompt_sha(prompts.messages(kind, int(i))) for i in ids}


def lookup_shipped(data, backend, llm: str, kind: str, ids, split_seed: int,
                   item_profiles: dict[int, str] | None = None) -> outputs.Lookup:
    slot = profiles_slot(split_id_of(data))
    none = outputs.not_shipped(f"profiles-{kind}", data.name, llm, slot)
    if none is not None:
        return none
    return outputs.lookup(f"profiles-{kind}", data.name, llm, slot,
                          shipped_key(data, backend, kind, split_seed),
                          prompt_hashes(data, kind, ids, split_seed, item_profiles))


def records_to_ship(data, llm: str, kind: str, split_seed: int,
                    item_profiles: dict[int, str] | None = None) -> tuple[list[dict], Path]:
    """The saved profiles of `kind` in artifacts/ as they ship, by id (with their prompt hashes; fewer than the
    items or users while generation is incomplete), and the file they come from."""
    path = profiles_path(data.name, llm, kind, split_id_of(data))
    frame = pd.read_json(path, lines=True) if path.exists() else pd.DataFrame(columns=["id"])
    n = data.n_items if kind == "item" else data.n_users
    frame = frame[frame["id"].astype(int).isin(range(n))].sort_values("id")
    shas = prompt_hashes(data, kind, frame["id"].astype(int), split_seed, item_profiles)
    return [{"id": int(r.id), "ok": bool(r.ok), "summarization": r.summarization, "reasoning": r.reasoning,
             "reason": r.reason, "raw": None if r.ok else r.raw, "prompt_truncated": bool(r.prompt_truncated),
             "prompt_sha": shas[(int(r.id),)]} for r in frame.itertuples()], path


def summaries(rows) -> dict[int, str]:
    return {int(r["id"]): str(r["summarization"]) for r in rows if r["ok"]}


def study_profiles(data, backend, llm: str, kind: str, limit: int | None, split_seed: int = 0,
                   item_profiles: dict[int, str] | None = None) -> tuple[pd.DataFrame, dict, dict[int, str]]:
    """Profiles of the first `limit` ids: shipped ones when their prompts match, else generated (LLM cache,
    then the model) and merged into artifacts/. Returns (frame, counts, every valid summary of this kind there
    is: user prompts quote all item profiles, so a limited run asks the same prompts as a complete one)."""
    n = data.n_items if kind == "item" else data.n_users
    ids = range(n if limit is None else min(limit, n))
    found = lookup_shipped(data, backend, llm, kind, ids, split_seed, item_profiles)
    if found.shipped is not None:
        outputs.report(f"profiles-{kind}", found.shipped.line(len(found.rows)))
        frame = pd.DataFrame([{"id": r["id"], "ok": r["ok"], "summarization": r["summarization"],
                               "reasoning": r["reasoning"], "reason": r["reason"], "cached": True, "raw": r.get("raw"),
                               "prompt_truncated": r.get("prompt_truncated", False)} for r in found.rows])
        counts = {"kind": kind, "requested": len(frame), "generated": 0, "cached": 0, "shipped": len(frame),
                  "failed": int((~frame["ok"]).sum()), "truncated_prompts": int(frame["prompt_truncated"].sum()),
                  "seconds": None, "prompts_per_s": None, "tokens_per_s": None,
                  "made_with": found.shipped.made_with}
        return frame, counts, summaries(found.shipped.rows())
    frame, counts = generate_profiles(data, backend, kind, limit, split_seed, item_profiles=item_profiles)
    path = save_profiles(frame, data.name, llm, kind, split_id_of(data))
    outputs.report(f"profiles-{kind}", f"{counts['cached']} cached in the LLM cache, generated "
                                       f"{counts['generated']} ({found.reason}); saved to {path}")
    return frame, {**counts, "shipped": 0}, read_profiles(path)


def shipped_profiles(data, llm: str, split_seed: int) -> tuple[dict, dict] | outputs.Lookup:
    """(item, user) summaries from complete shipped profile files whose prompts match, else the miss."""
    none = outputs.not_shipped("profiles-item", data.name, llm, profiles_slot(split_id_of(data)))
    if none is not None:
        return none
    backend = make_backend(llm, progress=False)
    items = lookup_shipped(data, backend, llm, "item", range(data.n_items), split_seed)
    if items.shipped is None:
        return items
    users = lookup_shipped(data, backend, llm, "user", range(data.n_users), split_seed, summaries(items.rows))
    if users.shipped is None:
        return users
    outputs.report("profiles", f"{items.shipped.line()}; {users.shipped.line()}")
    return summaries(items.rows), summaries(users.rows)
