"""CLI of modules 1-2 and the judge: `hnlm profiles` (LLM item and user profiles), `hnlm sns` (LLM hard negatives),
`hnlm judge` (the LLM's yes/no scores of a teacher's top unseen items: likely positives).

The handlers import the LLM stack when they run, so the parser (help, option errors) stays light (hnlm.cli)."""

from __future__ import annotations

import dataclasses
import json
import time

from hnlm import argtypes
from hnlm.atomic import write_text
from hnlm.data.options import add_dataset_options, dataset_from_args
from hnlm.errors import UserFacingError
from hnlm.llm.catalog import redact


def register(subparsers) -> None:
    register_profiles(subparsers)
    register_sns(subparsers)
    register_judge(subparsers)


def register_profiles(sub) -> None:
    p = sub.add_parser("profiles")
    add_dataset_options(p)
    p.add_argument("--llm", default="qwen2.5-0.5b", type=argtypes.llm,
                   help="backend spec (see hnlm.llm.backends.make_backend)")
    p.add_argument("--limit", type=argtypes.positive_int, default=None,
                   help="only the first N items and N users (merged by id into the saved profiles)")
    p.add_argument("--kind", choices=["both", "item", "user"], default="both")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=None, help="local backend batch size")
    p.add_argument("--summary-tokens", type=argtypes.positive_int, default=None, help="token budget of the summary")
    p.add_argument("--reasoning-tokens", type=argtypes.positive_int, default=None, help="token budget of the reasoning")
    p.add_argument("--json", default=None, help="also write the counts to this file")
    p.set_defaults(func=run_profiles)



def register_sns(subparsers) -> None:
    p = subparsers.add_parser("sns")
    add_dataset_options(p)
    p.add_argument("--llm", default="qwen2.5-0.5b", help="backend spec (see hnlm.llm.backends)")
    p.add_argument("--budget", default="per-user:1",
                   help="'all' (every training pair, the paper) or 'per-user:K' (K pairs per user)")
    p.add_argument("--pair-seed", type=argtypes.non_negative_int, default=0, help="which K training pairs per user")
    p.add_argument("--context", default="profile", choices=["profile", "history"],
                   help="user described by its module-1 profile, or by training titles + demographics")
    p.add_argument("--profiles-llm", default=None, help="LLM whose module-1 profiles to use (default --llm)")
    p.add_argument("--variant", default="text", choices=["text", "pick"],
                   help="text: the LLM names a negative; pick: it picks, from a list of real training-pool "
                        "items, those the user would not enjoy (with a uniform pick of the same list as control)")
    p.add_argument("--temperature", type=argtypes.non_negative_float, default=None,
                   help="0: greedy (one sample, no draw filter unless --copy-tries); > 0: sampled "
                        "(default: module 2's, hnlm.semantic.sns.SAMPLED)")
    p.add_argument("--top-p", type=argtypes.probability, default=None,
                   help="nucleus sampling mass (with --temperature > 0; default: module 2's)")
    p.add_argument("--sampling-seed", type=argtypes.non_negative_int, default=None,
                   help="seed of sampled decoding (sample k uses seed + k; default: module 2's)")
    p.add_argument("--samples", type=argtypes.positive_int, default=None,
                   help="K sampled negatives per pair (default: module 2's; 1 with greedy)")
    p.add_argument("--copy-tries", type=argtypes.non_negative_int, default=None,
                   help="draws per negative while it copies a training item of the user or names no item "
                        "(sns.DrawFilter; 0: no filter)")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--pool", type=argtypes.positive_int, default=20,
                   help="grounding: nearest non-train items kept per negative")
    p.add_argument("--chunk", type=argtypes.positive_int, default=32,
                   help="pairs per generate call, with all their K samples (appended as they finish)")
    p.add_argument("--limit-users", type=argtypes.positive_int, default=None,
                   help="only the first N users (quick runs)")
    p.add_argument("--no-generate", action="store_true", help="only rebuild embeddings/grounding/quality")
    p.add_argument("--allow-missing", action="store_true",
                   help="build from the pairs generated so far (the rest is counted as not generated)")
    p.set_defaults(func=run_sns)


def run_sns(args) -> int:
    from hnlm.llm.backends import make_backend
    from hnlm.llm.catalog import check_spec
    from hnlm.llm.encoders import get_text_encoder
    from hnlm.semantic import sns
    from hnlm.semantic.common import Budget, select_pairs, split_id_of
    if not args.no_generate:
        check_spec(args.llm)    # an unavailable LLM fails before the dataset loads
    data = dataset_from_args(args)
    data.require_item_text("LLM profiles" if args.func is run_profiles else "SNS")
    budget = Budget.parse(args.budget)
    decoding = decoding_of_args(args, sns)
    if args.variant == "pick":   # its answers are item ids of its list: one sample, nothing to filter, greedy
        decoding = dataclasses.replace(decoding_of_args(args, sns, sns.GREEDY), samples=1, tries=0)
    make_builder = sns.PickPromptBuilder if args.variant == "pick" else sns.PromptBuilder
    builders = sns.sample_builders(data, args.context, args.profiles_llm or args.llm, args.pair_seed, decoding,
                                   make_builder)
    pairs = select_pairs(data, budget, args.pair_seed)
    if args.limit_users is not None:
        pairs = pairs[pairs["user"] < args.limit_users]
    gen = {}
    if not args.no_generate:
        backend = make_backend(args.llm, **decoding.backend_options())
        out = sns.sns_dir(data.name, args.llm, split_id_of(data))
        t0 = time.perf_counter()
        gen = sns.generate_negatives(data, backend, pairs, builders, out, chunk=args.chunk)
        seconds = time.perf_counter() - t0
        made = gen["generated"] - gen["from_llm_cache"] + gen["redrawn"]
        gen.update(backend=backend.identity, samples=len(builders), seconds=round(seconds, 1),
                   prompts_per_s=made / seconds if made else None,
                   tokens_per_s=backend.tokens_out / seconds if made else None)
    allow_missing = args.allow_missing or args.limit_users is not None
    if args.variant == "pick":
        built = sns.build_pick_artifacts(data, args.llm, budget, builders[0], pair_seed=args.pair_seed,
                                         allow_missing=allow_missing)
        print(json.dumps({"folder": built["folder"], "generation": gen, "quality": built["quality"]}, indent=2))
        return 0
    built = sns.build_artifacts(data, args.llm, budget, get_text_encoder(args.encoder), pair_seed=args.pair_seed,
                                pool=args.pool, extra_meta={**builders[0].describe(), "generation": gen,
                                                            "decoding": sns.decoding_meta(decoding)},
                                allow_missing=allow_missing, contexts=[b.tag for b in builders])
    print(json.dumps({"folder": built["folder"], "generation": gen, "quality": built["quality"],
                      "report": sns.report(built["quality"])}, indent=2))
    return 0


def register_judge(subparsers) -> None:
    p = subparsers.add_parser("judge")
    add_dataset_options(p)
    p.add_argument("--llm", default="qwen2.5-0.5b", type=argtypes.llm, help="backend spec (see hnlm.llm.backends)")
    p.add_argument("--context", default="profile", choices=["profile", "history"],
                   help="user described by the LLM's module-1 profile, or by training titles + demographics")
    p.add_argument("--teacher", default="lightgcn", choices=["lightgcn", "mf"],
                   help="backbone of the converged DNS(M,N) teacher whose top unseen items are listed")
    p.add_argument("--limit-users", type=argtypes.positive_int, default=None,
                   help="only the first N users (quick runs and rate measurements)")
    p.add_argument("--chunk", type=argtypes.positive_int, default=32,
                   help="users per scoring call (appended as they finish)")
    p.add_argument("--marks", type=argtypes.positive_int, default=None,
                   help="marks per user for the printed precision: its top-scoring items (default: dnsmn-judge's)")
    p.add_argument("--json", default=None, help="also write the counts and precision to this file")
    p.set_defaults(func=run_judge)


def run_judge(args) -> int:
    from hnlm.llm.encoders import get_text_encoder
    from hnlm.methods.dnsmn_judge import judge_precision
    from hnlm.semantic import judge
    from hnlm.semantic.common import split_id_of
    from hnlm.semantic.sns import item_embeddings
    backend = judge.scoring_backend(args.llm)
    backend.scoring()    # an LLM that cannot score fails before the dataset loads
    data = dataset_from_args(args)
    data.require_item_text("the judge")
    config = judge.JudgeConfig(context=args.context, teacher=args.teacher)
    users = range(min(args.limit_users or data.n_users, data.n_users))
    done = judge.make_scores(data, args.llm, config, users, chunk=args.chunk, backend=backend)
    prompts = judge.JudgePrompts(data, config, args.llm)
    path = judge.judge_dir(data.name, args.llm, split_id_of(data)) / prompts.records_file
    scores = judge.scores_frame(judge.read_scores(path, prompts.tag).to_dict("records"))
    scores = scores[scores["user"].isin(list(users))]
    precision = judge_precision(data, scores, item_embeddings(data, get_text_encoder("minilm")),
                                args.marks or judge.JUDGE_MARKS)
    summary = {"records": str(path), "scoring": done, "teacher_agreement": judge.teacher_agreement(scores),
               "precision_on_valid": precision.to_dict("records")}
    print(json.dumps(summary, indent=2, default=str))
    if args.json:
        write_text(args.json, json.dumps(summary, indent=1, default=str))
    return 0


def decoding_of_args(args, sns, default=None):
    """`hnlm sns`'s Decoding: `default` (module 2's, sns.SAMPLED) with the options given; --temperature 0 means
    one greedy sample without the copy filter unless --samples / --copy-tries say otherwise."""
    base = sns.GREEDY if args.temperature == 0 else sns.SAMPLED if args.temperature else default or sns.SAMPLED
    given = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.sampling_seed,
             "samples": args.samples, "tries": args.copy_tries}
    decoding = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if decoding.temperature == 0 and decoding.samples > 1:
        raise UserFacingError("--samples > 1 needs --temperature > 0: greedy decoding gives one answer per prompt")
    return decoding


def run_profiles(args) -> int:
    from hnlm.llm.backends import LocalBackend, make_backend
    from hnlm.semantic import profiles as pf
    from hnlm.semantic.common import split_id_of
    backend = make_backend(args.llm)  # a bad spec fails before the dataset loads
    data = dataset_from_args(args)
    data.require_item_text("LLM profiles" if args.func is run_profiles else "SNS")
    if args.batch_size and isinstance(backend, LocalBackend):
        backend.batch_size = args.batch_size
    schema = pf.profile_schema(args.summary_tokens or pf.SUMMARY_TOKENS,
                               args.reasoning_tokens or pf.REASONING_TOKENS)
    all_counts, item_profiles, split = [], None, split_id_of(data)
    folder = pf.profiles_dir(args.dataset, args.llm)
    if args.kind in ("both", "item"):
        frame, counts = pf.generate_profiles(data, backend, "item", args.limit, args.split_seed, schema=schema)
        pf.save_profiles(frame, args.dataset, args.llm, "item", split)
        item_profiles = {int(i): s for i, s, ok in zip(frame["id"], frame["summarization"], frame["ok"]) if ok}
        all_counts.append(counts)
    if args.kind in ("both", "user"):
        if item_profiles is None:
            path = pf.profiles_path(args.dataset, args.llm, "item", split)
            item_profiles = pf.read_profiles(path) if path.exists() else {}
        frame, counts = pf.generate_profiles(data, backend, "user", args.limit, args.split_seed,
                                             item_profiles=item_profiles, schema=schema)
        pf.save_profiles(frame, args.dataset, args.llm, "user", split)
        all_counts.append(counts)
    for c in all_counts:
        print(f"{c['kind']} profiles: {c['requested']} requested, {c['generated']} generated, "
              f"{c['cached']} cached, {c['failed']} failed, {c['truncated_prompts']} truncated prompts")
    summary = {"dataset": args.dataset, "llm": redact(args.llm), "identity": backend.identity,
               "split_seed": args.split_seed, "counts": all_counts, "folder": str(folder)}
    write_text(folder / f"counts_split-{split}.json", json.dumps(summary, indent=1))
    if args.json:
        write_text(args.json, json.dumps(summary, indent=1))
    print(f"profiles in {folder}")
    return 0
