"""`hnlm study`: run the numbered notebooks through papermill (what `make study` calls); `hnlm study report`:
the README's results section from the tracked result files. The handlers import the study machinery when they
run, so the parser (help, option errors) stays light."""

from __future__ import annotations

import os
from pathlib import Path

from hnlm import argtypes
from hnlm.errors import UserFacingError
from hnlm.paths import results_dir
from hnlm.study.settings import DEFAULT_PROFILE, PROFILE_NAMES, STAGES


def register(sub) -> None:
    p = sub.add_parser("study")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_NAMES)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--llm", default="qwen2.5-0.5b")
    p.add_argument("--notebooks", nargs="+", help="only these notebooks, e.g. 01_data 06_main_results")
    p.add_argument("--seeds", type=argtypes.non_negative_int, nargs="+", help="override the profile's seeds")
    p.add_argument("--out-dir", help="result folder (default runs/<profile>/<dataset>)")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failing notebook")
    p.add_argument("--llm-only", action="store_true",
                   help="run only the study's LLM work (profiles, SNS, HNLMRec, transfer, LLM size) into the caches "
                        "the notebooks reuse, e.g. on a GPU machine; no notebooks")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="with --llm-only; llm_size makes notebook 11's outputs for each LLM it compares, "
                        "whatever --llm says")
    p.add_argument("--publish", action="store_true",
                   help="with --llm-only: copy each output into the tracked outputs/ folder with its manifest as "
                        "soon as it is made (`hnlm outputs list` shows them; commit them)")
    p.add_argument("--regenerate", action="store_true",
                   help="ignore the shipped LLM outputs (outputs/) and make every one on this machine, reusing "
                        "only artifacts/ (sets hnlm.semantic.outputs.REGENERATE_VAR; hours on a CPU)")
    p.set_defaults(func=run)
    register_report(p.add_subparsers(dest="study_command", metavar="[report]"))  # none: run the notebooks


def register_report(actions) -> None:
    p = actions.add_parser("report", help="print the README's results section (markdown) from the tracked result "
                                          "files of a full study, results/<dataset>/")
    p.add_argument("--results", type=Path, help="folder holding <dataset>/ (default: the tracked results/)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--write", type=Path, metavar="FILE",
                   help="replace the block between the results markers in FILE (hnlm.study.report.RESULTS_BEGIN/END) "
                        "instead of printing")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from hnlm.study.report import render_report, write_between_markers
    folder = (args.results or results_dir()) / args.dataset
    markdown = render_report(folder, args.dataset)
    if args.write:
        write_between_markers(args.write, markdown)
        print(f"{args.write}: results block rewritten from {folder}")
    else:
        print(markdown)
    return 0


def run(args) -> int:
    if args.publish and not args.llm_only:
        raise UserFacingError("--publish goes with --llm-only: hnlm study --llm-only --publish --profile full")
    if args.regenerate:
        from hnlm.semantic.outputs import REGENERATE_VAR
        os.environ[REGENERATE_VAR] = "1"    # notebook kernels inherit it
    if args.llm_only:
        return run_llm_only(args)
    from hnlm.study.runner import run_study
    report = run_study(args.profile, args.dataset, args.llm, notebooks=args.notebooks, seeds=args.seeds,
                       out_dir=args.out_dir, stop_on_error=args.stop_on_error)
    failed = [name for name, r in report.items() if not r["ok"]]
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


def run_llm_only(args) -> int:
    from hnlm.study.llm_outputs import prepare, units
    from hnlm.study.publish import publish_study
    if not args.publish:
        prepare(args.profile, args.dataset, args.llm, args.stages)
        return 0
    for stage, signal in units(args.profile, args.stages):  # ship each output as soon as it is made
        signals = [signal] if signal else None
        prepare(args.profile, args.dataset, args.llm, [stage], signals=signals)
        publish_study(args.profile, args.dataset, args.llm, [stage], signals=signals)
    return 0
