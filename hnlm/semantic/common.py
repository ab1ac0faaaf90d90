"""Helpers shared by modules 1, 2 and 4: which training pairs get an LLM output, how items and users are
described in prompts, and what identifies the training split an output was made from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.errors import DataFormatError, UserFacingError
from hnlm.llm.catalog import redact

# The SNS decoding (a name of hnlm.semantic.sns.DECODINGS) of the study's full and quick profiles, `hnlm train` and
# the input provider: "sampled", K = 4 negatives per user with the draw filter (qwen2.5-0.5b's shipped for all
# users); "greedy" (one negative per user, no filter; also shipped) remains a choice (`--sns-decoding`).
SNS_DECODING = "sampled"
SNS_DECODING_NAMES = ("sampled", "greedy")   # the keys of hnlm.semantic.sns.DECODINGS, for command-line choices

HISTORY_TITLES = 5       # titles in a "history" user context (prompt length drives CPU cost)
PROMPT_DIR = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Budget:
    """"all" (every training pair, the paper) or "per-user:K" (K training pairs per user)."""

    per_user: int | None

    @classmethod
    def parse(cls, spec: str) -> "Budget":
        if spec == "all":
            return cls(None)
        m = re.fullmatch(r"per-user:(\d+)", spec)
        if not m or int(m.group(1)) < 1:
            raise UserFacingError(f"bad budget {spec!r}: use 'all' or 'per-user:K' with K >= 1")
        return cls(int(m.group(1)))

    @property
    def tag(self) -> str:
        return "all" if self.per_user is None else f"per-user-{self.per_user}"

    @property
    def spec(self) -> str:
        return "all" if self.per_user is None else f"per-user:{self.per_user}"


def select_pairs(data, budget: Budget, seed: int = 0) -> pd.DataFrame:
    """Training pairs that get an LLM output. per-user:K takes the first K items of a seeded permutation of
    each user's training items, so a larger K extends a smaller one (its outputs are reused)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(data.n_users):
        train = data.train_items(u)
        order = rng.permutation(len(train))
        keep = order if budget.per_user is None else order[:budget.per_user]
        users.append(np.full(len(keep), u, dtype=np.int64))
        items.append(train[keep].astype(np.int64))
    return pd.DataFrame({"user": np.concatenate(users), "item": np.concatenate(items)})


def train_fingerprint(data) -> str:
    """Identifies the training split: outputs made from another split must not be reused."""
    h = hashlib.sha256(data.train.indptr.tobytes())
    h.update(data.train.indices.tobytes())
    return h.hexdigest()[:16]


def split_seed_of(data) -> int:
    """The split seed `data` was made with: LLM outputs are stored per split, so that prompts built from one
    split's training data never reach a run on another split (whose held-out items they may hold)."""
    return int(data.stats.get("split_seed", 0) or 0)


def split_id_of(data) -> str:
    """The split in artefact names: its seed for the default random split (the names in use, kept as they
    are), seed and kind for any other ("0-temporal"), so that two kinds of split with one seed never share a
    folder or file."""
    seed, mode = split_seed_of(data), data.stats.get("split_mode", "random")
    return str(seed) if mode == "random" else f"{seed}-{mode}"


def split_options(data) -> str:
    """The command-line options that select `data`'s split, for the commands that error messages suggest (a
    published split comes with its files: no option selects it)."""
    mode = data.stats.get("split_mode", "random")
    return f"--split-seed {split_seed_of(data)}" + (" --split temporal" if mode == "temporal" else "")


class OtherSplitError(UserFacingError):
    """A frozen file (a cached artefact or a shipped output) was made from another training split."""


def check_split(path, made_from: str | None, fingerprint: str, regenerate: str, advice: str = "") -> None:
    """The one check of a frozen file's training split: `made_from`, the fingerprint the file records, must
    be `fingerprint` (`train_fingerprint` of the data at hand), else a one-line error naming the file and the
    command that regenerates it (`advice` adds what else may be done)."""
    if made_from != fingerprint:
        raise OtherSplitError(f"{path} was made from another training split (fingerprint {made_from}, this "
                              f"data's is {fingerprint}); regenerate it with `{regenerate}`{advice}")


def safe_name(name: str) -> str:
    """A model spec or LLM name as a folder name (credentials in a URL left out)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", redact(name))


def domain_of(dataset: str) -> str:
    """Prompt templates exist per domain: movies for MovieLens, generic items otherwise."""
    return "movie" if dataset.startswith("ml-") else "item"


def template_path(name: str, dataset: str) -> Path:
    """The one rule that picks a prompt template: prompts/<name>_<domain>.txt for `dataset`'s domain, else the
    generic prompts/<name>_item.txt (its file is part of every shipped output's key)."""
    path = PROMPT_DIR / f"{name}_{domain_of(dataset)}.txt"
    return path if path.exists() else PROMPT_DIR / f"{name}_item.txt"


def chat_template(path: Path) -> tuple[str, str]:
    """(system, user) parts of a chat prompt template, separated by a line '---'."""
    system, _, user = Path(path).read_text().partition("\n---\n")
    if not user:
        raise DataFormatError(f"{path}: expected a system part, a line '---', then the user part")
    return system.strip(), user.strip()


def cut_words(text: str, n: int) -> str:
    words = str(text).split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def title_of(data, item: int) -> str:
    row = data.items.iloc[item]
    title = str(row.get("title") or row["original_id"])
    return f"{title} ({row['year']})" if row.get("year") else title


def history_context(data, user: int, rng: np.random.Generator) -> str:
    """A user described by training titles and side information only (when no LLM user profile is used)."""
    train = data.train_items(user)
    pick = rng.permutation(len(train))[:HISTORY_TITLES]
    titles = "; ".join(title_of(data, int(i)) for i in sorted(train[pick]))
    row = data.users.iloc[user]
    who = ", ".join(str(row[c]) for c in ("age", "gender", "occupation") if c in row and row[c] != "")
    return (f"{who}; " if who else "") + f"liked {titles}."


def item_context(data, item_profiles: dict, item: int, words: int) -> str:
    """An item as prompts describe it: the start of its module-1 profile, else its genres."""
    if item in item_profiles:
        return cut_words(item_profiles[item], words)
    cats = data.items.iloc[item].get("categories")
    return f"Genres: {cats}." if cats else ""
