"""Filling the shipped LLM outputs (hnlm.semantic.outputs); listing and checking them is hnlm.study.verify.

`publish_study` copies the outputs of `hnlm study --llm-only` from artifacts/ into outputs/ with manifests; it
runs right after those stages in the same process (`hnlm study --llm-only --publish`), so the files are the
ones the current prompts produced and `made_with` describes the machine that made them. Each output's key, slot
and record format come from the module that makes it (profiles, sns, hnlmrec.banks, hnlmrec.transfer); this
module decides which outputs a profile ships.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from hnlm.data import first_users, load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.semantic import judge, outputs, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import Budget, select_pairs, split_id_of
from hnlm.semantic.hnlmrec import banks, transfer
from hnlm.semantic.hnlmrec.adapters import attach_adapter, run_final, split_of_slot
from hnlm.semantic.hnlmrec.queries import Teacher
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, bank_files, loss_history, run_folder
from hnlm.study.llm_outputs import JUDGE, LLM_SIZE, STAGES, TARGET_DATASET, block_users, sns_settings
from hnlm.study.pipeline import hnlmrec_config
from hnlm.study.settings import settings


def incomplete(what: str, profile: str, dataset: str, llm: str, stage: str) -> MissingInputError:
    return MissingInputError(f"{what}: run `hnlm study --llm-only --profile {profile} --dataset {dataset} "
                             f"--llm {llm} --stages {stage}` first")


def publish_study(profile: str, dataset: str, llm: str, stages=STAGES, root: Path | None = None,
                  signals=None, sns_block: int | None = None, sns_decoding: str | None = None) -> list[str]:
    """Publish every finished LLM output of `stages` under `profile` (fine-tuning stages: of `signals`, default
    the profile's; sns: the users of `sns_block` if given, `llm_outputs.block_users`, decoded as `sns_decoding`
    says, default the profile's); returns one report line per output. An output already shipped with the same
    key is left as it is."""
    seed = settings(profile, "01_data")["split_seed"]
    data = load_dataset(dataset, seed=seed)
    info = outputs.made_with(llm)
    lines = []
    if "profiles" in stages:
        lines += publish_profiles(data, llm, profile, seed, info, root)
    if "sns" in stages:
        users = None if sns_block is None else block_users(data.n_users, sns_block)
        lines += publish_sns(data, llm, profile, sns_settings(profile, sns_decoding), info, root, users)
    if "judge" in stages and settings(profile, JUDGE)["judge"]:
        lines.append(publish_judge(data, llm, profile, seed, outputs.made_with(llm, dtype=judge.SCORING_DTYPE), root))
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
            lines += [f"{llm} {line}" for line in publish_sns(data, llm, profile, conf, info, root)]
        lines += [f"{llm} " + publish_hnlmrec(data, llm, s, conf["hnlmrec"], profile, seed, info, root)
                  for s in conf["signals"]]
    return lines


def publish_profiles(data, llm, profile, seed, info, root) -> list[str]:
    backend = make_backend(llm, progress=False)
    lines, item_profiles = [], None
    for kind in ("item", "user"):
        n = data.n_items if kind == "item" else data.n_users
        found = pf.lookup_shipped(data, backend, llm, kind, range(n), seed, item_profiles)
        if found.shipped is not None:
            item_profiles = pf.summaries(found.rows) if kind == "item" else item_profiles
            lines.append(f"profiles-{kind}: already {found.shipped.line()}")
            continue
        rows, path = pf.records_to_ship(data, llm, kind, seed, item_profiles)
        if len(rows) != n:
            raise incomplete(f"{path} holds {len(rows)} of {n} {kind} profiles", profile, data.name, llm, "profiles")
        mpath = outputs.publish_records(f"profiles-{kind}", data.name, llm, pf.profiles_slot(split_id_of(data)), rows,
                                        pf.shipped_key(data, backend, kind, seed), info,
                                        {"profile": profile, "split_seed": seed}, root)
        lines.append(f"profiles-{kind}: {len(rows)} records -> {mpath}")
        if kind == "item":
            item_profiles = pf.summaries(rows)
    return lines


def publish_sns(data, llm, profile, conf, info, root, users: int | None = None) -> list[str]:
    """Ship each sample of conf["decoding"] as its own output (its slot and key name its sampling seed and
    sample index); `users`: the records of the first `users` users only (a block of `hnlm study --llm-only
    --publish`, replaced by the next, larger one; the manifest records `users`)."""
    if conf["limit_users"] is not None:
        raise incomplete(f"profile {profile} makes SNS negatives for the first {conf['limit_users']} users only; "
                         f"ship the complete set", "full", data.name, llm, "sns")
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    pairs = pairs if users is None else pairs[pairs["user"] < users]
    decoding = sns.DECODINGS[conf["decoding"]]
    builders = sns.sample_builders(data, conf["context"], llm, 0, decoding)
    backend = make_backend(llm, progress=False, **decoding.backend_options())
    lines = []
    for builder in builders:
        found = sns.lookup_shipped(data, llm, builder, pairs, conf["split_seed"], backend)
        what = f"sns-negatives sample {builder.sample}" if decoding.samples > 1 else "sns-negatives"
        if found.shipped is not None:
            lines.append(f"{what}: already {found.shipped.line()}")
            continue
        rows, path = sns.records_to_ship(data, llm, builder, pairs)
        if len(rows) != len(pairs):
            raise incomplete(f"{path} holds {len(rows)} of {len(pairs)} pairs of sample {builder.sample}", profile,
                             data.name, llm, "sns")
        mpath = outputs.publish_records(sns.SHIPPED_KIND, data.name, llm,
                                        sns.shipped_slot(builder, split_id_of(data)), rows,
                                        sns.shipped_key(data, backend, builder, conf["split_seed"]), info,
                                        {"profile": profile, "split_seed": conf["split_seed"],
                                         "sample": builder.sample, "samples": decoding.samples,
                                         "users": users or data.n_users}, root)
        lines.append(f"{what}: {len(rows)} records -> {mpath}")
    return lines


def publish_judge(data, llm, profile, seed, info, root) -> str:
    """The judge's scores of every user at the default settings (`judge.JudgeConfig`, what the methods read)."""
    prompts = judge.JudgePrompts(data, judge.JudgeConfig(), llm)
    backend = judge.scoring_backend(llm, progress=False)
    found = judge.lookup_shipped(data, llm, prompts, seed, backend)
    if found.shipped is not None:
        return f"{judge.SHIPPED_KIND}: already {found.shipped.line()}"
    rows, path = judge.records_to_ship(data, llm, prompts)
    if len(rows) != data.n_users:
        raise incomplete(f"{path} holds scores of {len(rows)} of {data.n_users} users", profile, data.name, llm,
                         "judge")
    mpath = outputs.publish_records(judge.SHIPPED_KIND, data.name, llm, judge.shipped_slot(prompts, split_id_of(data)),
                                    rows, judge.shipped_key(data, backend, prompts, seed), info,
                                    {"profile": profile, "split_seed": seed}, root)
    return f"{judge.SHIPPED_KIND}: {len(rows)} records -> {mpath}"


def run_bank_files(folder: Path, cfg: RunConfig, what: str, profile, dataset, llm, stage) -> tuple[dict, NegativeBank]:
    """(bank meta, bank) of the embedding pass of `cfg` in a run or transfer folder."""
    npz, meta = bank_files(folder, cfg)
    if not (npz.exists() and meta.exists()):
        raise incomplete(f"{npz} ({what}) is missing", profile, dataset, llm, stage)
    return json.loads(meta.read_text()), NegativeBank.load(npz, source=what)


def publish_hnlmrec(data, llm, signal, conf, profile, seed, info, root) -> str:
    cfg = hnlmrec_config(llm, signal, conf)
    found = banks.lookup_shipped(data, cfg, seed)
    if found.shipped is not None:
        added = add_adapter(found.shipped)
        return f"hnlmrec-bank {signal}: already {found.shipped.line()}" + (f"; {added}" if added else "")
    split_id = split_id_of(data)
    folder = run_folder(data.name, cfg, split_id)
    final = run_final(folder)
    if final is None:
        raise incomplete(f"{folder / 'final'} (the {signal} run's adapter, shipped with its bank) is missing",
                         profile, data.name, llm, "hnlmrec")
    bank_meta, bank = run_bank_files(folder, cfg, f"{signal} fine-tuning run", profile, data.name, llm, "hnlmrec")
    summary = {**json.loads((folder / "summary.json").read_text()), "loss_history": loss_history(folder),
               "run": folder.name}
    mpath = outputs.publish_vectors(banks.SHIPPED_KIND, data.name, llm, banks.shipped_slot(cfg, split_id), bank,
                                    banks.shipped_key(data, cfg, seed), info,
                                    {"profile": profile, "split_seed": seed, "summary": summary,
                                     "bank_meta": {**bank_meta, "run": folder.name}}, root)
    adapter = attach_adapter(mpath, final)
    return (f"hnlmrec-bank {signal}: {len(bank)} vectors of {bank.dim} -> {mpath}, adapter "
            f"{adapter['file']} ({adapter['bytes'] / 2**20:.1f} MiB, float16)")


def add_adapter(bank: outputs.Shipped) -> str | None:
    """Ship the float16 adapter of a shipped bank's fine-tuning run (from its final/ in artifacts/) when its
    manifest has none; the bank's vectors and key stay as they are. Returns a report line, None when it had one."""
    m = bank.manifest
    if "adapter" in m:
        return None
    cfg = banks.run_config(m["key"]["settings"])
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
    found = transfer.lookup_transfer(source, target, target_cfg, teacher, seed)
    if found.shipped is not None:
        return f"transfer-bank {signal}: already {found.shipped.line()}"
    split_id = split_id_of(target)  # transfer_bank's source run and folder
    src = run_folder(source.name, cfg, split_id)
    folder = transfer.transfer_dir(target.name, source.name, src, split_id)
    bank_meta, bank = run_bank_files(folder, target_cfg, f"transfer to {target.name}", profile, source.name, llm,
                                     "transfer")
    summary = {"source": source.name, "target": target.name, "source_run": str(src), "folder": str(folder),
               "queries": len(bank), "users_embedded": int(len(np.unique(bank.users))), "users": target.n_users,
               "teacher": Teacher.load(folder / "teacher.npz").meta, "timings": {}}
    slot = transfer.transfer_slot(source.name, target_cfg, split_id)
    key = transfer.transfer_key(source, target, target_cfg, teacher, seed)
    mpath = outputs.publish_vectors(transfer.SHIPPED_KIND, target.name, llm, slot, bank, key,
                                    info, {"profile": profile, "split_seed": seed, "source_dataset": source.name,
                                           "target_dataset": TARGET_DATASET,
                                           "target_first_users": conf["target_first_users"],
                                           "summary": summary, "bank_meta": bank_meta}, root)
    return f"transfer-bank {signal}: {len(bank)} vectors of {bank.dim} -> {mpath}"
