"""`hnlm profiles`: module 1 item and user profiles for a dataset (LLM layer CLI)."""

from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("profiles", help="generate LLM item and user profiles (module 1)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--llm", default="qwen2.5-0.5b", help="backend spec (see hnlm.llm.backends.make_backend)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N items and N users")
    p.add_argument("--kind", choices=["both", "item", "user"], default="both")
    p.add_argument("--batch-size", type=int, default=None, help="local backend batch size")
    p.add_argument("--summary-tokens", type=int, default=None, help="token budget of the summary")
    p.add_argument("--reasoning-tokens", type=int, default=None, help="token budget of the reasoning")
    p.add_argument("--json", default=None, help="also write the counts to this file")
    p.set_defaults(func=run)


def run(args):
    from hnlm.data import load_dataset
    from hnlm.llm.backends import LocalBackend, make_backend
    from hnlm.semantic import profiles as pf
    backend = make_backend(args.llm)  # a bad spec fails before the dataset loads
    data = load_dataset(args.dataset, seed=args.split_seed)
    if args.batch_size and isinstance(backend, LocalBackend):
        backend.batch_size = args.batch_size
    schema = pf.profile_schema(args.summary_tokens or pf.SUMMARY_TOKENS,
                               args.reasoning_tokens or pf.REASONING_TOKENS)
    all_counts, item_profiles = [], None
    folder = pf.profiles_dir(args.dataset, args.llm)
    if args.kind in ("both", "item"):
        frame, counts = pf.generate_profiles(data, backend, "item", args.limit, args.split_seed, schema=schema)
        pf.save_profiles(frame, args.dataset, args.llm, "item", args.split_seed)
        item_profiles = {int(i): s for i, s, ok in zip(frame["id"], frame["summarization"], frame["ok"]) if ok}
        all_counts.append(counts)
    if args.kind in ("both", "user"):
        if item_profiles is None:
            path = folder / f"items_split-{args.split_seed}.jsonl"
            item_profiles = pf.read_profiles(path) if path.exists() else {}
        frame, counts = pf.generate_profiles(data, backend, "user", args.limit, args.split_seed,
                                             item_profiles=item_profiles, schema=schema)
        pf.save_profiles(frame, args.dataset, args.llm, "user", args.split_seed)
        all_counts.append(counts)
    for c in all_counts:
        print(f"{c['kind']} profiles: {c['requested']} requested, {c['generated']} generated, "
              f"{c['cached']} cached, {c['failed']} failed, {c['truncated_prompts']} truncated prompts")
    summary = {"dataset": args.dataset, "llm": args.llm, "identity": backend.identity,
               "split_seed": args.split_seed, "counts": all_counts, "folder": str(folder)}
    (folder / f"counts_split-{args.split_seed}.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    print(f"profiles in {folder}")
    return 0
