"""The LLM as a judge of false negatives: how likely is a user to enjoy each of its hardest unseen items?

DNS(M,N)'s negatives are the user's held-out positives several times as often as chance (notebook 07): the items
CF scores highest among the unseen include the ones the user will like. A small LLM cannot be trusted to name a
film, but it can attempt a yes/no question about a real one. For each user:
  list   the JUDGE_CANDIDATES unseen items a converged DNS(M,N) teacher (`teacher_config`, `hnlm.cf.frozen`)
         scores highest, among the items with a training interaction: training data only (the teacher is
         selected on validation by the trainer, as every model of the study; its lists never read valid/test);
  prompt one per listed item (`JudgePrompts.messages`): the user (module-1 profile, or training titles and side
         information), then "Would this user enjoy <title (year): genres>? Answer Yes or No.";
  score  log P(yes) - log P(no) of the answer's first token (`LocalBackend.yes_no_scores`: the user's prompts
         share their beginning, which runs once; the items run as one batch over its KV cache), in float32
         (`scoring_backend`): a user's scores spread little (qwen2.5-0.5b: sd 0.08 within a list), and bf16
         rounding moved them by 0.045 on average, changing the top 3 of 3 of 4 users (measured).
Pointwise, so no position bias by construction: an item's score does not depend on the other items or their
order. The design it replaces had the LLM write 3 numbers of the list shown (a JSON schema); SmolLM2-135M
(32 users) and qwen2.5-0.5b (8 users) wrote the first three numbers shown for every user: random marks.
Every listed item's score is stored; the marks are the `marks` top-scoring items of a list (`top_marks`), a
setting of `hnlm.methods.dnsmn_judge`, which also measures their precision on validation items.
`teacher_agreement`: how far the scores follow the teacher's ranking of the list (Spearman).
Measured (validation precision of the top 3, tiny samples): qwen2.5-0.5b 0.167 on 16 users, chance 0.166, the
teacher's own top 3 0.250; SmolLM2 0.167 on 32 users, chance 0.133, teacher's top 3 0.177. The scores follow the
item more than the user (SmolLM2: an item's centred score varies 0.06 across users, 0.15 between items).

Records, under artifacts/<dataset>/judge/<llm>/split-<split id>/scores.jsonl (append-only, resumable, one per
user, each with its list). Shipped scores (hnlm.semantic.outputs kind "judge-scores") are found by key: model,
answer tokens and precision, prompt context, template, teacher settings and training split; as for module 4's banks, the
list is made inside the producer, so a fresh clone uses shipped scores without training the teacher
(`obtain_scores`: shipped, else artifacts/, else made here when asked, else an error naming `hnlm judge`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from hnlm.analysis.false_negatives import top_similar_marks
from hnlm.atomic import append_lines
from hnlm.cf.config import TrainConfig
from hnlm.cf.frozen import dnsmn_config, frozen_model
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.paths import artifacts_dir
from hnlm.semantic import outputs
from hnlm.semantic.common import safe_name, split_id_of, split_options, split_seed_of, train_fingerprint
from hnlm.semantic.sns import GREEDY, PromptBuilder, parse_tag, short_text, training_pool

JUDGE_CANDIDATES = 20    # items listed per user
JUDGE_MARKS = 3          # default number of marks per user: the top-scoring items of its list (dnsmn-judge's `marks`)
TEACHER_CANDIDATES, TEACHER_TOP = 32, 5   # the teacher's DNS(M,N) settings (DNSMN's defaults)
SHIPPED_KIND = "judge-scores"
SCORING_DTYPE = torch.float32
SCORING = f"yes-no-{str(SCORING_DTYPE).removeprefix('torch.')}"   # the decoding part of the records' tag
RECORD_COLUMNS = ["user", "candidates", "scores", "context"]
SHIPPED_FIELDS = ("candidates", "scores")


@dataclass(frozen=True)
class JudgeConfig:
    """What makes a set of scores besides the LLM: the user context, the teacher and the list's length."""

    context: str = "profile"          # "profile" (module-1 profiles of the LLM) or "history" (training titles)
    teacher: str = TrainConfig.model  # backbone of the converged DNS(M,N) teacher that ranks the candidates
    candidates: int = JUDGE_CANDIDATES


def teacher_config(backbone: str) -> TrainConfig:
    """The converged DNS(M,N) teacher (the same model `dnsmn-static` mines from at its defaults)."""
    return dnsmn_config(backbone, TrainConfig.lr, TrainConfig.batch_size, TEACHER_CANDIDATES, TEACHER_TOP)


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
    """One yes/no prompt per (user, listed item); lists: [users, n] item ids or {user: ids} (None when only the
    tag is needed). Context, profiles and tag as module 2's builder; the tag's decoding part is SCORING."""

    template_prefix = "judge"
    records_file = "scores.jsonl"
    columns = RECORD_COLUMNS

    def __init__(self, data, config: JudgeConfig, profiles_llm: str | None = None, lists=None):
        self.config, self.lists = config, lists
        super().__init__(data, config.context, profiles_llm, seed=0, decoding=SCORING)

    @staticmethod
    def decoding_of(tag: str):   # scored, not sampled: no draw seeds, no copy filter
        return GREEDY

    def json_schema(self) -> None:   # nothing is generated: the answer is read from the next token's distribution
        return None

    def messages(self, user: int, item: int) -> list[dict]:
        text = self.user_template.format(user_profile=self.user_text(user), item=short_text(self.data, item))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def user_prompts(self, user: int) -> list[list[dict]]:
        """The prompts of a user's listed items, in the list's order."""
        return [self.messages(user, int(j)) for j in self.lists[user]]


def top_marks(scores: pd.DataFrame, marks: int) -> list[list[int]]:
    """Each user's `marks` top-scoring items of its list (ties in the teacher's order), aligned with `scores`."""
    return top_similar_marks(list(scores["candidates"]), [marks] * len(scores), list(scores["scores"]))


def teacher_agreement(scores: pd.DataFrame) -> dict:
    """Mean over users of the Spearman correlation between the LLM's scores and the teacher's ranking of the list
    (1: the LLM orders the list as the teacher, 0: unrelated; users whose scores are all equal are left out)."""
    rhos = [spearmanr(s, -np.arange(len(s))).statistic for s in scores["scores"] if len(set(s)) > 1]
    return {"users": len(rhos), "mean_spearman": float(np.mean(rhos)) if rhos else None,
            "share_positive": float(np.mean(np.asarray(rhos) > 0)) if rhos else None}


def scoring_backend(llm: str, **opts):
    """The backend that scores for the judge: a local model in SCORING_DTYPE (a server spec gets its own backend,
    whose `scoring` says in one line that it cannot score)."""
    return make_backend(llm, **opts) if llm.startswith("openai:") else make_backend(llm, dtype=SCORING_DTYPE,
                                                                                  **opts)


def judge_dir(dataset: str, llm: str, split_id: str) -> Path:
    return artifacts_dir(dataset, "judge", safe_name(llm), f"split-{split_id}")


def read_scores(path: Path, context: str) -> pd.DataFrame:
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


def score_users(backend, users, prompts: JudgePrompts, out: Path, chunk: int = 32) -> dict:
    """Score the listed items of the `users` missing from out/scores.jsonl, appending each chunk as it finishes."""
    path = out / prompts.records_file
    have = set(read_scores(path, prompts.tag)["user"].astype(int))
    todo = [int(u) for u in users if int(u) not in have]
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = pairs = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        scores = backend.yes_no_scores([prompts.user_prompts(u) for u in part],
                                       desc=f"judge {start + len(part)}/{len(todo)}")
        seconds, pairs = seconds + backend.last_stats["seconds"], pairs + backend.last_stats["prompts"]
        append_lines(path, [json.dumps({"user": u, "candidates": [int(j) for j in prompts.lists[u]],
                                        "scores": [float(x) for x in s], "context": prompts.tag})
                            for u, s in zip(part, scores)])
    return {"requested": len(users), "already_done": len(users) - len(todo), "scored_users": len(todo),
            "scored_pairs": pairs, "seconds": round(seconds, 1),
            "users_per_s": round(len(todo) / seconds, 3) if seconds else None,
            "pairs_per_s": round(pairs / seconds, 2) if seconds else None}


# ---------------------------------------------------------------- shipped scores, else artifacts, else made

def shipped_slot(prompts: JudgePrompts, split_id: str) -> str:
    return f"{safe_name(prompts.tag)}_{prompts.config.teacher}-{prompts.config.candidates}_split-{split_id}"


def shipped_key(data, backend, prompts: JudgePrompts, split_seed: int) -> dict:
    """What identifies shipped scores: model weights, answer tokens and precision, prompt context and template, the
    teacher's training settings, list length, the training split."""
    return {"model": backend.weights_identity, "scoring": backend.scoring(), "context": prompts.tag,
            "templates": outputs.template_hashes([prompts.template]),
            "teacher": json.loads(json.dumps(dataclasses.asdict(teacher_config(prompts.config.teacher)))),
            "candidates": prompts.config.candidates, "split": train_fingerprint(data), "split_seed": split_seed}


def lookup_shipped(data, llm: str, prompts: JudgePrompts, split_seed: int, backend=None) -> outputs.Lookup:
    slot = shipped_slot(prompts, split_id_of(data))
    none = outputs.not_shipped(SHIPPED_KIND, data.name, llm, slot)
    if none is not None:
        return none
    return outputs.lookup(SHIPPED_KIND, data.name, llm, slot,
                          shipped_key(data, backend or scoring_backend(llm, progress=False), prompts, split_seed))


def judge_command(data, llm: str, config: JudgeConfig) -> str:
    return (f"hnlm judge --dataset {data.name} --llm {llm} --context {config.context} --teacher {config.teacher} "
            f"{split_options(data)}")


def scores_frame(rows) -> pd.DataFrame:
    """user, candidates, scores (aligned with candidates) of every record, by user."""
    frame = pd.DataFrame(list(rows), columns=["user", "candidates", "scores"])
    return frame.sort_values("user").reset_index(drop=True)


def make_scores(data, llm: str, config: JudgeConfig, users=None, chunk: int = 32, backend=None,
                train_config: TrainConfig | None = None) -> dict:
    """Train (or load) the teacher, list and score `users` (default all) into artifacts/; returns the counts."""
    backend = backend or scoring_backend(llm)
    backend.scoring()    # a backend that cannot score fails before the teacher trains
    lists, teacher = teacher_lists(data, config, train_config)
    prompts = JudgePrompts(data, config, llm, lists)
    users = range(data.n_users) if users is None else users
    done = score_users(backend, users, prompts, judge_dir(data.name, llm, split_id_of(data)), chunk)
    return {**done, "teacher": teacher, "backend": backend.identity}


def obtain_scores(data, llm: str, config: JudgeConfig = JudgeConfig(), make: bool = False) -> pd.DataFrame:
    """Every user's scores (`scores_frame`): shipped ones of these settings, else complete ones in artifacts/, else
    made here when `make` (teacher: minutes; the LLM: 20 prompts per user), else an error naming `hnlm judge`."""
    prompts = JudgePrompts(data, config, llm)
    found = lookup_shipped(data, llm, prompts, split_seed_of(data))
    if found.shipped is not None:
        outputs.report(SHIPPED_KIND, found.shipped.line())
        return scores_frame(found.shipped.rows())
    path = judge_dir(data.name, llm, split_id_of(data)) / prompts.records_file
    have = read_scores(path, prompts.tag)
    if len(have) < data.n_users:
        if not make:
            raise MissingInputError(f"{path} holds scores of {len(have)} of {data.n_users} users and none of these "
                                    f"settings are shipped ({found.reason}): run `{judge_command(data, llm, config)}` "
                                    f"first")
        make_scores(data, llm, config)
        have = read_scores(path, prompts.tag)
    outputs.report(SHIPPED_KIND, f"{len(have)} users' scores in {path} ({found.reason})")
    return scores_frame(have.to_dict("records"))


def shipped_prompts(data, key: dict, rows: list[dict]) -> JudgePrompts:
    """The prompts that made shipped scores of key `key`, over the lists their records hold."""
    context, profiles_llm, _ = parse_tag(key["context"])
    config = JudgeConfig(context, key["teacher"]["model"], key["candidates"])
    return JudgePrompts(data, config, profiles_llm or None, {int(r["user"]): r["candidates"] for r in rows})


def records_to_ship(data, llm: str, prompts: JudgePrompts) -> tuple[list[dict], Path]:
    """The records in artifacts/ as they ship, by user, with the hash of each user's prompts (the lists are read
    from the records, so shipping needs no teacher)."""
    path = judge_dir(data.name, llm, split_id_of(data)) / prompts.records_file
    have = read_scores(path, prompts.tag).sort_values("user")
    shipping = JudgePrompts(data, prompts.config, prompts.profiles_llm, dict(zip(have["user"], have["candidates"])))
    return [{"user": int(r.user), **{f: getattr(r, f) for f in SHIPPED_FIELDS},
             "prompt_sha": outputs.prompt_sha(shipping.user_prompts(int(r.user)))} for r in have.itertuples()], path
