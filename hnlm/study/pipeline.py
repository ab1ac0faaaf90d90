"""Study steps that chain package modules for the LLM notebooks (02-04), sized by the study profile.

Limited runs (smoke/quick) cover the first N items/users. They never shrink the shared artefacts: profile
files are merged by id (new rows win), and SNS records are appended per pair by module 2 itself. Module 2
builds its official bank only for a complete budget; for a partial one the bank, grounding and quality of
the covered pairs are built here with module 2's own functions and kept in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import atomic_path, write_npz, write_text
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.llm.encoders import get_text_encoder
from hnlm.methods import variant
from hnlm.semantic import outputs, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, select_pairs, split_id_of
from hnlm.semantic.hnlmrec.adapters import find_adapter
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.pipeline import RunConfig, TeacherConfig, embed_bank, load_bank, run_finetune
from hnlm.semantic.hnlmrec.transfer import transfer_bank
from hnlm.semantic.resources import Resources, provide_teachers
from hnlm.semantic.rlmrec import text_embeddings
from hnlm.study import shipped
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
              official: bool = True) -> dict:
    """One hard negative per user (budget per-user:1) for the first `limit_users` users (all: None):
    generate (cached, resumable), embed, ground to the catalogue, measure. Returns the generation counts,
    quality measures, the valid records, a NegativeBank and the grounded frame. A complete run writes
    module 2's official artefacts unless `official` is False (a side analysis with another prompt context
    must not replace notebook 03's bank)."""

    budget = Budget.parse("per-user:1")
    pairs, builder, gen = generate_study_sns(data, llm, limit_users, split_seed, pair_seed, chunk, context)
    folder = sns.sns_dir(data.name, llm, split_id_of(data))
    enc = get_text_encoder(encoder)
    if limit_users is None and official:  # the complete budget: module 2's official artefacts
        built = sns.build_artifacts(data, llm, budget, enc, pair_seed, pool, context=builder.tag,
                                    extra_meta={**builder.describe(), "generation": gen})
        bank, grounded = sns.load_bank(data, llm, budget), sns.load_grounded(data, llm, budget)
        quality = built["quality"]
        records = pairs.merge(sns.read_negatives(folder / "negatives.jsonl", builder.tag),
                              on=["user", "item"])
        return {"generation": gen, "quality": quality, "records": records, "bank": bank, "grounded": grounded}
    rec = pairs.merge(sns.read_negatives(folder / "negatives.jsonl", builder.tag), on=["user", "item"],
                      how="left")
    ok = rec[rec["ok"].fillna(False).astype(bool)].reset_index(drop=True)
    neg_emb = enc.encode(ok["text"].tolist()) if len(ok) else np.zeros((0, enc.dim), np.float32)
    item_emb = sns.item_embeddings(data, enc)
    users = ok["user"].to_numpy(int)
    nearest, sim, top, nearest_any = sns.ground(neg_emb, users, item_emb, data, pool)
    quality = sns.quality(data, ok, neg_emb, sns.short_embeddings(data, enc), nearest, nearest_any, top,
                          seed=pair_seed)
    quality.update({"requested": int(len(rec)), "valid_json_rate": len(ok) / max(len(rec), 1),
                    "invalid": int(len(rec) - len(ok))})
    covered = "all-users" if limit_users is None else f"first-{limit_users}-users"
    bank = NegativeBank(neg_emb, users, ok["item"].to_numpy(int), source=f"sns:{llm}:{builder.tag}:{covered}",
                        meta={"budget": f"per-user:1, {covered}", "llm": llm, "encoder": enc.identity})
    grounded = pd.DataFrame({"user": users, "item": ok["item"].astype(int), "text": ok["text"],
                             "nearest": nearest.astype(int), "similarity": sim.astype(float),
                             "pool": [list(map(int, p)) for p in top]})
    return {"generation": gen, "quality": quality, "records": rec, "bank": bank, "grounded": grounded}


def generate_study_sns(data, llm: str, limit_users: int | None, split_seed: int = 0, pair_seed: int = 0,
                       chunk: int = 32, context: str = "profile"):
    """The LLM half of `study_sns` (cached, resumable): (pairs, PromptBuilder, generation counts). Shipped
    negatives whose prompts match are copied into the artifacts' record file instead of being generated."""

    pairs = select_pairs(data, Budget.parse("per-user:1"), pair_seed)
    if limit_users is not None:
        pairs = pairs[pairs["user"] < limit_users]
    builder = sns.PromptBuilder(data, context, llm, seed=pair_seed)
    backend = make_backend(llm)
    folder = sns.sns_dir(data.name, llm, split_id_of(data))
    found = shipped.lookup_sns(data, backend, llm, builder, pairs, split_seed)
    if found.shipped is not None:
        copied = shipped.copy_into_cache(found.rows, folder, builder.tag)
        outputs.report("sns-negatives", f"{found.shipped.line(len(found.rows))}; {copied} records copied into "
                                        f"{folder / 'negatives.jsonl'}")
        gen = {"requested": len(pairs), "already_done": len(pairs), "generated": 0, "from_llm_cache": 0,
               "shipped": len(found.rows), "backend": found.shipped.manifest["key"]["model"],
               "made_with": found.shipped.made_with, "seconds": None, "prompts_per_s": None, "tokens_per_s": None}
        return pairs, builder, gen
    gen = sns.generate_negatives(data, backend, pairs, builder, folder, chunk=chunk)
    outputs.report("sns-negatives", f"{gen['already_done']} already in {folder / 'negatives.jsonl'}, "
                                    f"{gen['from_llm_cache']} from the LLM cache, generated "
                                    f"{gen['generated'] - gen['from_llm_cache']} ({found.reason})")
    gen["backend"] = backend.identity
    gen["shipped"] = 0
    gen.update({k: backend.last_stats.get(k) for k in ("seconds", "prompts_per_s", "tokens_per_s")})
    return pairs, builder, gen


def llm_size_resources(data, llm: str, conf: dict) -> tuple[Resources, dict]:
    """Notebook 11: what `llm` gives the CF grid (SNS bank with conf["context"] when "sns" is in
    conf["methods"], HNLMRec banks of conf["signals"]) and what describes its outputs (SNS quality,
    fine-tuning losses, how collinear the emitted vectors are). Notebook 03's official SNS artefacts stay."""
    resources, info = Resources(), {"llm": llm}
    if "sns" in conf["methods"]:
        out = study_sns(data, llm, conf["limit_users"], conf["split_seed"], context=conf["context"],
                        official=False)
        resources.provide("sns_bank", out["bank"])
        q = out["quality"]
        info.update({"sns_valid_json_rate": q["valid_json_rate"], "sns_distinct_texts": q["distinct_texts_share"],
                     "sns_false_hard_negatives": q["false_hard_negative_share"],
                     "sns_sim_to_positive": q["sim_to_positive_mean"],
                     "sns_generated_now": out["generation"]["generated"]})
    finetune = {s: study_hnlmrec(data, llm, s, conf["hnlmrec"], conf["split_seed"]) for s in conf["signals"]}
    for s, (summary, bank) in finetune.items():
        resources.provide(f"hnlmrec_bank:{s}", bank)
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


def mean_pairwise_cosine(emb: np.ndarray) -> float:
    """Mean cosine between distinct rows: near 1 means the vectors barely differ (a collapsed encoder)."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(x)
    total = x.sum(0)
    return float((total @ total - n) / max(n * (n - 1), 1))


def save_sns(out: dict, folder: Path) -> None:
    """Keep the bank and grounding of a study run in its run folder (notebook 04 trains with them)."""
    bank = out["bank"]
    write_npz(folder / "sns_bank.npz", emb=bank.emb, users=bank.users, items=bank.items)
    write_text(folder / "sns_bank.json", json.dumps({"source": bank.source, "meta": bank.meta}))
    with atomic_path(folder / "sns_grounded.parquet") as tmp:
        out["grounded"].to_parquet(tmp)


def load_sns(folder: Path):
    """(NegativeBank, grounded frame) saved by `save_sns`."""
    if not (folder / "sns_bank.npz").exists():
        raise MissingInputError(f"{folder / 'sns_bank.npz'} is missing: run notebook 03_sns first")
    z = np.load(folder / "sns_bank.npz")
    info = json.loads((folder / "sns_bank.json").read_text())
    bank = NegativeBank(z["emb"], z["users"], z["items"], info["source"], info["meta"])
    return bank, pd.read_parquet(folder / "sns_grounded.parquet")


def semantic_resources(folder: Path, data, llm: str) -> Resources:
    """What LLM-based methods of the CF grid train with: notebook 03's bank and grounding (from the run
    folder), and RLMRec-Con's text embeddings and the CF teachers' mined negatives (both made only if a
    method asks for them)."""
    bank, grounded = load_sns(folder)
    res = Resources(sns_bank=bank, sns_grounded=grounded)
    for source in ("profiles", "metadata"):
        res.provide(f"rlmrec_text:{source}",
                    loader=lambda s=source: text_embeddings(data, s, get_text_encoder("minilm"), llm))
    return provide_teachers(res, data)


def with_hnlmrec_banks(resources: Resources | None, banks: dict) -> Resources:
    """`resources` plus module 4's emitted-vector banks by CF signal (resource "hnlmrec_bank:<signal>")."""
    res = resources if resources is not None else Resources()
    for signal, bank in banks.items():
        res.provide(f"hnlmrec_bank:{signal}", bank)
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


def study_hnlmrec(data, llm: str, signal: str, conf: dict, split_seed: int = 0) -> tuple[dict, object]:
    """The shipped bank of these settings when there is one; else, when the run is not here but its adapter is
    shipped (the bank's queries changed), the bank embedded again with that adapter; else fine-tune (resumable; a
    finished run with the same settings is reused by module 4's own cache of checkpoints and banks); returns
    (summary with its "loss_history", NegativeBank of emitted embeddings)."""
    cfg = hnlmrec_config(llm, signal, conf)
    found = shipped.lookup_hnlmrec(data, cfg, split_seed)
    stage = f"hnlmrec-bank {signal}"
    if found.shipped is not None:
        outputs.report(stage, found.shipped.line())
        bank = shipped.shipped_bank(found.shipped, f"hnlmrec:{llm}:{signal}",
                                    {"llm": llm, "cf_signal": signal, "budget": cfg.finetune.budget,
                                     "infer_budget": cfg.infer_budget, "infer_users": cfg.infer_users})
        summary = {**found.shipped.manifest["summary"], "folder": str(found.shipped.path.parent),
                   "bank": str(found.shipped.path), "shipped": True}
        return summary, bank
    adapter = find_adapter(data.name, cfg, split_id_of(data))
    if adapter is not None and adapter.source == "shipped":
        return reembed_with_shipped_adapter(data, cfg, adapter, stage, found.reason)
    summary = run_finetune(data, cfg)
    outputs.report(stage, f"{'cached' if summary.get('finetune_reused') else 'fine-tuned'} in {summary['folder']} "
                          f"({found.reason})")
    bank = load_bank(data, llm, signal, cfg.finetune.budget, cfg.infer_budget, run=Path(summary["folder"]).name,
                     infer_users=cfg.infer_users)
    return {**summary, "loss_history": loss_history(summary["folder"]), "shipped": False}, bank


def reembed_with_shipped_adapter(data, cfg: RunConfig, adapter, stage: str, reason: str) -> tuple[dict, object]:
    """The bank of a run that is not here but whose adapter is shipped (its shipped bank no longer fits, e.g. the
    query template changed): emitted again with that adapter, no fine-tuning; the summary is the run's."""
    ft = cfg.finetune
    path = embed_bank(data, cfg, adapter.folder)
    outputs.report(stage, f"embedded with the shipped adapter in {path} ({reason})")
    bank = load_bank(data, ft.llm, ft.cf_signal, ft.budget, cfg.infer_budget, run=path.parent.name,
                     infer_users=cfg.infer_users)
    return {**adapter.bank.manifest["summary"], "folder": str(path.parent), "bank": str(path), "shipped": False,
            "adapter_from": "shipped"}, bank


def study_transfer(source, target, llm: str, signal: str, conf: dict, split_seed: int = 0) -> tuple[dict, object]:
    """HNLMRec fine-tuned on `source` with conf["hnlmrec"] (reused when notebook 05 ran with the same
    settings, else fine-tuned here) emits embeddings for `target`'s first conf["target_users"] users,
    untuned; the target's CF signal comes from a teacher trained on the target's training split
    (conf["target_teacher"]). `conf` is notebook 10's settings. Returns (summary, NegativeBank)."""
    cfg = hnlmrec_config(llm, signal, conf["hnlmrec"])
    target_cfg = replace(cfg, infer_users=conf["target_users"])
    teacher = TeacherConfig(**conf["target_teacher"])
    found = shipped.lookup_transfer(source, target, target_cfg, teacher, split_seed)
    stage = f"transfer-bank {signal} {source.name}->{target.name}"
    if found.shipped is not None:
        outputs.report(stage, found.shipped.line())
        bank = shipped.shipped_bank(found.shipped, f"hnlmrec-transfer:{source.name}->{target.name}:{llm}:{signal}",
                                    {"llm": llm, "cf_signal": signal, "source_dataset": source.name,
                                     "infer_budget": cfg.infer_budget, "infer_users": target_cfg.infer_users})
        return {**found.shipped.manifest["summary"], "finetuned_here": False, "bank_rows": len(bank),
                "shipped": True}, bank
    finetuned_here = find_adapter(source.name, cfg, split_id_of(target)) is None  # the run transfer_bank reads
    if finetuned_here:
        run_finetune(source, cfg)
    bank, summary = transfer_bank(target, source.name, target_cfg, teacher)
    outputs.report(stage, f"embedded in {summary['folder']} ({found.reason})")
    return {**summary, "finetuned_here": finetuned_here, "bank_rows": len(bank), "shipped": False}, bank


def loss_history(folder: Path) -> list[float]:
    """Training losses logged by the Hugging Face trainer in the latest checkpoint of a fine-tuning run."""
    states = sorted(Path(folder).glob("checkpoints/checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    return [r["loss"] for r in json.loads(states[-1].read_text())["log_history"] if "loss" in r]
