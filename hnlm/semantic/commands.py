"""CLI for modules 2-3: `hnlm sns ...` and the `hnlm train` methods sns, sns-grounded, sns-random,
sns-shuffled and the baseline rlmrec-con (registered with hnlm.cf.commands)."""

from __future__ import annotations

import json

from hnlm.semantic.sns import Budget


def register(subparsers) -> None:
    p = subparsers.add_parser("sns", help="generate LLM hard negatives (module 2), embed, ground, measure")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split-seed", type=int, default=0, help="data split the negatives belong to")
    p.add_argument("--llm", default="qwen2.5-0.5b", help="backend spec (see hnlm.llm.backends)")
    p.add_argument("--budget", default="per-user:1",
                   help="'all' (every training pair, the paper) or 'per-user:K' (K pairs per user)")
    p.add_argument("--pair-seed", type=int, default=0, help="which K training pairs per user")
    p.add_argument("--context", default="profile", choices=["profile", "history"],
                   help="user described by its module-1 profile, or by training titles + demographics")
    p.add_argument("--profiles-llm", default=None, help="LLM whose module-1 profiles to use (default --llm)")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--pool", type=int, default=20, help="grounding: nearest non-train items kept per negative")
    p.add_argument("--chunk", type=int, default=32, help="prompts per generate call (appended as they finish)")
    p.add_argument("--limit-users", type=int, default=None, help="only the first N users (quick runs)")
    p.add_argument("--no-generate", action="store_true", help="only rebuild embeddings/grounding/quality")
    p.add_argument("--allow-missing", action="store_true",
                   help="build from the pairs generated so far (the rest is counted as not generated)")
    p.set_defaults(func=run_sns)
    register_cf()


def run_sns(args) -> int:
    from hnlm.data import load_dataset
    from hnlm.llm.encoders import get_text_encoder
    from hnlm.semantic import sns

    data = load_dataset(args.dataset, seed=args.split_seed)
    budget = Budget.parse(args.budget)
    builder = sns.PromptBuilder(data, args.context, args.profiles_llm or args.llm, seed=args.pair_seed)
    pairs = sns.select_pairs(data, budget, args.pair_seed)
    if args.limit_users is not None:
        pairs = pairs[pairs["user"] < args.limit_users]
    gen = {}
    if not args.no_generate:
        from hnlm.llm.backends import make_backend
        backend = make_backend(args.llm)
        out = sns.sns_dir(data.name, args.llm, args.split_seed)
        gen = sns.generate_negatives(data, backend, pairs, builder, out, chunk=args.chunk)
        gen["backend"] = backend.identity
    built = sns.build_artifacts(data, args.llm, budget, get_text_encoder(args.encoder),
                               split_seed=args.split_seed, pair_seed=args.pair_seed, pool=args.pool,
                               extra_meta={**builder.describe(), "generation": gen},
                               allow_missing=args.allow_missing or args.limit_users is not None,
                               context=builder.tag)
    print(json.dumps({"folder": built["folder"], "generation": gen, "quality": built["quality"]}, indent=2))
    return 0


_REGISTERED = False


def register_cf() -> None:
    """Plug the semantic samplers and the RLMRec-Con baseline into `hnlm train` (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hnlm.cf.commands import register_method, register_options
    from hnlm.semantic import methods
    register_options(methods.add_options)
    for name, builder in methods.BUILDERS.items():
        register_method(name, builder)
    _REGISTERED = True
