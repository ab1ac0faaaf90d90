"""`hnlm data ...` sub-commands."""

from __future__ import annotations

import warnings

from hnlm.data.checks import DatasetWarning
from hnlm.data.options import add_dataset_options, dataset_from_args
from hnlm.errors import UnknownDatasetError


def register(sub) -> None:
    data = sub.add_parser("data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="print users, items, interactions, density, split sizes and checks")
    add_dataset_options(stats, positional_name=True)
    stats.set_defaults(func=run_stats)
    add = data_sub.add_parser("add", help="register your own data under a name (--source, its files, filters): "
                                          "every command and notebook then loads it by that name alone")
    add_dataset_options(add, positional_name=True)
    add.set_defaults(func=run_add)


def run_stats(args) -> int:
    with warnings.catch_warnings():   # describe() lists the dataset's warnings: print them once, there
        warnings.simplefilter("ignore", DatasetWarning)
        data = dataset_from_args(args)
    print(data.describe())
    return 0


def run_add(args) -> int:
    if args.source is None:
        raise UnknownDatasetError(f"hnlm data add {args.dataset} needs --source and the files of your data "
                                  f"(see hnlm data add -h)")
    data = dataset_from_args(args)
    summary = data.summary()
    print(f"registered {args.dataset}: {summary['users']} users, {summary['items']} items, "
          f"{summary['interactions']} interactions, item text: {'yes' if data.has_item_text else 'no'}; "
          f"now e.g. hnlm study --profile smoke --dataset {args.dataset}")
    return 0
