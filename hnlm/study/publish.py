"""Filling, listing and checking the shipped LLM outputs (hnlm.semantic.outputs).

`publish_study` copies the outputs of `hnlm study --llm-only` from artifacts/ into outputs/ with manifests; it
runs right after those stages in the same process (`hnlm study --llm-only --publish`), so the files are the
ones the current prompts produced and `made_with` describes the machine that made them. `verify` regenerates a
random sample of shipped records on this machine (a fresh, temporary LLM cache) and prints how well they agree.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.data import first_users, load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.semantic import outputs, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.common import Budget, select_pairs, split_id_of
from hnlm.semantic.hnlmrec.adapters import (
    Adapter,
    attach_adapter,
    check_adapter_file,
    run_adapter,
    run_final,
    split_of_slot,
)
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig, load_base
from hnlm.semantic.hnlmrec.infer import emit
from hnlm.semantic.hnlmrec.model import QueryEncoder
from hnlm.semantic.hnlmrec.pipeline import RunConfig, TeacherConfig, bank_tag, get_teacher, query_builder, run_folder
from hnlm.semantic.hnlmrec.queries import MiningConfig, Teacher, inference_queries
from hnlm.semantic.hnlmrec.transfer import transfer_dir
from hnlm.study import shipped
from hnlm.study.llm_outputs import LLM_SIZE, STAGES, TARGET_DATASET
from hnlm.study.pipeline import hnlmrec_config, loss_history
from hnlm.study.settings import settings


def incomplete(what: str, profile: str, dataset: str, llm: str, stage: str) -> MissingInputError:
    return MissingInputError(f"{what}: run `hnlm study --llm-only --profile {profile} --dataset {dataset} "
                             f"--llm {llm} --stages {stage}` first")


def publish_study(profile: str, dataset: str, llm: str, stages=STAGES, root: Path | None = None,
                  signals=None) -> list[str]:
    """Publish every finished LLM output of `stages` under `profile` (fine-tuning stages: of `signals`, default
    the profile's); returns one report line per output. An output already shipped with the same key is left
    as it is."""
    seed = settings(profile, "01_data")["split_seed"]
    data = load_dataset(dataset, seed=seed)
    info = outputs.made_with(llm)
    lines = []
    if "profiles" in stages:
        lines += publish_profiles(data, llm, profile, seed, info, root)
    if "sns" in stages:
        lines.append(publish_sns(data, llm, profile, settings(profile, "03_sns"), info, root))
    if "hnlmrec" in stages:
        conf = settings(profile, "05_hnlmrec")
        lines += [publish_hnlmrec(data, llm, s, conf["hnlmrec"], profile, seed, info, root)
                  for s in signals or conf["signals"]]
    if "transfer" in stages:
        conf = settings(profile, "10_generalisation")
        target = first_users(load_dataset(TARGET_DATASET, seed=seed), conf["target_first_users"])
        lines += [publish_transfer(data, target, llm, s, conf, profile, seed, info, root)
                  for s in signals or conf["signals"]]
    if "llm_size" in stages:
        lines += publish_llm_size(data, profile, seed, root)
    for line in lines:
        print(f"[publish] {line}", flush=True)
    return lines


def publish_llm_size(data, profile, seed, root) -> list[str]:
    """Notebook 11's outputs of each of its LLMs (llm_outputs.llm_size_outputs), each with its own made_with."""
    conf, lines = settings(profile, LLM_SIZE), []
    for llm in conf["llms"]:
        info = outputs.made_with(llm)
        if "sns" in conf["methods"]:
            lines.append(f"{llm} " + publish_sns(data, llm, profile, conf, info, root))
        lines += [f"{llm} " + publish_hnlmrec(data, llm, s, conf["hnlmrec"], profile, seed, info, root)
                  for s in conf["signals"]]
    return lines


def publish_profiles(data, llm, profile, seed, info, root) -> list[str]:
    backend = make_backend(llm, progress=False)
    lines, item_profiles, split_id = [], None, split_id_of(data)
    for kind in ("item", "user"):
        n = data.n_items if kind == "item" else data.n_users
        found = pf.lookup_shipped(data, backend, llm, kind, range(n), seed, item_profiles)
        if found.shipped is not None:
            item_profiles = pf.summaries(found.rows) if kind == "item" else item_profiles
            lines.append(f"profiles-{kind}: already {found.shipped.line()}")
            continue
        path = pf.profiles_path(data.name, llm, kind, split_id)
        frame = pd.read_json(path, lines=True) if path.exists() else pd.DataFrame(columns=["id"])
        if set(frame["id"].astype(int)) != set(range(n)):
            raise incomplete(f"{path} holds {len(frame)} of {n} {kind} profiles", profile, data.name, llm, "profiles")
        frame = frame.sort_values("id")
        shas = pf.prompt_hashes(data, kind, range(n), seed, item_profiles)
        rows = [{"id": int(r.id), "ok": bool(r.ok), "summarization": r.summarization, "reasoning": r.reasoning,
                 "reason": r.reason, "raw": None if r.ok else r.raw, "prompt_truncated": bool(r.prompt_truncated),
                 "prompt_sha": shas[(int(r.id),)]} for r in frame.itertuples()]
        mpath = outputs.publish_records(f"profiles-{kind}", data.name, llm, pf.profiles_slot(split_id), rows,
                                        pf.shipped_key(data, backend, kind, seed), info,
                                        {"profile": profile, "split_seed": seed}, root)
        lines.append(f"profiles-{kind}: {len(rows)} records -> {mpath}")
        if kind == "item":
            item_profiles = pf.summaries(rows)
    return lines


def publish_sns(data, llm, profile, conf, info, root) -> str:
    if conf["limit_users"] is not None:
        raise incomplete(f"profile {profile} makes SNS negatives for the first {conf['limit_users']} users only; "
                         f"ship the complete set", "full", data.name, llm, "sns")
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    builder = sns.PromptBuilder(data, conf["context"], llm, seed=0)
    backend = make_backend(llm, progress=False)
    found = shipped.lookup_sns(data, backend, llm, builder, pairs, conf["split_seed"])
    if found.shipped is not None:
        return f"sns-negatives: already {found.shipped.line()}"
    folder = sns.sns_dir(data.name, llm, split_id_of(data))
    done = pairs.merge(sns.read_negatives(folder / "negatives.jsonl", builder.tag), on=["user", "item"])
    if len(done) != len(pairs):
        raise incomplete(f"{folder / 'negatives.jsonl'} holds {len(done)} of {len(pairs)} pairs", profile, data.name,
                         llm, "sns")
    shas = shipped.sns_prompt_hashes(builder, pairs)
    rows = [{"user": int(r.user), "item": int(r.item), **{f: _plain(getattr(r, f)) for f in shipped.NEGATIVE_FIELDS},
             "prompt_sha": shas[(int(r.user), int(r.item))]} for r in done.itertuples()]
    mpath = outputs.publish_records("sns-negatives", data.name, llm, shipped.sns_slot(builder, split_id_of(data)),
                                    rows, shipped.sns_key(data, backend, builder, conf["split_seed"]), info,
                                    {"profile": profile, "split_seed": conf["split_seed"]}, root)
    return f"sns-negatives: {len(rows)} records -> {mpath}"


def _plain(value):
    """numpy scalars and NaN (pandas' missing values) as JSON values."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _bank_files(folder: Path, tag: str, what: str, profile, dataset, llm, stage) -> tuple[dict, tuple]:
    npz, meta = folder / f"bank_{tag}.npz", folder / f"bank_{tag}.json"
    if not (npz.exists() and meta.exists()):
        raise incomplete(f"{npz} ({what}) is missing", profile, dataset, llm, stage)
    return json.loads(meta.read_text()), shipped.bank_arrays(npz)


def publish_hnlmrec(data, llm, signal, conf, profile, seed, info, root) -> str:
    cfg = hnlmrec_config(llm, signal, conf)
    found = shipped.lookup_hnlmrec(data, cfg, seed)
    if found.shipped is not None:
        added = add_adapter(found.shipped)
        return f"hnlmrec-bank {signal}: already {found.shipped.line()}" + (f"; {added}" if added else "")
    split_id = split_id_of(data)
    folder = run_folder(data.name, cfg, split_id)
    final = run_final(folder)
    if final is None:
        raise incomplete(f"{folder / 'final'} (the {signal} run's adapter, shipped with its bank) is missing",
                         profile, data.name, llm, "hnlmrec")
    bank_meta, (users, items, emb) = _bank_files(folder, bank_tag(cfg.infer_budget, cfg.infer_users),
                                                 f"{signal} fine-tuning run", profile, data.name, llm, "hnlmrec")
    summary = {**json.loads((folder / "summary.json").read_text()), "loss_history": loss_history(folder),
               "run": folder.name}
    mpath = outputs.publish_vectors("hnlmrec-bank", data.name, llm, shipped.hnlmrec_slot(cfg, split_id), users, items,
                                    emb, shipped.hnlmrec_key(data, cfg, seed), info,
                                    {"profile": profile, "split_seed": seed, "summary": summary,
                                     "bank_meta": {**bank_meta, "run": folder.name}}, root)
    adapter = attach_adapter(mpath, final)
    return (f"hnlmrec-bank {signal}: {len(emb)} vectors of {emb.shape[1]} -> {mpath}, adapter "
            f"{adapter['file']} ({adapter['bytes'] / 2**20:.1f} MiB, float16)")


def add_adapter(bank: outputs.Shipped) -> str | None:
    """Ship the float16 adapter of a shipped bank's fine-tuning run (from its final/ in artifacts/) when its
    manifest has none; the bank's vectors and key stay as they are. Returns a report line, None when it had one."""
    m = bank.manifest
    if "adapter" in m:
        return None
    cfg = run_config(m["key"]["settings"])
    folder = run_folder(m["dataset"], cfg, split_of_slot(m["slot"]))
    final = run_final(folder)
    if final is None:
        raise MissingInputError(f"{folder / 'final'} (the adapter of the run that made shipped {bank.path.name}) is "
                                f"not here: run this where that run's artifacts are (HNLM_ARTIFACTS)")
    entry = attach_adapter(bank.manifest_path, final)
    return f"adapter {entry['file']} added ({entry['bytes'] / 2**20:.1f} MiB, float16, from {final})"


def add_adapters(root: Path | None = None) -> list[str]:
    """`add_adapter` for every shipped module-4 bank (transfer banks reuse their source run's adapter)."""
    lines = []
    for entry in outputs.shipped_entries(root):
        if entry.manifest["kind"] == "hnlmrec-bank":
            outputs.check_file(entry.manifest_path, entry.manifest)
            lines.append(f"{entry.manifest_path}: {add_adapter(entry) or 'adapter already shipped'}")
    return lines


def publish_transfer(source, target, llm, signal, conf, profile, seed, info, root) -> str:
    cfg = hnlmrec_config(llm, signal, conf["hnlmrec"])
    target_cfg = replace(cfg, infer_users=conf["target_users"])
    teacher = TeacherConfig(**conf["target_teacher"])
    found = shipped.lookup_transfer(source, target, target_cfg, teacher, seed)
    if found.shipped is not None:
        return f"transfer-bank {signal}: already {found.shipped.line()}"
    split_id = split_id_of(target)  # transfer_bank's source run and folder
    src = run_folder(source.name, cfg, split_id)
    folder = transfer_dir(target.name, source.name, src, split_id)
    bank_meta, (users, items, emb) = _bank_files(folder, bank_tag(target_cfg.infer_budget, target_cfg.infer_users),
                                                 f"transfer to {target.name}", profile, source.name, llm, "transfer")
    summary = {"source": source.name, "target": target.name, "source_run": str(src), "folder": str(folder),
               "queries": len(users), "users_embedded": int(len(np.unique(users))), "users": target.n_users,
               "teacher": Teacher.load(folder / "teacher.npz").meta, "timings": {}}
    slot = shipped.transfer_slot(source.name, target_cfg, split_id)
    key = shipped.transfer_key(source, target, target_cfg, teacher, seed)
    mpath = outputs.publish_vectors("transfer-bank", target.name, llm, slot, users, items, emb, key,
                                    info, {"profile": profile, "split_seed": seed, "source_dataset": source.name,
                                           "target_dataset": TARGET_DATASET,
                                           "target_first_users": conf["target_first_users"],
                                           "summary": summary, "bank_meta": bank_meta}, root)
    return f"transfer-bank {signal}: {len(emb)} vectors of {emb.shape[1]} -> {mpath}"


# ------------------------------------------------------------------------------------------ listing

def list_outputs(root: Path | None = None, dataset: str | None = None, llm: str | None = None) -> pd.DataFrame:
    """One row per shipped output: kind, dataset, llm, slot, records, size (and its adapter's), made with, and
    its check (the adapter's too)."""
    rows = []
    for entry in outputs.shipped_entries(root, dataset, llm):
        m = entry.manifest
        adapter = m.get("adapter")
        try:
            outputs.check_file(entry.manifest_path, m)
            (entry.rows() if m["kind"] in outputs.GENERATION_KINDS else entry.arrays())
            if adapter:
                check_adapter_file(entry.manifest_path, m)
            status = "ok"
        except outputs.ShippedOutputError as err:
            status = f"DAMAGED: {err}"
        rows.append({"kind": m["kind"], "dataset": m["dataset"], "llm": m["llm"], "slot": m["slot"],
                     "records": m["records"], "kib": round(m["bytes"] / 1024, 1),
                     "adapter_kib": round(adapter["bytes"] / 1024, 1) if adapter else 0.0,
                     "made_with": outputs.describe(m["made_with"]), "check": status})
    return pd.DataFrame(rows, columns=["kind", "dataset", "llm", "slot", "records", "kib", "adapter_kib", "made_with",
                                       "check"])


# ------------------------------------------------------------------------------------------ verification

def verify(sample: int, root: Path | None = None, dataset: str | None = None, llm: str | None = None,
           seed: int = 0) -> list[dict]:
    """Regenerate `sample` random records of every shipped output on this machine; one result per output."""
    results = []
    entries = outputs.shipped_entries(root, dataset, llm)
    if not entries:
        print(f"[verify] nothing shipped under {root or outputs.outputs_root()}: fill it with "
              f"`hnlm study --llm-only --publish --profile full` on a GPU")
    for entry in entries:
        outputs.check_file(entry.manifest_path, entry.manifest)
        kind = entry.manifest["kind"]
        check = verify_generations if kind in outputs.GENERATION_KINDS else verify_vectors
        result = {"kind": kind, "slot": entry.manifest["slot"], **check(entry, sample, seed, root)}
        print(f"[verify] {kind} {entry.manifest['slot']}: {result['summary']}", flush=True)
        results.append(result)
    return results


def _sample(n: int, sample: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))


def _data_of(entry: outputs.Shipped):
    """The data an output was made from (a transfer target is the first N users of its dataset)."""
    m, seed = entry.manifest, entry.manifest["key"]["split_seed"]
    if "target_dataset" in m:
        return first_users(load_dataset(m["target_dataset"], seed=seed), m["target_first_users"]), seed
    return load_dataset(m["dataset"], seed=seed), seed


def generation_prompts(entry: outputs.Shipped, rows: list[dict], root):
    """(messages per row, schema, max_new_tokens as generation passes it, field of the main text)."""
    m = entry.manifest
    data, seed = _data_of(entry)
    if m["kind"] == "sns-negatives":
        base = sns_context(m)[0]  # "history" or "profile:<llm>"
        kind, _, profiles_llm = base.partition(":")
        builder = sns.PromptBuilder(data, kind, profiles_llm or None, seed=m["key"].get("prompt_seed", 0))
        return ([builder.messages(r["user"], r["item"]) for r in rows], sns.sns_schema(),
                sum(sns.FIELD_TOKENS.values()) + 16, "text")
    kind = m["kind"].split("-")[1]
    item_profiles = None
    if kind == "user":
        items = outputs.find("profiles-item", m["dataset"], m["llm"], m["slot"], root)
        if items is None:
            raise MissingInputError(f"shipped user profiles of {m['dataset']} need the shipped item profiles "
                                    f"(their prompts quote them); none are shipped")
        item_profiles = pf.summaries(items.rows())
    prompts = pf.ProfilePrompts(data, seed, item_profiles)
    return [prompts.messages(kind, r["id"]) for r in rows], pf.profile_schema(), None, "summarization"


def sns_context(manifest: dict) -> tuple[str, str]:
    """(prompt context, decoding) of shipped SNS negatives, from their context tag
    "<history | profile:<llm>>|<template>-<prompt hash>|<greedy | sample-...>" (sns.PromptBuilder.tag)."""
    parts = manifest["key"]["context"].split("|")
    return parts[0], parts[-1]


def verify_generations(entry: outputs.Shipped, sample: int, seed: int, root) -> dict:
    decoding = sns_context(entry.manifest)[1] if entry.manifest["kind"] == "sns-negatives" else "greedy"
    if decoding != "greedy":
        return {"sampled": 0, "regenerated": 0,
                "summary": f"not regenerated: made with sampled decoding ({decoding}), whose draws depend on the "
                           f"batch they were made in; verify compares greedy generations only"}
    rows = entry.rows()
    picked = [rows[i] for i in _sample(len(rows), sample, seed)]
    messages, schema, max_new_tokens, main = generation_prompts(entry, picked, root)
    same_prompt = [outputs.prompt_sha(msg) == r["prompt_sha"] for msg, r in zip(messages, picked)]
    todo = [(msg, r) for (msg, r), same in zip(zip(messages, picked), same_prompt) if same]
    with tempfile.TemporaryDirectory() as tmp:
        backend = make_backend(entry.manifest["llm"], cache_path=Path(tmp) / "verify.jsonl", progress=False)
        results = backend.generate_json([msg for msg, _ in todo], schema, max_new_tokens=max_new_tokens,
                                        desc="verify") if todo else []
    fields = ["ok", main, "reasoning"]
    fresh = [sns.parse_answer(res) if main == "text" else
             {"ok": res.ok, **{f: (res.value or {}).get(f) for f in (main, "reasoning")}} for res in results]
    agree = {f: sum(new[f] == old[f] for new, (_, old) in zip(fresh, todo)) for f in fields}
    prefix = [shared_prefix_share(new[main], old[main]) for new, (_, old) in zip(fresh, todo)]
    now = outputs.made_with(entry.manifest["llm"])
    n = len(todo)
    share = (agree[main] / n) if n else None
    summary = (f"{n} of {len(picked)} sampled records regenerated ({len(picked) - n} prompts changed since shipping); "
               f"exact {main} {agree[main]}/{n}, " + ", ".join(f"{f} {agree[f]}/{n}" for f in fields if f != main)
               + (f"; {main} identical for the first {np.mean(prefix):.0%} of its characters on average (median "
                  f"{np.median(prefix):.0%}) before the texts diverge" if n else "")
               + f"; shipped made with {outputs.describe(entry.made_with)}, regenerated with {outputs.describe(now)}")
    return {"sampled": len(picked), "regenerated": n, "prompts_changed": len(picked) - n, "exact_text_share": share,
            "field_matches": agree, "shared_prefix_shares": prefix, "made_with": entry.made_with, "now": now,
            "summary": summary}


def shared_prefix_share(new: str | None, old: str | None) -> float:
    """How much of the shipped text `old` a regeneration reproduces before it first differs (1.0: identical).
    Greedy decoding diverges once a near-tie between two tokens flips, which a different batch shape (padding,
    kernel blocking) can cause in bf16; a late divergence says the model and prompt are the same."""
    new, old = new or "", old or ""
    if new == old:
        return 1.0
    return len(os.path.commonprefix([new, old])) / max(len(old), len(new))


def run_config(settings_dict: dict) -> RunConfig:
    """The RunConfig a shipped bank's key records."""
    s = settings_dict
    ft = FinetuneConfig(**{**s["finetune"], "lora_targets": tuple(s["finetune"]["lora_targets"])})
    return RunConfig(finetune=ft, teacher=TeacherConfig(**s["teacher"]), mining=MiningConfig(**s["mining"]),
                     context=s["context"], profiles_llm=s["profiles_llm"], infer_budget=s["infer_budget"],
                     infer_users=s["infer_users"], pair_seed=s["pair_seed"])


def verify_vectors(entry: outputs.Shipped, sample: int, seed: int, root) -> dict:
    """Re-embed sampled query pairs with the run's adapter (the run's in artifacts/, else the shipped float16
    one); a teacher absent here is trained again (CF only: minutes)."""
    m = entry.manifest
    cfg = run_config(m["key"]["settings"])
    data, _ = _data_of(entry)
    split_id = split_id_of(data)  # a transfer target's, as transfer_bank names its source run
    source = m.get("source_dataset", m["dataset"])
    try:
        adapter = run_adapter(source, cfg, split_id, root)
    except MissingInputError as err:
        return {"sampled": 0, "regenerated": 0, "summary": f"not re-embedded: {err}"}
    run = run_folder(source, cfg, split_id)
    if m["kind"] == "transfer-bank":
        teacher = get_teacher(data, TeacherConfig(**m["key"]["teacher"]), transfer_dir(m["dataset"], source, run,
                                                                                      split_id))
    else:
        teacher = get_teacher(data, cfg.teacher, run)
    return reembed(entry, data, cfg, adapter, teacher, sample, seed)


def reembed(entry: outputs.Shipped, data, cfg: RunConfig, adapter: Adapter, teacher: Teacher, sample: int,
            seed: int) -> dict:
    a = entry.arrays()
    rows = _sample(len(a["emb"]), sample, seed)
    lm, tok = load_base(cfg.finetune)
    qset = inference_queries(data, query_builder(data, teacher, cfg, tok), Budget.parse(cfg.infer_budget),
                             cfg.pair_seed, max_users=cfg.infer_users).set_index(["user", "item"])
    keys = list(zip(a["users"][rows].tolist(), a["items"][rows].tolist()))
    texts = [qset.loc[k, "text"] for k in keys]
    encoder = QueryEncoder.from_saved(lm, adapter.folder)
    users, items = a["users"][rows], a["items"][rows]
    fresh = emit(encoder, tok, texts, teacher.user_emb[users], teacher.item_emb[items], batch_size=cfg.infer_batch,
                 max_length=cfg.finetune.max_length)
    old = a["emb"][rows]
    cos = np.einsum("nd,nd->n", fresh, old) / np.maximum(np.linalg.norm(fresh, axis=1) * np.linalg.norm(old, axis=1),
                                                         1e-12)
    now = outputs.made_with(entry.manifest["llm"])
    summary = (f"{len(rows)} vectors re-embedded with adapter {adapter.folder} ({adapter.source}): cosine to shipped "
               f"min {cos.min():.6f}, mean {cos.mean():.6f} (shipped in float16; made with "
               f"{outputs.describe(entry.made_with)}, re-embedded with {outputs.describe(now)})")
    return {"sampled": len(rows), "regenerated": len(rows), "adapter": adapter.source, "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()), "made_with": entry.made_with, "now": now, "summary": summary}
