"""The CF experiment grid behind notebooks 06-09: method x backbone x seed runs, cached on disk.

Each run trains with `hnlm.cf.trainer.train` and keeps what the analyses need: test metrics at the best
validation epoch, per-user test vectors (significance over users, sparsity groups), the per-epoch history
(convergence), top-50 test lists (popularity bias) and, per epoch, how many sampled negatives were the
user's held-out positives (false hard negatives). A run is stored as `<out>/cf_runs/<tag>.json` + `.npz`
and reused when its key (dataset, split, backbone, method, seed, config) is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from hnlm.analysis.popularity import recommend
from hnlm.study.context import to_jsonable

LIST_DEPTH = 50
TRAIN_KEYS = ("dim", "layers", "epochs", "batch_size", "lr", "l2", "loss", "margin", "patience",
              "eval_every", "metric", "ks")


class NegativeRecorder(nn.Module):
    """Wraps a sampler and counts, per epoch, negatives that are held-out (valid/test) positives of the
    user. Read-only: it never changes what the inner sampler returns. An nn.Module so that a trainable
    inner sampler (DENS) keeps its parameters in the optimiser and in the best-epoch state."""

    def __init__(self, inner, data):
        super().__init__()
        self.inner = inner
        from hnlm.cf.samplers import PositiveIndex
        self._heldout = PositiveIndex((data.valid + data.test).tocsr(), "cpu")
        self.by_epoch: dict[int, list[int]] = {}

    @property
    def name(self):
        return getattr(self.inner, "name", type(self.inner).__name__)

    def setup(self, model, data):
        if hasattr(self.inner, "setup"):  # setup/counts are optional on samplers (see hnlm.cf.trainer)
            self.inner.setup(model, data)

    def sample(self, users, pos, model, ctx):
        negs = self.inner.sample(users, pos, model, ctx)
        hit = self._heldout.contains(users.cpu(), negs.items.detach().cpu())
        seen = self.by_epoch.setdefault(int(ctx.epoch) + 1, [0, 0])
        seen[0] += int(hit.numel())
        seen[1] += int(hit.sum())
        return negs

    def counts(self):
        epochs = sorted(self.by_epoch)
        inner = self.inner.counts() if hasattr(self.inner, "counts") else {}
        return {**inner, "negatives_by_epoch": [self.by_epoch[e][0] for e in epochs],
                "false_negatives_by_epoch": [self.by_epoch[e][1] for e in epochs]}

    def describe(self):
        return self.inner.describe() if hasattr(self.inner, "describe") else {"name": self.name}


def train_config(backbone: str, method: str, seed: int, settings: dict):
    from hnlm.cf.trainer import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    opts = {k: settings[k] for k in TRAIN_KEYS if k in settings and k in names}
    return TrainConfig(model=backbone, sampler=method, seed=seed,
                       sampler_opts=dict(settings.get("sampler_opts", {}).get(method, {})), **opts)


def build_method(method: str, data, settings: dict, seed: int = 0, resources: dict | None = None):
    """(sampler, extension) of a method. Classic samplers by name; the semantic methods of modules 2-3
    and RLMRec-Con from `resources` ("bank": NegativeBank, "grounded": frame, "rlmrec_text": (users,
    items) embeddings). `sns:alpha=0.1` is SNS with another mixing weight (the alpha sweep)."""
    from hnlm.cf.samplers import SAMPLERS, get_sampler
    if method in SAMPLERS:
        return get_sampler(method, **settings.get("sampler_opts", {}).get(method, {})), None
    name, _, opt = method.partition(":")
    res = resources or {}
    align = dict(settings.get("alignment", {}))
    if opt:
        key, value = opt.split("=")
        align[key] = float(value)
    if name in ("sns", "sns-random", "sns-shuffled") or name.startswith("hnlmrec-"):
        # modules 2-3, and module 4's emitted embeddings through module 3
        from hnlm.semantic.alignment import AlignmentConfig
        from hnlm.semantic.methods import make_alignment
        if name.startswith("hnlmrec-"):
            bank = res["hnlmrec_banks"][name[len("hnlmrec-"):]]
        elif name == "sns-random":
            bank = res["bank"].randomized(seed)
        elif name == "sns-shuffled":
            bank = res["bank"].shuffled(seed)
        else:
            bank = res["bank"]
        cfg = AlignmentConfig(**{k: tuple(v) if k == "hidden" else v for k, v in align.items()}, seed=seed)
        return get_sampler("rns"), make_alignment(data, bank, cfg)
    if name == "sns-grounded":
        from hnlm.semantic.methods import GroundedSampler
        g = settings.get("grounded", {})
        return GroundedSampler(res["grounded"], data, get_sampler("rns"), share=g.get("share", 0.5),
                               pool=g.get("pool", 20), lookup=align.get("lookup", "user"), seed=seed,
                               source=res["bank"].source), None
    if name == "rlmrec-con":
        from hnlm.semantic.rlmrec import RLMRecConfig, RLMRecExtension
        users, items = res["rlmrec_text"]
        return get_sampler("rns"), RLMRecExtension(users, items, RLMRecConfig(seed=seed),
                                                   source=res.get("rlmrec_source", "metadata"))
    raise ValueError(f"unknown method {method!r}: a sampler ({', '.join(SAMPLERS)}), sns, sns:alpha=A, "
                     "sns-random, sns-shuffled, sns-grounded or rlmrec-con")


def run_key(data, config, method_args: dict) -> str:
    blob = json.dumps({"dataset": data.name, "split": data.stats.get("split_seed"),
                       "split_mode": data.stats.get("split_mode"), "config": dataclasses.asdict(config),
                       "method_args": method_args}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resource_id(resources: dict | None, method: str) -> str | None:
    """Digest of what `method` trains with (resources["ids"], by method name without ":options")."""
    return (resources or {}).get("ids", {}).get(method.partition(":")[0])


def run_one(data, backbone: str, method: str, seed: int, settings: dict, folder: Path,
            resources: dict | None = None) -> dict:
    """Train one (backbone, method, seed) run, or load it when the same key was stored before."""
    from hnlm.cf.trainer import train
    config = train_config(backbone, method, seed, settings)
    from hnlm.cf.samplers import SAMPLERS
    semantic = {} if method in SAMPLERS else {"alignment": settings.get("alignment"), "grounded":
                                              settings.get("grounded"), "resources": resource_id(resources, method)}
    key = run_key(data, config, semantic)
    tag = f"{backbone}__{method.replace(':', '_').replace('=', '')}__seed{seed}"
    path, lists_path = folder / f"{tag}.json", folder / f"{tag}.npz"
    if path.exists() and lists_path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored
    torch.manual_seed(seed)
    sampler, extension = build_method(method, data, settings, seed, resources)
    recorder = NegativeRecorder(sampler, data)
    result = train(data, config, extension=extension, sampler=recorder, progress=False)
    model = result.pop("model")
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = (e.detach().cpu() for e in model.propagate())
    users, lists = recommend(lambda u: (user_emb[torch.from_numpy(u)] @ item_emb.T).numpy(), data,
                             k=min(LIST_DEPTH, data.n_items), split="test")
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(lists_path, users=users, lists=lists)
    compact = to_jsonable({"key": key, "tag": tag, "backbone": backbone, "method": method, "seed": seed,
                           **{k: v for k, v in result.items() if k != "seed"}})
    path.write_text(json.dumps(compact))
    return compact


def run_grid(data, backbones, methods, seeds, settings: dict, out_dir: Path, resources: dict | None = None) -> list[dict]:
    """Every (backbone, method, seed) run, in a stable order, with one progress bar. `resources` carries what
    semantic methods train with (see build_method) and, in "ids", a digest per method (see resource_id)."""
    folder = Path(out_dir) / "cf_runs"
    specs = [(b, m, s) for b in backbones for m in methods for s in seeds]
    results = []
    for b, m, s in tqdm(specs, desc="CF runs", unit="run"):
        results.append(run_one(data, b, m, s, settings, folder, resources))
    return results


def load_lists(out_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    stored = np.load(Path(out_dir) / "cf_runs" / f"{tag}.npz")
    return stored["users"], stored["lists"]


def load_runs(out_dir: Path, tags) -> list[dict]:
    return [json.loads((Path(out_dir) / "cf_runs" / f"{t}.json").read_text()) for t in tags]


def runs_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run: backbone, method, seed, best epoch, seconds per epoch, test metrics."""
    rows = []
    for r in results:
        metrics = {k: v for k, v in r["test"].items() if isinstance(v, (int, float)) and "@" in k}
        rows.append({"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                     "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                     "train_s_per_epoch": r["timings"]["train_s_per_epoch"], **metrics})
    return pd.DataFrame(rows)


def curves_frame(results: list[dict]) -> pd.DataFrame:
    """Validation metrics by epoch: backbone, method, seed, epoch, loss, metric columns."""
    rows = []
    for r in results:
        for h in r["history"]:
            if "valid" in h:
                rows.append({"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                             "epoch": h["epoch"], "loss": h["loss"], **h["valid"]})
    return pd.DataFrame(rows)


def false_negative_frame(results: list[dict]) -> pd.DataFrame:
    """Share of sampled negatives that were held-out positives, per run and epoch."""
    rows = []
    for r in results:
        c = r["counts"]
        for epoch, (n, f) in enumerate(zip(c["negatives_by_epoch"], c["false_negatives_by_epoch"]), 1):
            rows.append({"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                         "epoch": epoch, "negatives": n, "false_negatives": f, "share": f / n if n else np.nan})
    return pd.DataFrame(rows)


def alignment_frame(results: list[dict]) -> pd.DataFrame:
    """Module 3's counts per semantic run: training pairs that got a semantic negative; the others kept
    their ID negative (a fallback, reported next to the metrics it affects)."""
    frame = pd.DataFrame([{"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                           **r["counts"]["alignment"]} for r in results if "alignment" in r["counts"]])
    if len(frame):
        frame["with_negative_share"] = frame["with_negative"] / frame["pairs"]
    return frame


def per_user(results: list[dict], metric: str, backbone: str) -> dict:
    """{(method, seed): per-user vector} of one backbone, aligned on the same user order."""
    out, users = {}, None
    for r in results:
        if r["backbone"] != backbone:
            continue
        u = r["per_user_test"]["users"]
        if users is None:
            users = u
        elif u != users:
            raise ValueError(f"{r['tag']}: per-user vectors cover different users")
        out[(r["method"], r["seed"])] = np.asarray(r["per_user_test"][metric], dtype=float)
    return out
