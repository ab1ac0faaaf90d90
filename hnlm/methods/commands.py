"""`hnlm train` (one CF run of any method) and `hnlm methods` (what each method is and its settings).

The handler imports the LLM resources when it runs, so the parser (help, option errors) stays light."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hnlm import argtypes
from hnlm.cf.config import RANK_METRICS, TrainConfig
from hnlm.data.options import add_dataset_options, dataset_from_args
from hnlm.errors import UserFacingError
from hnlm.methods import describe_methods, describe_settings, get_method, setting_help, variant
from hnlm.paths import artifacts_dir
from hnlm.semantic.common import SNS_DECODING, SNS_DECODING_NAMES, split_id_of

TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
def metric(text: str) -> str:
    """<name>@<K>, a rank metric of hnlm.cf.evaluate with a positive cut-off."""
    name, _, k = text.partition("@")
    if name not in RANK_METRICS or not k.isdigit() or int(k) < 1:
        raise argparse.ArgumentTypeError(f"must be <metric>@<K> with a metric of {', '.join(RANK_METRICS)} and K "
                                         f">= 1, got {text!r}")
    return text


def method_name(text: str) -> str:
    """A declared method (the registry loads here, on the first method name, not when the parser is built)."""
    try:
        return get_method(text).name
    except UserFacingError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def choice(*names: str):
    def check(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(names)}, got {text!r}")
        return text
    return check


TRAIN_OPTIONS = {"model": choice("lightgcn", "mf"), "seed": argtypes.non_negative_int,
                 "epochs": argtypes.positive_int, "dim": argtypes.positive_int, "layers": argtypes.non_negative_int,
                 "batch_size": argtypes.positive_int, "lr": argtypes.positive_float,
                 "l2": argtypes.non_negative_float, "loss": choice("bpr", "hinge"),
                 "margin": argtypes.non_negative_float, "patience": argtypes.positive_int,
                 "eval_every": argtypes.positive_int, "metric": metric, "device": str}


def register(sub) -> None:
    p = sub.add_parser("train", help="train MF/LightGCN with one method (a classic sampler or an LLM-based one)",
                       epilog="`hnlm methods` lists the methods, `hnlm methods NAME` shows one's settings with their "
                              "defaults and helps (listing them here would make every `hnlm train` wait for torch)")
    add_dataset_options(p)
    p.add_argument("--sampler", "--method", dest="method", default=None, metavar="NAME", type=method_name,
                   help=f"the method to train with (`hnlm methods`; default: the --config file's `sampler`, "
                        f"else {TrainConfig.sampler})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one of the method's settings, e.g. --set alpha=0.1 (repeatable; `hnlm methods "
                        "NAME` lists them with their defaults and helps); overrides the --config file's "
                        "`sampler_opts`")
    p.add_argument("--config", default=None, type=argtypes.existing_file,
                   help="TOML file of training settings (names as hnlm.cf.TrainConfig, `sampler` and `sampler_opts` "
                        "included); options override it")
    for name, typ in TRAIN_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None,
                       help=f"{setting_help(TRAIN_FIELDS[name])} (default {getattr(TrainConfig, name)})")
    g = p.add_argument_group("inputs of LLM-based methods: the LLM outputs shipped in outputs/ with these settings, "
                             "else those `hnlm profiles`, `hnlm sns`, `hnlm finetune` made in artifacts/")
    g.add_argument("--llm", default="qwen2.5-0.5b", help="the LLM whose outputs to train with")
    g.add_argument("--sns-budget", default="per-user:1", help="budget the SNS negatives were generated with")
    g.add_argument("--sns-context", default="profile", choices=["profile", "history"],
                   help="user context the SNS negatives were generated with (as `hnlm sns --context`)")
    g.add_argument("--sns-decoding", default=SNS_DECODING, choices=SNS_DECODING_NAMES,
                   help="decoding the SNS negatives were generated with: sampled (module 2's K samples per pair, "
                        "copy filter; as `hnlm sns`) or greedy (one negative, no filter; `hnlm sns --temperature 0`)")
    g.add_argument("--hnlmrec-run", default=None,
                   help="fine-tuning run (run-<hash>; default: the run with `hnlm finetune`'s default settings)")
    p.add_argument("--json", default=None, help="write the result here (default: artifacts/<dataset>/runs/...)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    m = sub.add_parser("methods", help="list the training methods, or show one method's settings and defaults")
    m.add_argument("name", nargs="?", type=method_name)
    m.set_defaults(func=run_methods)


def parse_setting(method: str, text: str) -> tuple[str, object]:
    """KEY=VALUE cast to the type of that setting's default (tuples: comma-separated integers)."""
    if "=" not in text:
        raise UserFacingError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(get_method(method).settings)}
    if key not in fields:
        get_method(method).make_settings(**{key: None})   # raises the error that lists the settings
    default = fields[key].default
    try:
        if isinstance(default, bool):
            return key, value.lower() in ("1", "true", "yes")
        if isinstance(default, tuple):
            return key, tuple(int(x) for x in value.split(",") if x.strip())
        return key, type(default)(value)
    except ValueError as err:
        raise UserFacingError(f"--set {text}: {key} takes a {type(default).__name__} ({err})") from err


def train_config(args) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig(**overrides)


def result_path(data, cfg: TrainConfig, method: str) -> Path:
    """Default result file: artifacts/<dataset>/runs/<model>_<method>_split<split id>_seed<seed>.json, the
    split id from `split_id_of` (its seed, and its kind unless random)."""
    return artifacts_dir(data.name, "runs") / f"{cfg.model}_{method}_split{split_id_of(data)}_seed{cfg.seed}.json"


def method_variant(args, cfg: TrainConfig):
    """The method (--sampler, else the config's `sampler`) with its settings: the config's `sampler_opts`,
    then --set. The config's settings of another method than --sampler's are an error, not dropped."""
    method = args.method or cfg.sampler
    opts = dict(cfg.sampler_opts)
    if opts and method != cfg.sampler:
        raise UserFacingError(f"{args.config} sets sampler_opts for sampler {cfg.sampler!r}, but --sampler is "
                              f"{method!r}: drop one of them")
    return variant(method, **{**opts, **dict(parse_setting(method, t) for t in args.set)})


def run_train(args) -> int:
    from hnlm.cf.trainer import save_result, train
    from hnlm.semantic.resources import provide_inputs
    cfg = train_config(args)
    spec = method_variant(args, cfg)
    cfg = dataclasses.replace(cfg, sampler=spec.method, sampler_opts=dict(spec.overrides))  # recorded as trained
    data = dataset_from_args(args)
    if spec.declaration.family == "llm":
        data.require_item_text(f"method {spec.method}")
    resources = provide_inputs(data, args.llm, sns_budget=args.sns_budget, sns_context=args.sns_context,
                               sns_decoding=args.sns_decoding, hnlmrec_run=args.hnlmrec_run)
    try:
        sampler, extension = spec.build(data, resources, cfg.seed)
    except ValueError as err:    # a setting the sampler refuses (e.g. --set candidates=0)
        raise UserFacingError(f"method {spec.method}: {err} (its settings: `hnlm methods {spec.method}`)") from None
    result = train(data, cfg, extension=extension, sampler=sampler, progress=not args.no_progress)
    result.update({"method": spec.method, "settings": dataclasses.asdict(spec.settings()),
                   "resources": resources.digests(spec.needs()), "split_seed": args.split_seed})
    out = Path(args.json) if args.json else result_path(data, cfg, spec.method)
    save_result(result, out)
    print(json.dumps({"json": str(out), "best_epoch": result["best_epoch"],
                      "test": {k: round(v, 4) for k, v in result["test"].items()
                               if k.split("@")[0] in ("recall", "ndcg")}}, indent=1))
    return 0


def run_methods(args) -> int:
    if not args.name:
        print(describe_methods())
        return 0
    method = get_method(args.name)
    print(f"{method.name} ({method.family}{', ablation of ' + method.ablation_of if method.ablation_of else ''}): "
          f"{method.summary}")
    for line in describe_settings(method):
        print(line)
    needs = method.needs(method.settings())
    if needs:
        print("trains with: " + ", ".join(map(str, needs)))
    return 0
