"""Generalisation: a query encoder fine-tuned on one dataset emits hard negatives for another, untuned.

The LoRA adapter, head and settings come from a finished `hnlm finetune` run on the source dataset (its
final/ folder, else the adapter shipped with its bank: hnlmrec.adapters). What cannot transfer is the
collaborative signal: CF ids (and so a teacher's vectors and rankings) mean nothing on another dataset,
so the target's CF signal comes from a teacher trained on the TARGET's training split
(fixed epochs, no validation selection, as for the source). Query texts are built the same way from the
target's training data; valid/test interactions are never read.

The source run is the one on the split with the target's split id (`split_id_of`: the seed, and the kind unless
random). Artefacts, under artifacts/<target>/hnlmrec-transfer/<source>-<run tag>/split-<split id>/:
  teacher.npz        the target's teacher
  bank_<tag>.npz     emitted embeddings per target query pair (+ .json: adapter, queries, source run)

A transfer bank ships in outputs/<target>/ (kind "transfer-bank"), keyed as the source run's bank (banks.py) plus
the source's training split, the target's teacher and both query templates; `obtain_transfer` uses it first.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from hnlm.atomic import make_dir
from hnlm.llm.models import weights_identity
from hnlm.paths import artifacts_dir
from hnlm.semantic import outputs
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, split_id_of, train_fingerprint
from hnlm.semantic.hnlmrec.adapters import find_adapter, run_adapter
from hnlm.semantic.hnlmrec.banks import query_templates, run_settings, shipped_slot
from hnlm.semantic.hnlmrec.finetune import load_base
from hnlm.semantic.hnlmrec.model import QueryEncoder
from hnlm.semantic.hnlmrec.queries import inference_queries
from hnlm.semantic.hnlmrec.run import (
    RunConfig,
    TeacherConfig,
    bank_tag,
    get_teacher,
    query_builder,
    read_bank,
    run_finetune,
    run_folder,
    save_bank_for,
)


def transfer_dir(target: str, source: str, source_folder: Path, split_id: str) -> Path:
    run_tag = f"{source_folder.parent.parent.name}-{source_folder.name}"  # <llm-signal-budget>-run-<hash>
    return make_dir(artifacts_dir(target, "hnlmrec-transfer", f"{source}-{run_tag}", f"split-{split_id}"))


def transfer_bank(target, source: str, cfg: RunConfig,
                  teacher: TeacherConfig | None = None) -> tuple[NegativeBank, dict]:
    """Embeddings that the encoder fine-tuned on `source` (settings `cfg`) emits for `target`'s query pairs
    (cfg.infer_budget, cfg.infer_users), with no further tuning; `teacher` configures the target's own
    teacher (default: cfg.teacher). Returns (bank, summary with counts and timings)."""
    split_id = split_id_of(target)
    adapter = run_adapter(source, cfg, split_id)
    src = run_folder(source, cfg, split_id)
    folder = transfer_dir(target.name, source, src, split_id)
    t0 = time.perf_counter()
    target_teacher = get_teacher(target, teacher or cfg.teacher, folder)
    t_teacher = time.perf_counter() - t0
    t1 = time.perf_counter()
    lm, tok = load_base(cfg.finetune)
    builder = query_builder(target, target_teacher, cfg, tok)
    qset = inference_queries(target, builder, Budget.parse(cfg.infer_budget), cfg.pair_seed,
                             max_users=cfg.infer_users)
    encoder = QueryEncoder.from_saved(lm, adapter.folder)
    save_bank_for(target, encoder, tok, qset, target_teacher, folder, cfg, adapter_dir=adapter.folder,
                  extra_meta={"source_dataset": source, "source_run": str(src)})
    t_infer = time.perf_counter() - t1
    ft = cfg.finetune
    bank = read_bank(target, folder, bank_tag(cfg.infer_budget, cfg.infer_users),
                     f"hnlmrec-transfer:{source}->{target.name}:{ft.llm}:{ft.cf_signal}",
                     {"llm": ft.llm, "cf_signal": ft.cf_signal, "source_dataset": source,
                      "source_run": src.name, "infer_budget": cfg.infer_budget, "infer_users": cfg.infer_users},
                     f"rm -r {folder} && hnlm study --llm-only --dataset {source} --llm {ft.llm} --stages transfer")
    summary = {"source": source, "target": target.name, "source_run": str(src), "adapter_from": adapter.source,
               "folder": str(folder), "queries": len(qset), "users_embedded": int(qset["user"].nunique()),
               "users": target.n_users, "context_counts": dict(builder.counts), "teacher": target_teacher.meta,
               "timings": {"teacher_s": t_teacher, "embedding_pass_s": t_infer}}
    return bank, summary


# ------------------------------------------------------------------------------------------ shipped, else made

SHIPPED_KIND = "transfer-bank"


def transfer_slot(source: str, cfg: RunConfig, split_id: str) -> str:
    return f"from-{source}_{shipped_slot(cfg, split_id)}"


def transfer_key(source, target, cfg: RunConfig, teacher: TeacherConfig, split_seed: int) -> dict:
    """`cfg` is the target's RunConfig (its infer_users), as `transfer_bank` takes it."""
    return {"model": weights_identity(cfg.finetune.llm), "source_dataset": source.name,
            "source_split": train_fingerprint(source), "settings": run_settings(cfg), "teacher": asdict(teacher),
            "bank": bank_tag(cfg.infer_budget, cfg.infer_users), "templates": query_templates(source, target),
            "split": train_fingerprint(target), "split_seed": split_seed}


def lookup_transfer(source, target, cfg: RunConfig, teacher: TeacherConfig, split_seed: int) -> outputs.Lookup:
    return outputs.lookup(SHIPPED_KIND, target.name, cfg.finetune.llm,
                          transfer_slot(source.name, cfg, split_id_of(target)),
                          transfer_key(source, target, cfg, teacher, split_seed))


def obtain_transfer(source, target, cfg: RunConfig, target_users: int | None, teacher: TeacherConfig,
                    split_seed: int) -> tuple[dict, NegativeBank]:
    """The shipped transfer bank of these settings, else the run `cfg` on `source` (reused, else fine-tuned
    here) emits embeddings for `target`'s first `target_users` users, untuned, with the target's teacher
    `teacher`. Returns (summary, NegativeBank)."""
    ft = cfg.finetune
    target_cfg = replace(cfg, infer_users=target_users)
    found = lookup_transfer(source, target, target_cfg, teacher, split_seed)
    stage = f"{SHIPPED_KIND} {ft.cf_signal} {source.name}->{target.name}"
    if found.shipped is not None:
        outputs.report(stage, found.shipped.line())
        bank = found.shipped.bank(f"hnlmrec-transfer:{source.name}->{target.name}:{ft.llm}:{ft.cf_signal}",
                                  {"llm": ft.llm, "cf_signal": ft.cf_signal, "source_dataset": source.name,
                                   "infer_budget": cfg.infer_budget, "infer_users": target_users})
        return {**found.shipped.manifest["summary"], "finetuned_here": False, "bank_rows": len(bank),
                "shipped": True}, bank
    finetuned_here = find_adapter(source.name, cfg, split_id_of(target)) is None  # the run transfer_bank reads
    if finetuned_here:
        run_finetune(source, cfg)
    bank, summary = transfer_bank(target, source.name, target_cfg, teacher)
    outputs.report(stage, f"embedded in {summary['folder']} ({found.reason})")
    return {**summary, "finetuned_here": finetuned_here, "bank_rows": len(bank), "shipped": False}, bank
