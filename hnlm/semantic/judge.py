"""The LLM as a judge of false negatives: which of a user's hardest unseen items would the user enjoy?

DNS(M,N)'s negatives are the user's held-out positives several times as often as chance (notebook 07): the items
CF scores highest among the unseen include the ones the user will like. A small LLM cannot be trusted to name a
film, but it can attempt a classification over a short list of real items. For each user:
  list   the JUDGE_CANDIDATES unseen items a converged DNS(M,N) teacher (`teacher_config`, `hnlm.cf.frozen`)
         scores highest, among the items with a training interaction: training data only (the teacher is
         selected on validation by the trainer, as every model of the study; its lists never read valid/test);
  prompt the user (module-1 profile, or training titles and side information) and the numbered list, shown in a
         random order seeded by the user (`shown`): a small model's bias for the first numbers must not coincide
         with the teacher's ranking (SmolLM2 marks numbers 1-5 of 29 of 32 lists);
  answer JSON {"reasoning", "enjoy": JUDGE_MARKS numbers}, each number constrained by the grammar to the list
         (`judge_schema`: an enum of 1..len(list)), stored as item ids (`marked`; a repeated number is counted and
         marks one item). A fixed count, not "at most": allowed to mark none, qwen2.5-0.5b marked nothing for 7 of
         8 users (measured), which leaves the method nothing to act on.
Training with the marks is `hnlm.methods.dnsmn_judge`; their precision on validation items is measured there.
Measured (`position_bias`): SmolLM2-135M (32 users) and qwen2.5-0.5b (8 users) put every mark among the first
three numbers shown, whatever the list: with these models the marks are random picks from the list.

Records, under artifacts/<dataset>/judge/<llm>/split-<split id>/marks.jsonl (append-only, resumable, one per
user, each with its list). Shipped marks (hnlm.semantic.outputs kind "judge-marks") are found by key: model,
schema, decoding, prompt context, template, teacher settings and training split; as for module 4's banks, the
list is made inside the producer, so a fresh clone uses shipped marks without training the teacher
(`obtain_marks`: shipped, else artifacts/, else made here when asked, else an error naming `hnlm judge`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import append_lines
from hnlm.cf.config import TrainConfig
from hnlm.cf.frozen import dnsmn_config, frozen_model
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.llm.structured import field_budgets
from hnlm.paths import artifacts_dir
from hnlm.semantic import outputs
from hnlm.semantic.common import safe_name, split_id_of, split_options, split_seed_of, train_fingerprint
from hnlm.semantic.sns import FIELD_TOKENS, PromptBuilder, parse_tag, plain, short_text, training_pool

JUDGE_CANDIDATES = 20    # items listed per user
JUDGE_MARKS = 3          # items the LLM marks per user
DISPLAY_SEED = 0         # seeds the order a user's list is shown in
TEACHER_CANDIDATES, TEACHER_TOP = 32, 5   # the teacher's DNS(M,N) settings (DNSMN's defaults)
SHIPPED_KIND = "judge-marks"
RECORD_COLUMNS = ["user", "ok", "candidates", "marked", "repeated", "out_of_range", "reasoning", "reason", "context"]
SHIPPED_FIELDS = ("ok", "candidates", "marked", "repeated", "out_of_range", "reasoning", "reason")


@dataclass(frozen=True)
class JudgeConfig:
    """What makes a set of marks besides the LLM: the user context, the teacher and the list's length."""

    context: str = "profile"          # "profile" (module-1 profiles of the LLM) or "history" (training titles)
    teacher: str = TrainConfig.model  # backbone of the converged DNS(M,N) teacher that ranks the candidates
    candidates: int = JUDGE_CANDIDATES


def teacher_config(backbone: str) -> TrainConfig:
    """The converged DNS(M,N) teacher (the same model `dnsmn-static` mines from at its defaults)."""
    return dnsmn_config(backbone, TrainConfig.lr, TrainConfig.batch_size, TEACHER_CANDIDATES, TEACHER_TOP)


def judge_schema(n_candidates: int = JUDGE_CANDIDATES, marks: int = JUDGE_MARKS) -> dict:
    """Reasoning first, then `marks` numbers of listed items (the enum keeps every number on the list)."""
    return {"type": "object",
            "properties": {"reasoning": {"type": "string", "x-max-tokens": FIELD_TOKENS["reasoning"]},
                           "enjoy": {"type": "array", "minItems": marks, "maxItems": marks,
                                     "items": {"type": "integer", "enum": list(range(1, n_candidates + 1))}}},
            "required": ["reasoning", "enjoy"], "additionalProperties": False}


def candidate_lists(data, user_emb: np.ndarray, item_emb: np.ndarray, n: int) -> np.ndarray:
    """[users, n] the `n` best-scored items of each user (descending) among the items with a training interaction
    that the user has not trained on. Reads the training split only."""
    scores = np.asarray(user_emb, np.float64) @ np.asarray(item_emb, np.float64).T
    allowed = np.zeros(data.n_items, bool)
    allowed[training_pool(data)] = True
    scores[:, ~allowed] = -np.inf
    train = data.train.tocoo()
    scores[train.row, train.col] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    if np.isinf(np.take_along_axis(scores, top, 1)).any():
        raise ValueError(f"a user has fewer than {n} unseen items in the training pool")
    return top


def teacher_lists(data, config: JudgeConfig, train_config: TrainConfig | None = None) -> tuple[np.ndarray, dict]:
    """The candidate lists of every user from the converged teacher (`train_config` replaces its training: tests
    train a small one), and the teacher's summary (validation score, best epoch)."""
    model = frozen_model(data, train_config or teacher_config(config.teacher))
    summary = {"backbone": config.teacher, "best_epoch": model.summary["best_epoch"],
               "valid": {k: v for k, v in model.summary["valid"].items() if "@" in k}}
    return candidate_lists(data, model.user_emb, model.item_emb, config.candidates), summary


class JudgePrompts(PromptBuilder):
    """Prompts of the judge: a user and the numbered list `lists[user]` (lists: [users, n] item ids or {user: ids};
    None when only the tag and schema are needed). Context, profiles and tag as module 2's builder; greedy."""

    template_prefix = "judge"
    records_file = "marks.jsonl"
    columns = RECORD_COLUMNS
    max_new_tokens = FIELD_TOKENS["reasoning"] + 3 * JUDGE_MARKS + 24

    def __init__(self, data, config: JudgeConfig, profiles_llm: str | None = None, lists=None):
        self.config, self.lists = config, lists
        super().__init__(data, config.context, profiles_llm, seed=0)   # greedy decoding

    def json_schema(self) -> dict:
        return judge_schema(self.config.candidates)

    def user_messages(self, user: int) -> list[dict]:
        listing = "\n".join(f"{n}. {short_text(self.data, j)}" for n, j in enumerate(shown(self.lists[user], user), 1))
        text = self.user_template.format(user_profile=self.user_text(user), candidates=listing, marks=JUDGE_MARKS)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def parse_marks(self, result, user: int) -> dict:
        return parse_marks(result, self.lists[user], user)


def shown(candidates, user: int) -> list[int]:
    """A user's list in the order its prompt shows it (a permutation seeded by the user)."""
    order = np.random.default_rng([DISPLAY_SEED, int(user)]).permutation(len(candidates))
    return [int(candidates[k]) for k in order]


def position_bias(marks: pd.DataFrame) -> dict:
    """Share of the marks that were shown among the first JUDGE_MARKS numbers of their list, and its chance level
    (a judge that writes "1, 2, 3" whatever the list scores 1.0: random marks, the list being shown shuffled)."""
    first = total = 0
    chance = 0.0
    for u, cands, marked in zip(marks["user"], marks["candidates"], marks["marked"]):
        head = set(shown(cands, u)[:JUDGE_MARKS])
        first += sum(j in head for j in marked)
        total += len(marked)
        chance += len(marked) * min(JUDGE_MARKS, len(cands)) / max(len(cands), 1)
    return {"marks": total, "first_shown_share": first / total if total else None,
            "chance": chance / total if total else None}


def parse_marks(result, candidates, user: int) -> dict:
    """Numbers of the shown list -> item ids, in the answer's order, each once (repeats and numbers off the list
    counted); `candidates` are kept in the teacher's order (best first)."""
    cands, listed = [int(j) for j in candidates], shown(candidates, user)
    numbers = (result.value or {}).get("enjoy") if result.ok else None
    if not isinstance(numbers, list):
        return {"ok": False, "candidates": cands, "marked": [], "repeated": 0, "out_of_range": 0,
                "reasoning": None, "reason": result.reason or "invalid"}
    valid = [n for n in numbers if isinstance(n, int) and 1 <= n <= len(cands)]
    marked = list(dict.fromkeys(listed[n - 1] for n in valid))
    return {"ok": True, "candidates": cands, "marked": marked, "repeated": len(valid) - len(marked),
            "out_of_range": len(numbers) - len(valid), "reasoning": str(result.value.get("reasoning", "")),
            "reason": None}


def judge_dir(dataset: str, llm: str, split_id: str) -> Path:
    return artifacts_dir(dataset, "judge", safe_name(llm), f"split-{split_id}")


def read_marks(path: Path, context: str) -> pd.DataFrame:
    """The records of one prompt context (the last record of a user wins; a torn last line is ignored)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    frame = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    frame = frame[frame["context"] == context]
    return frame.drop_duplicates("user", keep="last").reset_index(drop=True)


def generate_marks(backend, users, prompts: JudgePrompts, out: Path, chunk: int = 32) -> dict:
    """Judge the `users` missing from out/marks.jsonl, appending each chunk as it finishes."""
    path = out / prompts.records_file
    have = set(read_marks(path, prompts.tag)["user"].astype(int))
    todo = [int(u) for u in users if int(u) not in have]
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        results = backend.generate_json([prompts.user_messages(u) for u in part], prompts.json_schema(),
                                        max_new_tokens=prompts.max_new_tokens,
                                        desc=f"judge {start + len(part)}/{len(todo)}")
        cached += sum(bool(getattr(res, "cached", False)) for res in results)
        append_lines(path, [json.dumps({"user": u, **prompts.parse_marks(res, u), "context": prompts.tag})
                            for u, res in zip(part, results)])
    return {"requested": len(users), "already_done": len(users) - len(todo), "generated": len(todo),
            "from_llm_cache": cached}


# ---------------------------------------------------------------- shipped marks, else artifacts, else made

def shipped_slot(prompts: JudgePrompts, split_id: str) -> str:
    return f"{safe_name(prompts.tag)}_{prompts.config.teacher}-{prompts.config.candidates}_split-{split_id}"


def shipped_key(data, backend, prompts: JudgePrompts, split_seed: int) -> dict:
    """What identifies shipped marks: model weights, schema, decoding budget, prompt context and template, the
    teacher's training settings, list length and display order, the training split."""
    schema = prompts.json_schema()
    _, total = field_budgets(schema, prompts.max_new_tokens)
    return {"model": backend.weights_identity, "schema": schema, "decoding": backend.decoding(total),
            "context": prompts.tag, "templates": outputs.template_hashes([prompts.template]),
            "teacher": json.loads(json.dumps(dataclasses.asdict(teacher_config(prompts.config.teacher)))),
            "candidates": prompts.config.candidates, "display_seed": DISPLAY_SEED, "split": train_fingerprint(data),
            "split_seed": split_seed}


def lookup_shipped(data, llm: str, prompts: JudgePrompts, split_seed: int, backend=None) -> outputs.Lookup:
    slot = shipped_slot(prompts, split_id_of(data))
    none = outputs.not_shipped(SHIPPED_KIND, data.name, llm, slot)
    if none is not None:
        return none
    return outputs.lookup(SHIPPED_KIND, data.name, llm, slot,
                          shipped_key(data, backend or make_backend(llm, progress=False), prompts, split_seed))


def judge_command(data, llm: str, config: JudgeConfig) -> str:
    return (f"hnlm judge --dataset {data.name} --llm {llm} --context {config.context} --teacher {config.teacher} "
            f"{split_options(data)}")


def marks_frame(rows) -> pd.DataFrame:
    """user, candidates, marked of every valid answer (invalid answers mark nothing), by user."""
    frame = pd.DataFrame(list(rows), columns=["user", "ok", "candidates", "marked"])
    frame["marked"] = [m if ok else [] for ok, m in zip(frame["ok"].astype(bool), frame["marked"])]
    return frame.sort_values("user").reset_index(drop=True)


def make_marks(data, llm: str, config: JudgeConfig, users=None, chunk: int = 32, backend=None,
               train_config: TrainConfig | None = None) -> dict:
    """Train (or load) the teacher, list and judge `users` (default all) into artifacts/; returns the counts."""
    backend = backend or make_backend(llm)
    lists, teacher = teacher_lists(data, config, train_config)
    prompts = JudgePrompts(data, config, llm, lists)
    users = range(data.n_users) if users is None else users
    gen = generate_marks(backend, users, prompts, judge_dir(data.name, llm, split_id_of(data)), chunk)
    return {**gen, "teacher": teacher, "backend": backend.identity,
            **{k: backend.last_stats.get(k) for k in ("seconds", "prompts_per_s", "tokens_per_s")}}


def obtain_marks(data, llm: str, config: JudgeConfig = JudgeConfig(), make: bool = False) -> pd.DataFrame:
    """Every user's marks (`marks_frame`): shipped ones of these settings, else complete ones in artifacts/, else
    made here when `make` (teacher: minutes; the LLM: hours on a CPU), else an error naming `hnlm judge`."""
    prompts = JudgePrompts(data, config, llm)
    found = lookup_shipped(data, llm, prompts, split_seed_of(data))
    if found.shipped is not None:
        outputs.report(SHIPPED_KIND, found.shipped.line())
        return marks_frame(found.shipped.rows())
    path = judge_dir(data.name, llm, split_id_of(data)) / prompts.records_file
    have = read_marks(path, prompts.tag)
    if len(have) < data.n_users:
        if not make:
            raise MissingInputError(f"{path} holds marks of {len(have)} of {data.n_users} users and none of these "
                                    f"settings are shipped ({found.reason}): run `{judge_command(data, llm, config)}` "
                                    f"first")
        make_marks(data, llm, config)
        have = read_marks(path, prompts.tag)
    outputs.report(SHIPPED_KIND, f"{len(have)} users' marks in {path} ({found.reason})")
    return marks_frame(have.to_dict("records"))


def shipped_prompts(data, key: dict, rows: list[dict]) -> JudgePrompts:
    """The prompts that made shipped marks of key `key`, over the lists their records hold."""
    context, profiles_llm, _ = parse_tag(key["context"])
    config = JudgeConfig(context, key["teacher"]["model"], key["candidates"])
    return JudgePrompts(data, config, profiles_llm or None, {int(r["user"]): r["candidates"] for r in rows})


def records_to_ship(data, llm: str, prompts: JudgePrompts) -> tuple[list[dict], Path]:
    """The records in artifacts/ as they ship, by user, with their prompt hashes (the lists are read from the
    records, so shipping needs no teacher)."""
    path = judge_dir(data.name, llm, split_id_of(data)) / prompts.records_file
    have = read_marks(path, prompts.tag).sort_values("user")
    shipping = JudgePrompts(data, prompts.config, prompts.profiles_llm, dict(zip(have["user"], have["candidates"])))
    return [{"user": int(r.user), **{f: plain(getattr(r, f)) for f in SHIPPED_FIELDS},
             "prompt_sha": outputs.prompt_sha(shipping.user_messages(int(r.user)))} for r in have.itertuples()], path
