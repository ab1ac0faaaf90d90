"""`hnlm` command line. Each subsystem registers its own sub-commands (see COMMAND_MODULES)."""

import argparse
import importlib
import sys

from hnlm.errors import UserFacingError

# Each module exposes register(subparsers); its parsers set `func` to a handler taking the args.
COMMAND_MODULES = [
    "hnlm.data.commands",
    "hnlm.semantic.commands",
    "hnlm.semantic.hnlmrec.commands",
    "hnlm.methods.commands",
    "hnlm.study.commands",
    "hnlm.study.outputs_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserFacingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

