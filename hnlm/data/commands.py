"""`hnlm data ...` sub-commands."""

from __future__ import annotations

import warnings

from hnlm.data.checks import DatasetWarning
from hnlm.data.options import add_dataset_options, dataset_from_args


def register(sub) -> None:
    data = sub.add_parser("data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="print users, items, interactions, density, split sizes and checks")
    add_dataset_options(stats, positional_name=True)
    stats.set_defaults(func=run_stats)


def run_stats(args) -> int:
    with warnings.catch_warnings():   # describe() lists the dataset's warnings: print them once, there
        warnings.simplefilter("ignore", DatasetWarning)
        data = dataset_from_args(args)
    print(data.describe())
    return 0
