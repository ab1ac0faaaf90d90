"""CLI: `hnlm finetune` (HNLMRec end to end; `hnlm train --sampler hnlmrec` then trains with its output).

The handler imports the fine-tuning stack when it runs, so the parser (help, option errors) stays light."""

from __future__ import annotations

import json

from hnlm import argtypes
from hnlm.data.options import add_dataset_options, dataset_from_args
from hnlm.semantic.hnlmrec.config import FinetuneConfig, RunConfig, TeacherConfig
from hnlm.semantic.hnlmrec.queries import MiningConfig


def register(subparsers) -> None:
    d, t, m = FinetuneConfig(), TeacherConfig(), MiningConfig()
    p = subparsers.add_parser("finetune")
    add_dataset_options(p)
    p.add_argument("--llm", default=d.llm, type=argtypes.llm,
                   help="qwen2.5-0.5b, smollm2-135m, hf:<id>, or a local folder")
    p.add_argument("--cf-signal", default=d.cf_signal, choices=["text", "soft", "none"])
    p.add_argument("--budget", default=d.budget, help="fine-tuning pairs: 'all' or 'per-user:K'")
    p.add_argument("--infer-budget", default="per-user:1", help="pairs that get an emitted embedding")
    p.add_argument("--infer-users", type=argtypes.positive_int, default=None,
                   help="embed only the pairs of the first N users (fast runs; default: all)")
    p.add_argument("--context", default="history", choices=["history", "profile"])
    p.add_argument("--profiles-llm", default=None)
    p.add_argument("--epochs", type=argtypes.positive_float, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--batch-size", type=argtypes.positive_int, default=d.batch_size)
    p.add_argument("--grad-accum", type=argtypes.positive_int, default=d.grad_accum)
    p.add_argument("--lr", type=argtypes.positive_float, default=d.lr)
    p.add_argument("--max-length", type=argtypes.positive_int, default=d.max_length)
    p.add_argument("--head-lr", type=argtypes.positive_float, default=d.head_lr, help="learning rate of the head(s)")
    p.add_argument("--tau", type=argtypes.positive_float, default=d.tau)
    p.add_argument("--objective", default=d.objective, choices=["infonce", "paper"],
                   help="infonce: other queries' targets are negatives too; paper: the released objective")
    p.add_argument("--pooling", default=d.pooling, choices=["mean-centred", "last", "mean"])
    p.add_argument("--centring-queries", type=argtypes.positive_int, default=d.centring_queries,
                   help="fine-tuning queries the centring mean of --pooling mean-centred is fitted on")
    p.add_argument("--quality-pairs", type=argtypes.non_negative_int, default=d.quality_pairs,
                   help="fine-tuning pairs held out to measure the fine-tuned encoder")
    p.add_argument("--lora-r", type=argtypes.positive_int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=argtypes.positive_int, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=argtypes.probability, default=d.lora_dropout)
    p.add_argument("--lora-targets", default=",".join(d.lora_targets))
    p.add_argument("--soft-tokens", type=argtypes.non_negative_int, default=d.soft_tokens)
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="QLoRA (CUDA + bitsandbytes)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--save-steps", type=argtypes.positive_int, default=d.save_steps)
    p.add_argument("--teacher", default=t.model, choices=["lightgcn", "mf"])
    p.add_argument("--teacher-epochs", type=argtypes.epochs_or_converged, default=t.epochs,
                   help="epochs of the CF teacher, evaluated once at the end; 'converged': early stopping on valid "
                        "recall@20 under the study's protocol, the best epoch kept (hnlm.cf.frozen)")
    p.add_argument("--teacher-batch-size", type=argtypes.positive_int, default=t.batch_size)
    p.add_argument("--candidates", type=argtypes.positive_int, default=m.candidates, help="M candidates per pair")
    p.add_argument("--guard-top", type=argtypes.probability, default=m.guard_top,
                   help="skip candidates in the user's top share of non-interacted items (false-negative guard)")
    p.add_argument("--infer-batch", type=argtypes.positive_int, default=16)
    p.add_argument("--pair-seed", type=argtypes.non_negative_int, default=0)
    p.add_argument("--seed", type=argtypes.non_negative_int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.set_defaults(func=run)


def config_from_args(args) -> RunConfig:
    ft = FinetuneConfig(
        llm=args.llm, cf_signal=args.cf_signal, budget=args.budget, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        head_lr=args.head_lr, max_length=args.max_length, tau=args.tau, objective=args.objective,
        pooling=args.pooling, centring_queries=args.centring_queries, quality_pairs=args.quality_pairs,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=tuple(args.lora_targets.split(",")),
        soft_tokens=args.soft_tokens, load_in_4bit=args.load_in_4bit,
        gradient_checkpointing=args.gradient_checkpointing, save_steps=args.save_steps, seed=args.seed)
    return RunConfig(finetune=ft, teacher=TeacherConfig(model=args.teacher, epochs=args.teacher_epochs,
                                                        seed=args.seed, batch_size=args.teacher_batch_size),
                     mining=MiningConfig(candidates=args.candidates, guard_top=args.guard_top),
                     context=args.context, profiles_llm=args.profiles_llm, infer_budget=args.infer_budget,
                     infer_users=args.infer_users, infer_batch=args.infer_batch, pair_seed=args.pair_seed)


def run(args) -> int:
    from hnlm.semantic.hnlmrec.ranks import processes
    from hnlm.semantic.hnlmrec.run import run_finetune
    with processes().main_process_first():  # under `accelerate launch`, one process prepares the dataset
        data = dataset_from_args(args)
    data.require_item_text("HNLMRec fine-tuning")
    summary = run_finetune(data, config_from_args(args), resume=not args.no_resume)
    if summary is None:  # not the main process of a multi-process launch: it prints and writes nothing
        return 0
    print(json.dumps({k: summary.get(k) for k in ("folder", "bank", "examples", "steps", "loss_first5_mean",
                                                 "loss_last5_mean", "finetune_quality", "counts", "timings")},
                     indent=2))
    return 0
