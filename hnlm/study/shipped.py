"""Keys and lookups of the study's shipped LLM outputs beyond profiles (see hnlm.semantic.outputs): module 2
SNS negatives, module 4 emitted-vector banks, and their transfer to another dataset.

SNS negatives are keyed by their prompts (one hash per (user, item) record), schema, decoding budgets and
template; vector banks by the fine-tuning run's settings (what `settings_key` hashes), the embedding pass,
the query template and the training splits, because their inputs (teacher rankings) are made inside the run.
Slots end in "split-<split id>" (`split_id_of`: the seed, and the kind unless random), as artefact folders do.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hnlm.llm.models import model_identity
from hnlm.llm.structured import field_budgets
from hnlm.semantic import outputs, sns
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, domain_of, safe_name, split_id_of, train_fingerprint
from hnlm.semantic.hnlmrec.pipeline import RunConfig, TeacherConfig, bank_tag
from hnlm.semantic.hnlmrec.queries import PROMPT_DIR as QUERY_PROMPT_DIR


def weights_identity(llm: str) -> str:
    """The model part of the LLM layer's identity (weights, not the dtype)."""
    return model_identity(llm).split("|")[0]


# ------------------------------------------------------------------------------------------ SNS negatives

def sns_slot(builder, split_id: str) -> str:
    return f"{safe_name(builder.tag)}_split-{split_id}"


def sns_key(data, backend, builder, split_seed: int) -> dict:
    schema = sns.sns_schema()
    _, total = field_budgets(schema, sum(sns.FIELD_TOKENS.values()) + 16)  # generate_negatives' budget
    template = sns.PROMPT_DIR / f"sns_{domain_of(data.name)}.txt"
    template = template if template.exists() else sns.PROMPT_DIR / "sns_item.txt"
    return {"model": backend.identity.split("|")[0], "schema": schema, "decoding": backend.decoding(total),
            "max_words": sns.MAX_WORDS, "context": builder.tag, "prompt_seed": builder.seed,
            "templates": outputs.template_hashes([template]),
            "split": train_fingerprint(data), "split_seed": split_seed}


def sns_prompt_hashes(builder, pairs) -> dict:
    return {(int(u), int(i)): outputs.prompt_sha(builder.messages(int(u), int(i)))
            for u, i in zip(pairs["user"], pairs["item"])}


def lookup_sns(data, backend, llm: str, builder, pairs, split_seed: int) -> outputs.Lookup:
    slot = sns_slot(builder, split_id_of(data))
    none = outputs.not_shipped("sns-negatives", data.name, llm, slot)
    if none is not None:
        return none
    return outputs.lookup("sns-negatives", data.name, llm, slot,
                          sns_key(data, backend, builder, split_seed), sns_prompt_hashes(builder, pairs),
                          id_fields=("user", "item"))


NEGATIVE_FIELDS = ("ok", "text", "reasoning", "reason", "words", "truncated")


def copy_into_cache(rows: list[dict], folder: Path, context: str) -> int:
    """Append shipped SNS records to artifacts' negatives.jsonl where it lacks them or holds other answers
    (the last record of a pair wins), so grounding and banks are built from the shipped answers."""
    have = sns.read_negatives(folder / "negatives.jsonl", context)
    known = {(int(r.user), int(r.item)): tuple(getattr(r, f) for f in NEGATIVE_FIELDS) for r in have.itertuples()}
    new = [r for r in rows if known.get((r["user"], r["item"])) != tuple(r[f] for f in NEGATIVE_FIELDS)]
    if new:
        with (folder / "negatives.jsonl").open("a") as fh:
            for r in new:
                fh.write(json.dumps({"user": r["user"], "item": r["item"], **{f: r[f] for f in NEGATIVE_FIELDS},
                                     "context": context}) + "\n")
    return len(new)


# ------------------------------------------------------------------------------------------ vector banks

def run_settings(cfg: RunConfig) -> dict:
    """The settings that change the fine-tuned model and its queries (as `settings_key`), plus the pass."""
    d = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as stored in manifests
    d.pop("infer_batch", None)
    d["finetune"].pop("save_steps", None)
    return d


def query_template(dataset: str) -> Path:
    path = QUERY_PROMPT_DIR / f"hnlmrec_{domain_of(dataset)}.txt"
    return path if path.exists() else QUERY_PROMPT_DIR / "hnlmrec_item.txt"


def hnlmrec_slot(cfg: RunConfig, split_id: str) -> str:
    ft = cfg.finetune
    bank = bank_tag(cfg.infer_budget, cfg.infer_users)
    return f"{ft.cf_signal}_{Budget.parse(ft.budget).tag}_{bank}_split-{split_id}"


def hnlmrec_key(data, cfg: RunConfig, split_seed: int) -> dict:
    return {"model": weights_identity(cfg.finetune.llm), "settings": run_settings(cfg),
            "bank": bank_tag(cfg.infer_budget, cfg.infer_users),
            "templates": outputs.template_hashes([query_template(data.name)]),
            "split": train_fingerprint(data), "split_seed": split_seed}


def transfer_slot(source: str, cfg: RunConfig, split_id: str) -> str:
    return f"from-{source}_{hnlmrec_slot(cfg, split_id)}"


def transfer_key(source, target, cfg: RunConfig, teacher: TeacherConfig, split_seed: int) -> dict:
    """`cfg` is the target's RunConfig (its infer_users), as `transfer_bank` takes it."""
    return {"model": weights_identity(cfg.finetune.llm), "source_dataset": source.name,
            "source_split": train_fingerprint(source), "settings": run_settings(cfg), "teacher": asdict(teacher),
            "bank": bank_tag(cfg.infer_budget, cfg.infer_users),
            "templates": outputs.template_hashes([query_template(source.name), query_template(target.name)]),
            "split": train_fingerprint(target), "split_seed": split_seed}


def shipped_bank(found: outputs.Shipped, source: str, meta: dict) -> NegativeBank:
    a = found.arrays()
    return NegativeBank(a["emb"], a["users"], a["items"], source=source,
                        meta={**meta, **found.manifest.get("bank_meta", {}), "shipped": str(found.path),
                              "made_with": found.made_with})


def lookup_hnlmrec(data, cfg: RunConfig, split_seed: int) -> outputs.Lookup:
    return outputs.lookup("hnlmrec-bank", data.name, cfg.finetune.llm, hnlmrec_slot(cfg, split_id_of(data)),
                          hnlmrec_key(data, cfg, split_seed))


def lookup_transfer(source, target, cfg: RunConfig, teacher: TeacherConfig, split_seed: int) -> outputs.Lookup:
    return outputs.lookup("transfer-bank", target.name, cfg.finetune.llm,
                          transfer_slot(source.name, cfg, split_id_of(target)),
                          transfer_key(source, target, cfg, teacher, split_seed))


def bank_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.load(path)
    return z["users"], z["items"], z["emb"]
