"""`hnlm train`: one CF run (backbone x sampler or registered method), result written as JSON.

Semantic modules add methods with `register_method(name, builder)` where
`builder(data, args) -> (sampler or None, extension or None)` (None sampler = the --sampler option's), and
extra options with `register_options(fn)` where `fn(parser)` adds arguments to `hnlm train`.
"""

from __future__ import annotations

import json
from pathlib import Path

from hnlm.errors import UserFacingError

_METHODS: dict = {}
_OPTION_FNS: list = []
_PARSERS: list = []   # train parsers already built (options registered later are added to them too)


def register_method(name: str, builder) -> None:
    from hnlm.cf.samplers import SAMPLERS
    if name in SAMPLERS:
        raise ValueError(f"{name!r} is a built-in sampler name")
    _METHODS[name] = builder


def register_options(fn) -> None:
    if fn in _OPTION_FNS:
        return
    _OPTION_FNS.append(fn)
    for parser in _PARSERS:
        fn(parser)


def method_names() -> list[str]:
    from hnlm.cf.samplers import SAMPLERS
    return [*SAMPLERS, *_METHODS]


def _kv(text: str):
    if "=" not in text:
        raise UserFacingError(f"--sampler-opt expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train MF/LightGCN with a negative sampler or a registered method")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/valid/test split")
    p.add_argument("--config", default=None, help="TOML file with training settings (see hnlm/cf/defaults.toml)")
    p.add_argument("--model", choices=["mf", "lightgcn"], default=None)
    p.add_argument("--sampler", default=None,
                   help="rns, pns, dns, dns-mn, mixgcf, dens, ahns, or a method registered by a module")
    p.add_argument("--sampler-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option, e.g. candidates=64 (repeatable)")
    for name, typ in [("seed", int), ("epochs", int), ("dim", int), ("layers", int), ("batch-size", int),
                      ("lr", float), ("l2", float), ("loss", str), ("margin", float), ("patience", int),
                      ("eval-every", int), ("metric", str), ("device", str)]:
        p.add_argument(f"--{name}", type=typ, default=None)
    p.add_argument("--json", default=None, help="write the result here (default: artifacts/<dataset>/runs/...)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)
    _PARSERS.append(p)
    for fn in _OPTION_FNS:
        fn(p)


def config_from_args(args):
    from hnlm.cf.trainer import TrainConfig
    overrides = {k: getattr(args, k) for k in ("model", "sampler", "seed", "epochs", "dim", "layers",
                                                "batch_size", "lr", "l2", "loss", "margin", "patience",
                                                "eval_every", "metric", "device")
                 if getattr(args, k, None) is not None}
    if args.sampler_opt:
        overrides["sampler_opts"] = dict(_kv(t) for t in args.sampler_opt)
    if args.config:
        if not Path(args.config).exists():
            raise UserFacingError(f"config file {args.config} does not exist")
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig(**overrides)


def run_train(args) -> int:
    from hnlm.cf.samplers import SAMPLERS, get_sampler
    from hnlm.cf.trainer import save_result, train
    from hnlm.data import load_dataset
    from hnlm.paths import artifacts_dir

    cfg = config_from_args(args)
    if cfg.sampler not in SAMPLERS and cfg.sampler not in _METHODS:
        raise UserFacingError(f"unknown sampler/method {cfg.sampler!r}: choose one of {', '.join(method_names())}")
    data = load_dataset(args.dataset, seed=args.split_seed)
    sampler, extension = None, None
    if cfg.sampler in _METHODS:
        sampler, extension = _METHODS[cfg.sampler](data, args)
        if sampler is None:
            sampler = get_sampler("rns")
    else:
        try:
            sampler = get_sampler(cfg.sampler, **cfg.sampler_opts)
        except TypeError as err:
            raise UserFacingError(f"bad --sampler-opt for {cfg.sampler}: {err}") from err
    result = train(data, cfg, extension=extension, sampler=sampler, progress=not args.no_progress)
    result["method"] = cfg.sampler
    result["split_seed"] = args.split_seed
    out = Path(args.json) if args.json else (
        artifacts_dir(data.name, "runs") / f"{cfg.model}_{cfg.sampler}_split{args.split_seed}_seed{cfg.seed}.json")
    save_result(result, out)
    print(json.dumps({"json": str(out), "best_epoch": result["best_epoch"],
                      "test": {k: round(v, 4) for k, v in result["test"].items()
                               if k.split("@")[0] in ("recall", "ndcg")}}, indent=1))
    return 0
