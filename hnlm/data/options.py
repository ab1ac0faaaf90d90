"""Command-line options of every command that loads a dataset, and the dataset they describe.

    add_dataset_options(parser)        # --dataset NAME [--source ... --reviews/--meta/--path, filters, split]
    data = dataset_from_args(args)     # load_dataset(...) with those options
"""

from __future__ import annotations

import argparse

from hnlm import argtypes
from hnlm.data.registry import OWN_SOURCES, PRESETS, Filters, load_dataset

DEFAULT_DATASET = "ml-100k"


def add_dataset_options(parser: argparse.ArgumentParser, positional_name: bool = False) -> None:
    """`positional_name`: the dataset is the first positional argument (as in `hnlm data stats NAME`)
    instead of --dataset."""
    group = parser.add_argument_group("dataset")
    name_help = (f"a preset ({', '.join(PRESETS)}), or your own name for your own data: given with --source "
                 f"(which registers it), or registered before (hnlm data add); it names artifacts/<name>/")
    if positional_name:
        group.add_argument("dataset", metavar="NAME", help=name_help)
    else:
        group.add_argument("--dataset", default=DEFAULT_DATASET, help=name_help)
    group.add_argument("--source", choices=list(OWN_SOURCES),
                       help="format of your own data: " + "; ".join(f"{k}: {v}" for k, v in OWN_SOURCES.items()))
    group.add_argument("--reviews", type=argtypes.existing_file,
                       help="local reviews file (Amazon/Yelp presets and sources), .gz or not")
    group.add_argument("--meta", type=argtypes.existing_file,
                       help="local item metadata file (Amazon meta / Yelp business): item text for LLMs")
    group.add_argument("--path", type=argtypes.existing_path,
                       help="RecBole .inter file or folder, or a LightGCN split folder (--source)")
    group.add_argument("--min-rating", type=float, help="your own raw data: keep ratings >= this")
    group.add_argument("--start", type=argtypes.date,
                       help="your own raw data: keep interactions from this date (YYYY-MM-DD, UTC)")
    group.add_argument("--end", type=argtypes.date,
                       help="your own raw data: keep interactions before this date (YYYY-MM-DD, UTC)")
    group.add_argument("--kcore", type=argtypes.positive_int,
                       help="your own raw data: iterated k-core on users and items")
    group.add_argument("--collapse-duplicate-reviews", action="store_true",
                       help="merge product ids that carry the same review of the same user (product variants)")
    group.add_argument("--split", choices=["random", "temporal"],
                       help="per-user split of raw data, 8:1:1 (default: random, or the one the name was registered "
                            "with; published splits are used as they are)")
    group.add_argument("--split-seed", type=argtypes.non_negative_int, default=0)
    group.add_argument("--lenient", action="store_true", help="skip and count malformed lines instead of failing")
    group.add_argument("--allow-degenerate", action="store_true",
                       help="load a dataset on which ranking metrics are meaningless (for inspection only)")


def filters_from_args(args) -> Filters:
    return Filters(min_rating=args.min_rating, start=args.start, end=args.end, kcore=args.kcore)


def dataset_from_args(args, check: bool | None = None):
    """The dataset the options describe. `check=None` follows --allow-degenerate."""
    if check is None:
        check = not args.allow_degenerate
    return load_dataset(args.dataset, seed=args.split_seed, split=args.split, reviews=args.reviews,
                        meta=args.meta, strict=False if args.lenient else None, source=args.source, path=args.path,
                        filters=filters_from_args(args), collapse_duplicate_reviews=args.collapse_duplicate_reviews,
                        check=check)
