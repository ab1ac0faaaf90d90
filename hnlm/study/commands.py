"""`hnlm study`: run the numbered notebooks through papermill (what `make study` calls); `hnlm study report`:
the README's results section from the tracked result files. The handlers import the study machinery when they
run, so the parser (help, option errors) stays light."""

from __future__ import annotations

import os
from pathlib import Path

from hnlm import argtypes
from hnlm.errors import UserFacingError
from hnlm.paths import results_dir
from hnlm.semantic.common import SNS_DECODING_NAMES
from hnlm.study.executors import EXECUTORS
from hnlm.study.settings import DEFAULT_PROFILE, PROFILE_NAMES, STAGES


def register(sub) -> None:
    p = sub.add_parser("study")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_NAMES)
    p.add_argument("--dataset", default="ml-100k",
                   help="a preset, or your own data registered once with `hnlm data add NAME --source ...`; "
                        "notebooks it lacks the inputs of (item text, LLM outputs, a transfer target) are skipped")
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
    p.add_argument("--sns-decoding", choices=SNS_DECODING_NAMES, default=None,
                   help="with --llm-only: which SNS negatives to make (default: the profile's, the ones its "
                        "notebooks read)")
    p.add_argument("--regenerate", action="store_true",
                   help="ignore the shipped LLM outputs (outputs/) and make every one on this machine, reusing "
                        "only artifacts/ (sets hnlm.semantic.outputs.REGENERATE_VAR; hours on a CPU)")
    p.add_argument("--retune", action="store_true",
                   help="tune every method again, ignoring the trials of the tuning table (results/<dataset>/"
                        "tuning.csv for full; sets HNLM_RETUNE)")
    p.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="where the CF runs and tuning trials train: here (local, default) or as tasks of a Ray "
                        "cluster (sets HNLM_EXECUTOR; see hnlm.study.executors)")
    p.add_argument("--address", help="with --executor ray: the cluster to join, e.g. 10.0.0.5:6379 (default: the "
                                     "one this machine runs, else a new local one)")
    p.add_argument("--cpus-per-run", type=argtypes.positive_float,
                   help="with --executor ray: CPUs each run asks for (default 1)")
    p.add_argument("--gpus-per-run", type=argtypes.non_negative_float,
                   help="with --executor ray: GPUs each run asks for (default 0)")
    p.set_defaults(func=run)
    register_report(p.add_subparsers(dest="study_command", metavar="[report]"))  # none: run the notebooks


def register_report(actions) -> None:
    p = actions.add_parser("report", help="print the findings' results section (markdown) from the tracked result "
                                          "files of a full study, results/<dataset>/")
    p.add_argument("--results", type=Path, help="folder holding <dataset>/ (default: the tracked results/)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--main", action="store_true",
                   help="only the main table, as the top README shows it (--main --write README.md)")
    p.add_argument("--write", nargs="?", const="", metavar="FILE",
                   help="replace the block between the results markers (hnlm.study.report.RESULTS_BEGIN/END) in "
                        "FILE (default: the findings, results/<dataset>/README.md) instead of printing")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from hnlm.study.report import findings_file, render_report, write_between_markers
    folder = (args.results or results_dir()) / args.dataset
    markdown = render_report(folder, args.dataset, main_only=args.main)
    if args.write is not None:
        if args.main and not args.write:
            raise UserFacingError("--main --write needs the file to write, e.g. --main --write README.md")
        target = Path(args.write) if args.write else findings_file(folder)
        write_between_markers(target, markdown)
        print(f"{target}: results block rewritten from {folder}")
    else:
        print(markdown)
    return 0


def executor_environment(args) -> dict:
    """The variables that carry the tuning and executor options into the notebook kernels."""
    from hnlm.study.tuning import RETUNE_VARIABLE  # imports torch: not needed to parse the options
    if args.executor != "ray" and (args.address or args.cpus_per_run or args.gpus_per_run):
        raise UserFacingError("--address, --cpus-per-run and --gpus-per-run go with --executor ray")
    chosen = {RETUNE_VARIABLE: "1" if args.retune else None, "HNLM_EXECUTOR": args.executor,
              "HNLM_RAY_ADDRESS": args.address, "HNLM_RAY_CPUS": args.cpus_per_run, "HNLM_RAY_GPUS": args.gpus_per_run}
    return {k: str(v) for k, v in chosen.items() if v is not None}


def run(args) -> int:
    if args.publish and not args.llm_only:
        raise UserFacingError("--publish goes with --llm-only: hnlm study --llm-only --publish --profile full")
    if args.regenerate:
        from hnlm.semantic.outputs import REGENERATE_VAR
        os.environ[REGENERATE_VAR] = "1"    # notebook kernels inherit it
    if args.llm_only:
        return run_llm_only(args)
    os.environ.update(executor_environment(args))
    from hnlm.study.runner import run_study
    report = run_study(args.profile, args.dataset, args.llm, notebooks=args.notebooks, seeds=args.seeds,
                       out_dir=args.out_dir, stop_on_error=args.stop_on_error)
    failed = [name for name, r in report.items() if not r["ok"] and not r.get("skipped")]   # skipped: said why
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


def run_llm_only(args) -> int:
    from hnlm.study.inputs import llm_only_stages
    from hnlm.study.llm_outputs import prepare, unit_options, units
    from hnlm.study.publish import publish_study
    args.stages = llm_only_stages(args.dataset, args.stages)
    if not args.publish:
        prepare(args.profile, args.dataset, args.llm, args.stages, sns_decoding=args.sns_decoding)
        return 0
    for stage, part in units(args.profile, args.stages):  # ship each output as soon as it is made
        options = {**unit_options(stage, part), "sns_decoding": args.sns_decoding}
        prepare(args.profile, args.dataset, args.llm, [stage], **options)
        publish_study(args.profile, args.dataset, args.llm, [stage], **options)
    return 0
