"""Study steps that chain package modules for the LLM notebooks (02-04), sized by the study profile.

Limited runs (smoke/quick) cover the first N items/users. They never shrink the shared artefacts: profile
files are merged by id (new rows win), and SNS records are appended per pair by module 2 itself. Module 2
builds its official bank only for a complete budget; for a partial one the bank, grounding and quality of
the covered pairs are built here with module 2's own functions and kept in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import atomic_path, write_text
from hnlm.errors import MissingInputError
from hnlm.llm.encoders import get_text_encoder
from hnlm.methods import variant
from hnlm.semantic import judge, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, select_pairs, split_id_of
from hnlm.semantic.hnlmrec.banks import obtain_bank
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig, mean_pairwise_cosine
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig
from hnlm.semantic.hnlmrec.transfer import obtain_transfer
from hnlm.semantic.resources import SNS_BANK, SNS_GROUNDED, Resources, hnlmrec_bank, provide_inputs
from hnlm.study.experiments import run_grid


def generate_study_profiles(data, backend, llm: str, limit: int | None, split_seed: int = 0) -> dict:
    """Item profiles, then user profiles that quote them (module 1), for the first `limit` ids: shipped
    ones when their prompts match, else generated (cached, resumable)."""
    items, item_counts, item_profiles = pf.study_profiles(data, backend, llm, "item", limit, split_seed)
    users, user_counts, _ = pf.study_profiles(data, backend, llm, "user", limit, split_seed, item_profiles)
    return {"items": items, "users": users, "counts": [item_counts, user_counts]}


def words(texts) -> np.ndarray:
    return np.array([len(str(t).split()) for t in texts if isinstance(t, str)])


# ------------------------------------------------------------------------------- module 2 (SNS)

def study_sns(data, llm: str, limit_users: int | None, split_seed: int = 0, pair_seed: int = 0,
              encoder: str = "minilm", pool: int = 20, chunk: int = 32, context: str = "profile",
              official: bool = True, decoding: sns.Decoding = sns.SAMPLED) -> dict:
    """K = decoding.samples hard negatives per user (budget per-user:1) for the first `limit_users` users (all:
    None): generate (cached, resumable), embed, ground to the catalogue, measure. Returns the generation counts,
    quality measures, the records (every sample, column `sample`), a NegativeBank and the grounded frame. A
    complete run writes module 2's official artefacts unless `official` is False (a side analysis with another
    prompt context must not replace notebook 03's bank)."""

    budget = Budget.parse("per-user:1")
    pairs, builders, gen = generate_study_sns(data, llm, limit_users, split_seed, pair_seed, chunk, context, decoding)
    folder = sns.sns_dir(data.name, llm, split_id_of(data))
    enc = get_text_encoder(encoder)
    tags = [b.tag for b in builders]
    records = sns.read_samples(folder / "negatives.jsonl", tags)
    if limit_users is None and official:  # the complete budget: module 2's official artefacts
        built = sns.build_artifacts(data, llm, budget, enc, pair_seed, pool, contexts=tags,
                                    extra_meta={**builders[0].describe(), "generation": gen,
                                                "decoding": sns.decoding_meta(decoding)})
        bank, grounded = sns.load_bank(data, llm, budget), sns.load_grounded(data, llm, budget)
        return {"generation": gen, "quality": built["quality"], "bank": bank, "grounded": grounded,
                "records": pairs.merge(records, on=["user", "item"])}
    rec, ok, _ = sns.generated_records(data, llm, budget, pair_seed, records, True, "hnlm sns", len(tags))
    rec = rec[rec["user"].isin(pairs["user"])].reset_index(drop=True)
    ok = ok[ok["user"].isin(pairs["user"])].reset_index(drop=True)
    neg_emb, grounded, quality = sns.embed_and_ground(data, ok, enc, pool, pair_seed)
    quality.update(sns.copy_shares(data, sns.answered(rec)))
    quality.update({"requested": int(len(rec)), "samples": len(tags), "valid_json_rate": len(ok) / max(len(rec), 1),
                    "invalid": int(len(rec) - len(ok))})
    covered = "all-users" if limit_users is None else f"first-{limit_users}-users"
    bank = NegativeBank(neg_emb, ok["user"].to_numpy(int), ok["item"].to_numpy(int),
                        source=f"sns:{llm}:{tags[0]}:{covered}", samples=sns.sample_column(ok),
                        meta={"budget": f"per-user:1, {covered}", "llm": llm, "encoder": enc.identity,
                              "samples": len(tags), "sample_contexts": tags})
    return {"generation": gen, "quality": quality, "records": rec, "bank": bank, "grounded": grounded}


def generate_study_sns(data, llm: str, limit_users: int | None, split_seed: int = 0, pair_seed: int = 0,
                       chunk: int = 32, context: str = "profile", decoding: sns.Decoding = sns.SAMPLED):
    """The LLM half of `study_sns` (cached, resumable): (pairs, PromptBuilders of the samples, generation
    counts). Shipped negatives whose prompts match are copied into the artifacts' record file instead of being
    generated."""

    pairs = select_pairs(data, Budget.parse("per-user:1"), pair_seed)
    if limit_users is not None:
        pairs = pairs[pairs["user"] < limit_users]
    builders = sns.sample_builders(data, context, llm, pair_seed, decoding)
    return pairs, builders, sns.obtain_negatives(data, llm, pairs, builders, split_seed, chunk)


def study_judge(data, llm: str, wanted: bool) -> dict:
    """The judge's scores of every user when the profile has the judge (`judge.obtain_scores`: shipped, else
    artifacts/, else made here: the teacher, then one prompt per listed item)."""
    if not wanted:
        return {"skipped": "this profile has no judge (the judge setting of 07_false_negatives)"}
    scores = judge.obtain_scores(data, llm, make=True)
    return {"users": len(scores), "scored_pairs": int(scores["scores"].str.len().sum())}


def llm_size_resources(data, llm: str, conf: dict) -> tuple[Resources, dict]:
    """Notebook 11: what `llm` gives the CF grid (SNS bank with conf["context"] when "sns" is in
    conf["methods"], HNLMRec banks of conf["signals"]) and what describes its outputs (SNS quality,
    fine-tuning losses, how collinear the emitted vectors are). Notebook 03's official SNS artefacts stay."""
    resources, info = Resources(), {"llm": llm}
    if "sns" in conf["methods"]:
        out = study_sns(data, llm, conf["limit_users"], conf["split_seed"], context=conf["context"],
                        official=False, decoding=sns.DECODINGS[conf["decoding"]])
        resources.provide(SNS_BANK, out["bank"])
        q = out["quality"]
        info.update({"sns_valid_json_rate": q["valid_json_rate"], "sns_distinct_texts": q["distinct_texts_share"],
                     "sns_false_hard_negatives": q["false_hard_negative_share"],
                     "sns_sim_to_positive": q["sim_to_positive_mean"],
                     "sns_generated_now": out["generation"]["generated"]})
    finetune = {s: study_hnlmrec(data, llm, s, conf["hnlmrec"], conf["split_seed"]) for s in conf["signals"]}
    for s, (summary, bank) in finetune.items():
        resources.provide(hnlmrec_bank(s), bank)
        info.update({f"{s}_loss_first5": summary["loss_first5_mean"], f"{s}_loss_last5": summary["loss_last5_mean"],
                     f"{s}_pairwise_cosine": mean_pairwise_cosine(bank.emb)})
    return resources, info


def llm_size_runs(data, conf: dict, seeds, out_dir: Path) -> tuple[list[dict], pd.DataFrame]:
    """Notebook 11: RNS once, then each LLM's methods (labelled <method>@<llm>) over that LLM's outputs, and a
    frame describing what each LLM produced."""
    results = run_grid(data, conf["backbones"], ["rns"], seeds, conf, out_dir)
    outputs = []
    for llm in conf["llms"]:
        resources, info = llm_size_resources(data, llm, conf)
        outputs.append(info)
        methods = [variant(m, label=f"{m}@{llm}") for m in conf["methods"]]
        methods += [variant("hnlmrec", label=f"hnlmrec-{s}@{llm}", signal=s) for s in conf["signals"]]
        results += run_grid(data, conf["backbones"], methods, seeds, conf, Path(out_dir) / f"llm_{llm}", resources)
    return results, pd.DataFrame(outputs)


def save_sns(out: dict, folder: Path) -> None:
    """Keep the bank and grounding of a study run in its run folder (notebook 04 trains with them)."""
    bank = out["bank"]
    bank.save(folder / "sns_bank.npz")
    write_text(folder / "sns_bank.json", json.dumps({"source": bank.source, "meta": bank.meta}))
    with atomic_path(folder / "sns_grounded.parquet") as tmp:
        out["grounded"].to_parquet(tmp)


def load_sns(folder: Path):
    """(NegativeBank, grounded frame) saved by `save_sns`."""
    if not (folder / "sns_bank.npz").exists():
        raise MissingInputError(f"{folder / 'sns_bank.npz'} is missing: run notebook 03_sns first")
    info = json.loads((folder / "sns_bank.json").read_text())
    bank = NegativeBank.load(folder / "sns_bank.npz", info["source"], info["meta"])
    return bank, pd.read_parquet(folder / "sns_grounded.parquet")


def semantic_resources(folder: Path, data, llm: str) -> Resources:
    """What LLM-based methods of the CF grid train with: notebook 03's bank and grounding (from the run folder:
    a smoke or quick profile's covers its first users only), and the rest from `provide_inputs`, the provider
    `hnlm train` uses too (RLMRec-Con's text embeddings, the CF teachers' mined negatives: made only if a method
    asks; module 4's banks: notebooks give those of their profile with `with_hnlmrec_banks`)."""
    bank, grounded = load_sns(folder)
    return provide_inputs(data, llm).provide(SNS_BANK, bank).provide(SNS_GROUNDED, grounded)


def with_hnlmrec_banks(resources: Resources | None, banks: dict) -> Resources:
    """`resources` plus module 4's emitted-vector banks by CF signal (input `hnlmrec_bank(signal)`)."""
    res = resources if resources is not None else Resources()
    for signal, bank in banks.items():
        res.provide(hnlmrec_bank(signal), bank)
    return res


# ------------------------------------------------------------------------------ module 4 (HNLMRec)

def hnlmrec_config(llm: str, signal: str, conf: dict) -> RunConfig:
    """Module 4's RunConfig from a profile's "hnlmrec" block (one place, so 05 and 10 share one run): its keys
    override FinetuneConfig's and RunConfig's fields of the same names ("teacher_epochs": TeacherConfig's)."""
    ft = FinetuneConfig(llm=llm, cf_signal=signal, **fields_in(FinetuneConfig, conf))
    teacher = TeacherConfig(**({"epochs": conf["teacher_epochs"]} if "teacher_epochs" in conf else {}))
    return RunConfig(finetune=ft, teacher=teacher, **fields_in(RunConfig, conf))


def fields_in(config_cls, conf: dict) -> dict:
    """The entries of `conf` that name plain fields of a settings dataclass."""
    names = {f.name for f in dataclasses.fields(config_cls)} - {"finetune", "teacher", "mining", "llm", "cf_signal"}
    return {k: v for k, v in conf.items() if k in names}


def study_hnlmrec(data, llm: str, signal: str, conf: dict, split_seed: int = 0) -> tuple[dict, NegativeBank]:
    """Module 4's bank of the run a profile's "hnlmrec" block `conf` describes (`banks.obtain_bank`: shipped, else
    made here); returns (summary with its "loss_history", NegativeBank of emitted embeddings)."""
    return obtain_bank(data, hnlmrec_config(llm, signal, conf), split_seed)


def study_transfer(source, target, llm: str, signal: str, conf: dict, split_seed: int = 0) -> tuple[dict, NegativeBank]:
    """HNLMRec fine-tuned on `source` with conf["hnlmrec"] (reused when notebook 05 ran with the same
    settings, else fine-tuned here) emits embeddings for `target`'s first conf["target_users"] users,
    untuned; the target's CF signal comes from a teacher trained on the target's training split
    (conf["target_teacher"]). `conf` is notebook 10's settings. Returns (summary, NegativeBank)."""
    return obtain_transfer(source, target, hnlmrec_config(llm, signal, conf["hnlmrec"]), conf["target_users"],
                           TeacherConfig(**conf["target_teacher"]), split_seed)


FINETUNE_TIMINGS = ("s_per_step", "examples_per_s", "embedding_pass_s", "queries", "total_s")


def finetune_frame(finetune: dict) -> pd.DataFrame:
    """Notebook 05's table of `study_hnlmrec`'s outputs by CF signal ({signal: (summary, bank)}): one row per
    signal with its examples, steps, mean loss over the first and last five logged steps, timings, bank rows."""
    return pd.DataFrame([{"signal": s, "examples": f["examples"], "steps": f["steps"],
                          "loss_first5_mean": f["loss_first5_mean"], "loss_last5_mean": f["loss_last5_mean"],
                          **{k: f["timings"][k] for k in FINETUNE_TIMINGS}, "bank_rows": len(bank)}
                         for s, (f, bank) in finetune.items()])


def transfer_frame(transfer: dict) -> pd.DataFrame:
    """Notebook 10's table of `study_transfer`'s outputs by CF signal ({signal: (summary, bank)}): one row per
    signal with the source run, whether it was fine-tuned here, coverage of the target, its teacher, timings."""
    return pd.DataFrame([{"signal": s, "source_run": t["source_run"], "finetuned_here": t["finetuned_here"],
                          "queries": t["queries"], "bank_rows": t["bank_rows"], "users_embedded": t["users_embedded"],
                          "target_users": t["users"], "teacher_epochs": t["teacher"]["epochs"],
                          "teacher_valid_recall@20": t["teacher"]["valid_recall@20_recorded_only"],
                          **t["timings"]} for s, (t, _) in transfer.items()])
