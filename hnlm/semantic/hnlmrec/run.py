"""`hnlm finetune` end to end: teacher CF -> fine-tuning set -> LoRA fine-tuning -> embedding pass -> bank.

Artefacts, under artifacts/<dataset>/hnlmrec/<llm>-<cf_signal>-<budget>/split-<split id>/run-<settings hash>/
(`split_id_of`: the seed, and the kind unless random; one folder per settings, so a smoke run and a full run never
share checkpoints):
  teacher.npz         teacher CF embeddings (training split, fixed epochs, no validation selection)
  examples.parquet    fine-tuning examples (user, item, neg, text)
  checkpoints/        Trainer checkpoints (adapter + heads + optimiser state): resumable
  final/              the fine-tuned adapter + heads (QueryEncoder.from_saved)
  bank_<tag>.npz      emitted embeddings per query pair (users, items, emb) for `hnlm train --sampler hnlmrec`
                      (<tag>: the embedding-pass budget, plus -users-N when only the first N users are embedded)
  summary.json        counts, losses, timings, identities (the teacher's training-split fingerprint, checked
                      before a finished run is reused), and `finetune_quality`: measured on
                      `quality_pairs` fine-tuning pairs held out of fine-tuning (training pairs, never
                      valid/test): rank of the teacher's hard negative among it + QUALITY_DISTRACTORS items
                      the user has not interacted with in training, under the emitted vector, and the mean
                      pairwise cosine of the emitted vectors (collapse shows as a cosine near 1)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hnlm.atomic import atomic_dir, atomic_path, make_dir, write_text
from hnlm.cf.frozen import frozen_model
from hnlm.cf.search import lr_protocol
from hnlm.cf.trainer import TrainConfig, train
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.paths import artifacts_dir
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import (
    Budget,
    check_split,
    safe_name,
    split_id_of,
    split_options,
    split_seed_of,
    train_fingerprint,
)
from hnlm.semantic.hnlmrec.config import FinetuneConfig, RunConfig, TeacherConfig  # noqa: F401
from hnlm.semantic.hnlmrec.finetune import PairDataset, finetune_quality, load_base, make_trainer
from hnlm.semantic.hnlmrec.queries import MiningConfig, QueryBuilder, Teacher, build_examples, inference_queries
from hnlm.semantic.hnlmrec.ranks import gather_ranks, processes
from hnlm.semantic.profiles import profiles_of
from hnlm.semantic.sns import item_embeddings

QUALITY_DISTRACTORS = 49  # distractors per held-out pair in finetune_quality (50 candidates, chance rank 25.5)


def run_dir(dataset: str, llm: str, cf_signal: str, budget: str, split_id: str) -> Path:
    """Parent of every run of these (llm, signal, budget, split: `split_id` from `split_id_of`); runs differ by
    their settings hash."""
    tag = f"{safe_name(llm)}-{cf_signal}-{Budget.parse(budget).tag}"
    return artifacts_dir(dataset, "hnlmrec", tag, f"split-{split_id}")


def finetune_command(data, llm: str, cf_signal: str, budget: str, infer_budget: str,
                     infer_users: int | None = None) -> str:
    """The `hnlm finetune` command that makes a run's bank on `data`'s split (its other settings: defaults)."""
    users = f" --infer-users {infer_users}" if infer_users is not None else ""
    return (f"hnlm finetune --dataset {data.name} --llm {llm} --cf-signal {cf_signal} --budget {budget} "
            f"--infer-budget {infer_budget}{users} {split_options(data)}")


def settings_key(cfg: "RunConfig") -> str:
    """Hash of everything that changes the fine-tuned model (not the embedding pass's batch)."""
    import hashlib
    d = _jsonable(asdict(cfg))
    for key in ("infer_batch", "infer_budget", "infer_users"):
        d.pop(key, None)
    d["finetune"].pop("save_steps", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def bank_tag(infer_budget: str, infer_users: int | None = None) -> str:
    """File tag of an embedding pass: its budget, and the user limit when there is one."""
    tag = Budget.parse(infer_budget).tag
    return tag if infer_users is None else f"{tag}-users-{infer_users}"


def bank_files(folder: Path, cfg: "RunConfig") -> tuple[Path, Path]:
    """(vectors, their meta) of the embedding pass of `cfg` in a run (or transfer) folder."""
    tag = bank_tag(cfg.infer_budget, cfg.infer_users)
    return Path(folder) / f"bank_{tag}.npz", Path(folder) / f"bank_{tag}.json"


def run_folder(dataset: str, cfg: "RunConfig", split_id: str) -> Path:
    ft = cfg.finetune
    return make_dir(run_dir(dataset, ft.llm, ft.cf_signal, ft.budget, split_id) / f"run-{settings_key(cfg)}")


def train_teacher(data, cfg: TeacherConfig) -> Teacher:
    """CF teacher on the training split: `cfg.epochs` epochs with evaluation only at the last, so no epoch is
    chosen on validation data (its valid score is recorded, never used); epochs None: a converged model
    (`converged_teacher`)."""
    import torch
    if cfg.epochs is None:
        return converged_teacher(data, cfg)
    tc = TrainConfig(model=cfg.model, epochs=cfg.epochs, lr=cfg.lr, dim=cfg.dim, seed=cfg.seed,
                     batch_size=cfg.batch_size, eval_every=cfg.epochs, patience=cfg.epochs + 1, sampler="rns")
    result = train(data, tc)
    with torch.no_grad():
        user, item = result["model"].propagate()
    meta = {**asdict(cfg), "train_fingerprint": train_fingerprint(data),
            "valid_recall@20_recorded_only": result["valid"].get("recall@20")}
    return Teacher(user.detach().cpu().numpy().astype(np.float32),
                   item.detach().cpu().numpy().astype(np.float32), meta)


def converged_teacher(data, cfg: TeacherConfig) -> Teacher:
    """The teacher trained to convergence: a stored `hnlm.cf.frozen` model of uniform sampling (early stopping on
    valid recall@20, lr-scaled validation and cap, the best epoch's state), shared with any other user of it."""
    config = TrainConfig(model=cfg.model, lr=cfg.lr, dim=cfg.dim, seed=cfg.seed, batch_size=cfg.batch_size,
                         sampler="rns", **lr_protocol(cfg.lr, TrainConfig.epochs))
    model = frozen_model(data, config)
    meta = {**asdict(cfg), "train_fingerprint": train_fingerprint(data), "best_epoch": model.summary["best_epoch"],
            "valid_recall@20_recorded_only": model.summary["valid"].get("recall@20")}
    return Teacher(model.user_emb, model.item_emb, meta)


def get_teacher(data, cfg: TeacherConfig, folder: Path) -> Teacher:
    path = folder / "teacher.npz"
    if path.exists():
        teacher = Teacher.load(path)
        stored = teacher.meta
        if stored.get("train_fingerprint") == train_fingerprint(data) and \
                all(stored.get(k) == v for k, v in asdict(cfg).items()):
            return teacher
    teacher = train_teacher(data, cfg)
    teacher.save(path)
    return teacher


def query_builder(data, teacher: Teacher, cfg: RunConfig, tokenizer) -> QueryBuilder:
    users, items = {}, {}
    if cfg.context == "profile":
        items, users = profiles_of(data, cfg.profiles_llm or cfg.finetune.llm)
        missing = sorted(set(range(data.n_users)) - set(users))
        if missing:
            raise MissingInputError(f"{len(missing)} users have no module-1 profile: run `hnlm profiles` "
                                    f"or use --context history")
    elif cfg.context != "history":
        raise UserFacingError(f"unknown context {cfg.context!r}: history or profile")
    builder = QueryBuilder(data, teacher, cfg.finetune.cf_signal, users, items, seed=cfg.pair_seed)
    return builder.fit_to(tokenizer, cfg.finetune.max_length)


def pair_dataset(ex, emb: np.ndarray, teacher: Teacher) -> PairDataset:
    users, items, neg = (ex[c].to_numpy(np.int64) for c in ("user", "item", "neg"))
    return PairDataset(ex["text"], emb[neg], emb[items], teacher.user_emb[users], teacher.item_emb[items])


def training_set(data, teacher: Teacher, cfg: RunConfig, encoder, tokenizer) -> tuple:
    """(examples frame with a `held_out` column, PairDataset of the rest, item embeddings, counts) from
    training interactions only; `quality_pairs` examples are held out of fine-tuning to measure it."""
    builder = query_builder(data, teacher, cfg, tokenizer)
    mining = MiningConfig(**{**asdict(cfg.mining), "seed": cfg.pair_seed})
    ex, counts = build_examples(data, teacher, builder, Budget.parse(cfg.finetune.budget), mining,
                                cfg.pair_seed)
    n_held = min(cfg.finetune.quality_pairs, len(ex) // 2)
    held = np.zeros(len(ex), bool)
    held[np.random.default_rng([cfg.pair_seed, 1]).choice(len(ex), n_held, replace=False)] = True
    ex["held_out"] = held
    emb = item_embeddings(data, encoder)
    counts = {**counts, "held_out_for_quality": int(n_held)}
    return ex, pair_dataset(ex[~held].reset_index(drop=True), emb, teacher), emb, counts


def measure_finetune(data, qe, tok, ex, emb: np.ndarray, teacher: Teacher, cfg: RunConfig) -> dict | None:
    """`finetune_quality` on the held-out examples (None when there are fewer than two)."""
    from hnlm.semantic.hnlmrec.infer import emit
    held = ex[ex["held_out"]].reset_index(drop=True)
    if len(held) < 2:
        return None
    users, items = held["user"].to_numpy(np.int64), held["item"].to_numpy(np.int64)
    q = emit(qe, tok, held["text"].tolist(), teacher.user_emb[users], teacher.item_emb[items],
             batch_size=cfg.infer_batch, max_length=cfg.finetune.max_length)
    rng = np.random.default_rng([cfg.pair_seed, 2])
    candidates = []
    for u, neg in zip(users, held["neg"]):
        pool = np.setdiff1d(np.arange(data.n_items), np.append(data.train_items(int(u)), neg))
        candidates.append(rng.choice(pool, min(QUALITY_DISTRACTORS, len(pool)), replace=False))
    width = min(map(len, candidates))
    return finetune_quality(q, emb, held["neg"].to_numpy(np.int64), np.stack([c[:width] for c in candidates]))


def run_finetune(data, cfg: RunConfig, resume: bool = True) -> dict | None:
    """The run's summary; None in the processes other than the main one of a multi-process launch (see
    hnlmrec.ranks: they train, the main process writes)."""
    import torch
    from transformers import TrainerState

    from hnlm.llm.encoders import get_text_encoder
    from hnlm.semantic.hnlmrec.infer import adapter_fingerprint
    from hnlm.semantic.hnlmrec.model import QueryEncoder

    ft = cfg.finetune
    procs = processes()
    folder = run_folder(data.name, cfg, split_id_of(data))
    done_before = finished_summary(data, folder, cfg) if resume else None
    if done_before is not None:
        return done_before if procs.is_main_process else None
    if procs.is_main_process:
        write_text(folder / "settings.json", json.dumps(_jsonable(asdict(cfg)), indent=2))
    t0 = time.perf_counter()
    with procs.main_process_first():  # the others then read its teacher, encoder vectors and converted LLM
        teacher = get_teacher(data, cfg.teacher, folder)
        t_teacher = time.perf_counter() - t0
        encoder = get_text_encoder("minilm")
        lm, tok = load_base(ft)
        ex, ds, emb, counts = training_set(data, teacher, cfg, encoder, tok)
    if procs.is_main_process:
        with atomic_path(folder / "examples.parquet") as tmp:
            ex.to_parquet(tmp)

    torch.manual_seed(ft.seed)  # LoRA and head init: the same whether this process trained the teacher or loaded it
    qe = QueryEncoder(lm, ft.encoder_config(teacher.dim, encoder.dim))
    trainer = make_trainer(qe, tok, ds, ft, str(folder / "checkpoints"))
    ckpts = sorted((folder / "checkpoints").glob("checkpoint-*"))
    done = finished_checkpoint(folder, ft) if resume else None
    t1 = time.perf_counter()
    if done is None:
        runtime = trainer.train(resume_from_checkpoint=bool(resume and ckpts)).metrics.get("train_runtime")
    else:
        qe.load_trainable(done)
        trainer.state = TrainerState.load_from_json(str(done / "trainer_state.json"))
        runtime = None
    t_train = time.perf_counter() - t1
    # A resumed run trains only the steps after its checkpoint: speeds are per step trained in this process.
    start_step = getattr(trainer, "resumed_from_step", None) or 0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    ranks = gather_ranks(qe, losses)
    if not procs.is_main_process:
        return None
    with atomic_dir(folder / "final") as tmp:   # whole or absent: run_final trusts a final/ with its config
        qe.save(tmp)

    quality = measure_finetune(data, qe, tok, ex, emb, teacher, cfg)
    t2 = time.perf_counter()
    infer_builder = query_builder(data, teacher, cfg, tok)
    qset = inference_queries(data, infer_builder, Budget.parse(cfg.infer_budget),
                             cfg.pair_seed, max_users=cfg.infer_users)
    bank_path = save_bank_for(data, qe, tok, qset, teacher, folder, cfg)
    t_infer = time.perf_counter() - t2
    steps = max(trainer.state.global_step - start_step, 1)
    summary = {
        "dataset": data.name, "split_seed": split_seed_of(data), "folder": str(folder), "bank": str(bank_path),
        "config": _jsonable(asdict(cfg)), "counts": counts, "embedding_pass_counts": infer_builder.counts,
        "examples": len(ex), "examples_trained": len(ds), "finetune_quality": quality,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "loss_first5_mean": float(np.mean(losses[:5])) if losses else None,
        "loss_last5_mean": float(np.mean(losses[-5:])) if losses else None,
        "steps": trainer.state.global_step, "resumed_from_step": start_step, "train_runtime_s": runtime,
        "finetune_reused": done is not None,
        "nonfinite_steps_skipped": skipped_steps(trainer), "processes": procs.num_processes, "ranks": ranks,
        "timings": {"teacher_s": t_teacher, "finetune_s": t_train, "s_per_step": t_train / steps,
                    "examples_per_s": steps * ft.batch_size * ft.grad_accum * procs.num_processes / t_train,
                    "embedding_pass_s": t_infer, "queries": len(qset),
                    "total_s": time.perf_counter() - t0},
        "device": str(next(qe.head.parameters()).device),
        "peak_gpu_mem_gb": _peak_gpu_gb(),
        "adapter": adapter_fingerprint(folder / "final"),
        "teacher": teacher.meta,
    }
    if done is not None:  # report the fine-tuning speed measured when it ran, not the reload's
        summary["timings"].update(_earlier_finetune_timings(folder))
    write_text(folder / "summary.json", json.dumps(summary, indent=2))
    return summary


def skipped_steps(trainer) -> list[int]:
    """Global steps whose update SkipNonFiniteSteps dropped (NaN/inf gradients) in this process."""
    from hnlm.semantic.hnlmrec.finetune import SkipNonFiniteSteps
    return [s for cb in trainer.callback_handler.callbacks if isinstance(cb, SkipNonFiniteSteps) for s in cb.skipped]


def finished_summary(data, folder: Path, cfg: RunConfig) -> dict | None:
    """The summary of a run that finished with these settings and already holds the bank asked for, without
    loading the LLM: a run made elsewhere (e.g. on a GPU, copied without its checkpoints) is reused as is, unless
    its teacher was trained on another training split than `data`'s (an error)."""
    path, bank = folder / "summary.json", bank_files(folder, cfg)[0]
    if not (path.exists() and bank.exists()):
        return None
    summary = json.loads(path.read_text())
    ft = cfg.finetune
    command = finetune_command(data, ft.llm, ft.cf_signal, ft.budget, cfg.infer_budget, cfg.infer_users)
    check_split(path, summary.get("teacher", {}).get("train_fingerprint"), train_fingerprint(data),
                f"rm -r {folder} && {command}")
    if cfg.finetune.max_steps > 0 and summary.get("steps") != cfg.finetune.max_steps:
        return None
    return {**summary, "folder": str(folder), "bank": str(bank), "finetune_reused": True}


def finished_checkpoint(folder: Path, ft: FinetuneConfig) -> Path | None:
    """The checkpoint a finished run saved at max_steps. transformers 5 resumes even a finished run with
    one more optimiser step (seen: 3 steps for max_steps 2), so a finished run is loaded, not resumed."""
    ckpt = folder / "checkpoints" / f"checkpoint-{ft.max_steps}"
    return ckpt if ft.max_steps > 0 and (ckpt / "trainer_state.json").exists() else None


def _earlier_finetune_timings(folder: Path) -> dict:
    keys = ("finetune_s", "s_per_step", "examples_per_s")
    path = folder / "summary.json"
    earlier = json.loads(path.read_text()).get("timings", {}) if path.exists() else {}
    return {k: earlier.get(k) for k in keys}


def save_bank_for(data, qe, tok, qset, teacher: Teacher, folder: Path, cfg: RunConfig,
                  adapter_dir: Path | None = None, extra_meta: dict | None = None) -> Path:
    """Emit one embedding per query of `qset` into `folder`/bank_<tag>.npz, reused while the adapter
    (default: `folder`/final) and the queries are unchanged; an interrupted pass resumes."""
    from hnlm.semantic.hnlmrec.infer import adapter_fingerprint, emit, queries_fingerprint
    users, items = qset["user"].to_numpy(np.int64), qset["item"].to_numpy(np.int64)
    key = {"adapter": adapter_fingerprint(adapter_dir or folder / "final"),
           "queries": queries_fingerprint(qset["text"].tolist(), users, items)}
    path, meta_path = bank_files(folder, cfg)
    if path.exists() and meta_path.exists() and \
            {k: json.loads(meta_path.read_text()).get(k) for k in key} == key:
        return path
    partial = path.with_name(f"{path.stem}.partial-{key['adapter']}-{key['queries']}.npz")
    emb = emit(qe, tok, qset["text"].tolist(), teacher.user_emb[users], teacher.item_emb[items],
               batch_size=cfg.infer_batch, max_length=cfg.finetune.max_length, partial=partial)
    NegativeBank(emb, users, items, source=f"hnlmrec:{cfg.finetune.llm}:{cfg.finetune.cf_signal}").save(path)
    meta = {**key, "dataset": data.name, "split_seed": split_seed_of(data), "llm": cfg.finetune.llm,
            "cf_signal": cfg.finetune.cf_signal, "budget": cfg.infer_budget, "users_limit": cfg.infer_users,
            "train_fingerprint": train_fingerprint(data), "pooling": qe.config.pooling,
            **(extra_meta or {})}
    write_text(meta_path, json.dumps(meta, indent=2))
    partial.unlink(missing_ok=True)
    return path


def embed_bank(data, cfg: RunConfig, adapter_dir: Path) -> Path:
    """The run's bank emitted by the adapter in `adapter_dir` without fine-tuning (a shipped adapter, once the
    queries changed); the teacher is reused when present, else trained again."""
    from hnlm.semantic.hnlmrec.model import QueryEncoder
    folder = run_folder(data.name, cfg, split_id_of(data))
    teacher = get_teacher(data, cfg.teacher, folder)
    lm, tok = load_base(cfg.finetune)
    qset = inference_queries(data, query_builder(data, teacher, cfg, tok), Budget.parse(cfg.infer_budget),
                             cfg.pair_seed, max_users=cfg.infer_users)
    return save_bank_for(data, QueryEncoder.from_saved(lm, adapter_dir), tok, qset, teacher, folder, cfg,
                         adapter_dir=adapter_dir)


def read_bank(data, folder: Path, tag: str, source: str, meta: dict, regenerate: str) -> NegativeBank:
    """A bank written by `save_bank_for`, checked against `data`'s training split (`regenerate`: the command
    that makes it again)."""
    path, meta_path = folder / f"bank_{tag}.npz", folder / f"bank_{tag}.json"
    stored = json.loads(meta_path.read_text())
    check_split(path, stored.get("train_fingerprint"), train_fingerprint(data), regenerate)
    return NegativeBank.load(path, source, {**meta, "adapter": stored["adapter"], "queries": stored.get("queries"),
                                            "run": folder.name})


def load_bank(data, llm: str, cf_signal: str, budget: str, infer_budget: str, run: str,
              infer_users: int | None = None) -> NegativeBank:
    """The emitted embeddings of the finished run `run` (its settings hash, run-<hash>) on `data`'s split, for
    module 3's AlignmentExtension; its folder name is recorded in the bank's meta."""
    parent = run_dir(data.name, llm, cf_signal, budget, split_id_of(data))
    tag = bank_tag(infer_budget, infer_users)
    folder = parent / (run if run.startswith("run-") else f"run-{run}")
    command = finetune_command(data, llm, cf_signal, budget, infer_budget, infer_users)
    if not (folder / f"bank_{tag}.npz").exists() or not (folder / f"bank_{tag}.json").exists():
        raise MissingInputError(f"{folder / f'bank_{tag}.npz'} is missing: run `{command}` first")
    return read_bank(data, folder, tag, f"hnlmrec:{llm}:{cf_signal}",
                     {"llm": llm, "cf_signal": cf_signal, "budget": budget, "infer_budget": infer_budget,
                      "infer_users": infer_users}, f"rm -r {folder} && {command}")


def loss_history(folder: Path) -> list[float]:
    """Training losses logged by the Hugging Face trainer in the latest checkpoint of a fine-tuning run."""
    states = sorted(Path(folder).glob("checkpoints/checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    return [r["loss"] for r in json.loads(states[-1].read_text())["log_history"] if "loss" in r]


def _peak_gpu_gb() -> float | None:
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
