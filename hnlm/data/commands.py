"""`hnlm data ...` sub-commands."""

from __future__ import annotations

from hnlm.data.registry import PRESETS, load_dataset


def register(sub) -> None:
    data = sub.add_parser("data", help="dataset statistics and preparation")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="print users, items, interactions, density and split sizes")
    stats.add_argument("name", choices=list(PRESETS))
    add_dataset_options(stats)
    stats.set_defaults(func=run_stats)


def add_dataset_options(parser, with_name: bool = False) -> None:
    """Options every command that loads a dataset shares."""
    if with_name:
        parser.add_argument("--dataset", default="ml-100k", choices=list(PRESETS))
    parser.add_argument("--reviews", help="local reviews file (Amazon/Yelp presets)")
    parser.add_argument("--meta", help="local item metadata file (Amazon meta / Yelp business)")
    parser.add_argument("--split", default="random", choices=["random", "temporal"])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--lenient", action="store_true", help="skip and count malformed lines instead of failing")


def dataset_from_args(args, name: str | None = None):
    return load_dataset(name or args.dataset, seed=args.split_seed, split=args.split, reviews=args.reviews,
                        meta=args.meta, strict=not args.lenient)


def format_stats(data) -> str:
    s = data.summary()
    lines = [
        "| Dataset | #Users | #Items | #Interactions | Density |",
        "|---|---:|---:|---:|---:|",
        f"| {s['dataset']} | {s['users']:,} | {s['items']:,} | {s['interactions']:,} | {s['density']:.4%} |",
        "",
        f"split ({data.stats['split_mode']}, seed {data.stats['split_seed']}): train {s['train']:,} / "
        f"valid {s['valid']:,} / test {s['test']:,}; users in train only: {s['users_train_only']:,}",
        f"duplicates collapsed: {data.stats['duplicates_collapsed']:,}; "
        f"malformed lines skipped: {data.stats['malformed_lines']:,}",
        "filtering: " + " -> ".join(f"{st['step']}: {st['users']:,}u/{st['items']:,}i/{st['interactions']:,}"
                                      for st in data.stats["filter_steps"]),
    ]
    return "\n".join(lines)


def run_stats(args) -> int:
    print(format_stats(dataset_from_args(args, args.name)))
    return 0
