"""`hnlm` command line. Each subsystem registers its own sub-commands (see COMMANDS).

Only the module of the command being run is imported, and command modules import their heavy machinery
(torch, transformers, the LLM stack) inside the handlers: `hnlm --help`, `hnlm <command> --help` and argument
errors answer in well under two seconds (tests/test_cli_options.py measures it)."""

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from hnlm.atomic import WRITE_ERRNOS, write_error
from hnlm.errors import UserFacingError
from hnlm.llm.catalog import redact

# command: (module exposing register(subparsers), its line in `hnlm --help`). A module's parsers set `func` to
# a handler taking the args; one module may register several commands.
COMMANDS = {
    "data": ("hnlm.data.commands", "dataset statistics and preparation"),
    "profiles": ("hnlm.semantic.commands", "generate LLM item and user profiles (module 1)"),
    "sns": ("hnlm.semantic.commands", "generate LLM hard negatives (module 2), embed, ground, measure"),
    "judge": ("hnlm.semantic.commands",
              "the LLM as a judge: yes/no scores of a teacher's top unseen items per user (likely positives)"),
    "finetune": ("hnlm.semantic.hnlmrec.commands",
                 "HNLMRec: LoRA fine-tune an LLM to emit hard-negative embeddings"),
    "train": ("hnlm.methods.commands", "train MF/LightGCN with one method (a classic sampler or an LLM-based one)"),
    "methods": ("hnlm.methods.commands", "list the training methods, or show one method's settings and defaults"),
    "study": ("hnlm.study.commands", "run the study notebooks in order (papermill) and print wall times"),
    "outputs": ("hnlm.study.outputs_commands",
                "list or verify the LLM outputs shipped with the repository (outputs/)"),
}


class Parser(argparse.ArgumentParser):
    """Argument errors are one line (no usage block, no traceback) and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(2, redact(f"error: {self.prog}: {message} (see {self.prog} --help)\n"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given `argv`, only the named command's module is imported (the others are listed by
    name and help line, which is all `hnlm --help` shows)."""
    parser = Parser(prog="hnlm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = command_named(argv) if argv is not None else None
    modules = {module for module, _ in COMMANDS.values()} if argv is None else \
        {COMMANDS[wanted][0]} if wanted in COMMANDS else set()
    for module in sorted(modules):
        importlib.import_module(module).register(sub)
    for name, (_, line) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=line)
    return parser


def command_named(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings in the tool's own format: one `warning: ...` line, no source line."""
    print(redact(f"warning: {message}"), file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as done:    # --help, or an argument error already printed in one line
        return done.code
    warnings.showwarning = show_warning
    try:
        return args.func(args) or 0
    except UserFacingError as err:
        print(redact(f"error: {err}"), file=sys.stderr)
        return 2
    except OSError as err:    # a full disk or read-only folder met by a writer outside hnlm.atomic
        if err.errno not in WRITE_ERRNOS or not err.filename:
            raise
        print(redact(f"error: {write_error(Path(err.filename).parent, err)}"), file=sys.stderr)
        return 2
