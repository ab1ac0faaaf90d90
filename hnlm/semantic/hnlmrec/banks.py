"""Module 4's emitted-vector banks as LLM outputs: the shipped bank of a fine-tuning run's settings, else the run
on this machine (re-embedded with the shipped adapter when only that is here), else a fine-tune.

A bank ships in outputs/ (hnlm.semantic.outputs, kind "hnlmrec-bank") keyed by the run's settings (what
`run.settings_key` hashes, plus the embedding pass), the query template and the training split, because its
inputs (teacher rankings) are made inside the run. Slots end in "split-<split id>" (`split_id_of`: the seed, and
the kind unless random), as artefact folders do.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from hnlm.errors import MissingInputError
from hnlm.llm.models import weights_identity
from hnlm.semantic import outputs
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, split_id_of, template_path, train_fingerprint
from hnlm.semantic.hnlmrec.adapters import find_adapter
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.queries import MiningConfig
from hnlm.semantic.hnlmrec.run import (
    RunConfig,
    TeacherConfig,
    bank_tag,
    embed_bank,
    finetune_command,
    finished_summary,
    load_bank,
    loss_history,
    run_finetune,
    run_folder,
)

SHIPPED_KIND = "hnlmrec-bank"


def run_settings(cfg: RunConfig) -> dict:
    """The settings that change the fine-tuned model and its queries (as `settings_key`), plus the pass; the
    inverse of `run_config`."""
    d = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as stored in manifests
    d.pop("infer_batch", None)
    d["finetune"].pop("save_steps", None)
    return d


def run_config(settings: dict) -> RunConfig:
    """The RunConfig a shipped bank's key records (`run_settings`' inverse)."""
    s = settings
    ft = FinetuneConfig(**{**s["finetune"], "lora_targets": tuple(s["finetune"]["lora_targets"])})
    return RunConfig(finetune=ft, teacher=TeacherConfig(**s["teacher"]), mining=MiningConfig(**s["mining"]),
                     context=s["context"], profiles_llm=s["profiles_llm"], infer_budget=s["infer_budget"],
                     infer_users=s["infer_users"], pair_seed=s["pair_seed"])


def shipped_slot(cfg: RunConfig, split_id: str) -> str:
    ft, bank = cfg.finetune, bank_tag(cfg.infer_budget, cfg.infer_users)
    return f"{ft.cf_signal}_{Budget.parse(ft.budget).tag}_{bank}_split-{split_id}"


def query_templates(*datasets) -> dict:
    """{file: sha256} of the query templates of `datasets` (part of a bank's key)."""
    return outputs.template_hashes([template_path("hnlmrec", d.name) for d in datasets])


def shipped_key(data, cfg: RunConfig, split_seed: int) -> dict:
    """What identifies a bank: the model weights, the run's settings and embedding pass, the query template,
    the training split."""
    return {"model": weights_identity(cfg.finetune.llm), "settings": run_settings(cfg),
            "bank": bank_tag(cfg.infer_budget, cfg.infer_users), "templates": query_templates(data),
            "split": train_fingerprint(data), "split_seed": split_seed}


def lookup_shipped(data, cfg: RunConfig, split_seed: int) -> outputs.Lookup:
    return outputs.lookup(SHIPPED_KIND, data.name, cfg.finetune.llm, shipped_slot(cfg, split_id_of(data)),
                          shipped_key(data, cfg, split_seed))


def bank_source(cfg: RunConfig) -> str:
    return f"hnlmrec:{cfg.finetune.llm}:{cfg.finetune.cf_signal}"


def bank_meta(cfg: RunConfig) -> dict:
    ft = cfg.finetune
    return {"llm": ft.llm, "cf_signal": ft.cf_signal, "budget": ft.budget, "infer_budget": cfg.infer_budget,
            "infer_users": cfg.infer_users}


def obtain_bank(data, cfg: RunConfig, split_seed: int, fine_tune: bool = True) -> tuple[dict, NegativeBank]:
    """The shipped bank of these settings when there is one; else, when the run is not here but its adapter is
    shipped (the bank's queries changed), the bank embedded again with that adapter; else the finished run of
    these settings in artifacts/, or, with `fine_tune`, a fine-tune (resumable), else an error naming the
    `hnlm finetune` that makes it. Returns (summary with its "loss_history", NegativeBank of emitted vectors)."""
    ft = cfg.finetune
    found = lookup_shipped(data, cfg, split_seed)
    stage = f"{SHIPPED_KIND} {ft.cf_signal}"
    if found.shipped is not None:
        outputs.report(stage, found.shipped.line())
        summary = {**found.shipped.manifest["summary"], "folder": str(found.shipped.path.parent),
                   "bank": str(found.shipped.path), "shipped": True}
        return summary, found.shipped.bank(bank_source(cfg), bank_meta(cfg))
    adapter = find_adapter(data.name, cfg, split_id_of(data))
    if adapter is not None and adapter.source == "shipped":
        path = embed_bank(data, cfg, adapter.folder)
        outputs.report(stage, f"embedded with the shipped adapter in {path} ({found.reason})")
        summary = {**adapter.bank.manifest["summary"], "folder": str(path.parent), "bank": str(path),
                   "shipped": False, "adapter_from": "shipped"}
        return summary, run_bank(data, cfg, path.parent)
    if fine_tune:
        summary = run_finetune(data, cfg)
    else:
        summary = finished_summary(data, run_folder(data.name, cfg, split_id_of(data)), cfg)
        if summary is None:
            command = finetune_command(data, ft.llm, ft.cf_signal, ft.budget, cfg.infer_budget, cfg.infer_users)
            raise MissingInputError(f"no {ft.cf_signal} bank of these settings is shipped or in artifacts/ "
                                    f"({found.reason}): run `{command}` first (30-60 min on a CPU)")
    outputs.report(stage, f"{'cached' if summary.get('finetune_reused') else 'fine-tuned'} in {summary['folder']} "
                          f"({found.reason})")
    folder = summary["folder"]
    return {**summary, "loss_history": loss_history(folder), "shipped": False}, run_bank(data, cfg, folder)


def run_bank(data, cfg: RunConfig, folder) -> NegativeBank:
    """The bank in run folder `folder` of these settings on `data`'s split."""
    ft = cfg.finetune
    return load_bank(data, ft.llm, ft.cf_signal, ft.budget, cfg.infer_budget, run=Path(folder).name,
                     infer_users=cfg.infer_users)
