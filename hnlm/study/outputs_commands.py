"""`hnlm outputs list`, `verify` and `add-adapters`: the LLM outputs shipped in the tracked outputs/ folder. The
handlers import the publishing machinery when they run, so the parser (help, option errors) stays light."""

from __future__ import annotations

import pandas as pd

from hnlm import argtypes
from hnlm.paths import outputs_root
from hnlm.semantic.common import safe_name


def register(sub) -> None:
    p = sub.add_parser("outputs")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("list", help="what is shipped: kind, records, size, made with, integrity check")
    check = actions.add_parser("verify", help="regenerate a random sample of each shipped output on this machine "
                                               "and print the agreement")
    check.add_argument("--sample", type=argtypes.positive_int, default=8, help="records per output (default 8)")
    check.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="seed of the sample")
    adapters = actions.add_parser("add-adapters", help="ship the float16 adapter of every shipped bank that lacks "
                                                       "one, from its run in artifacts/ (vectors and keys unchanged)")
    adapters.set_defaults(func=run_add_adapters)
    for q in (show, check):
        q.add_argument("--dataset", help="only this dataset (default: all)")
        q.add_argument("--llm", help="only this LLM (default: all)")
    show.set_defaults(func=run_list)
    check.set_defaults(func=run_verify)


def run_list(args) -> int:
    from hnlm.study.verify import list_outputs
    table = list_outputs(dataset=args.dataset, llm=args.llm)
    if table.empty:
        where = outputs_root() / (args.dataset or "") / (safe_name(args.llm) if args.llm else "")
        print(f"nothing shipped under {where}: fill it with `hnlm study --llm-only --publish --profile full` "
              f"(on a GPU: minutes)")
        return 0
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(table.to_string(index=False))
    adapters = table["adapter_kib"].gt(0)
    print(f"{len(table)} outputs, {table['kib'].sum() / 1024:.2f} MiB; {adapters.sum()} adapters (float16), "
          f"{table['adapter_kib'].sum() / 1024:.2f} MiB; {(table['kib'] + table['adapter_kib']).sum() / 1024:.2f} MiB "
          f"in all")
    return 1 if table["check"].ne("ok").any() else 0


def run_verify(args) -> int:
    from hnlm.study.verify import verify
    verify(args.sample, dataset=args.dataset, llm=args.llm, seed=args.seed)
    return 0


def run_add_adapters(args) -> int:
    from hnlm.study.publish import add_adapters
    for line in add_adapters():
        print(line)
    return 0
