"""The CF experiment grid behind notebooks 06-09: method x backbone x seed runs, cached on disk.

Each run trains with `hnlm.cf.trainer.train` and keeps what the analyses need: test metrics at the best
validation epoch, per-user test vectors (significance over users, sparsity groups), the per-epoch history
(convergence), top-50 test lists (popularity bias) and, per epoch, how many sampled negatives were the
user's held-out positives (false hard negatives). A run is stored as `<out>/cf_runs/<tag>.json` + `.npz`
and reused when its key (dataset, split, backbone, method, seed, config) is unchanged. The store is also indexed
by key (`cf_runs/keys/<key>` names the tag that holds it), so two labels of the same computation (a tuning trial
and the table row at its chosen point, or one method in two notebooks' tables) share one training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from hnlm import atomic
from hnlm.analysis.popularity import recommend, run_popularity
from hnlm.analysis.sparsity import metrics_by_group
from hnlm.atomic import write_npz, write_text
from hnlm.cf.samplers import PositiveIndex
from hnlm.cf.trainer import TrainConfig, train
from hnlm.methods import Variant, as_variant
from hnlm.semantic.resources import Resources
from hnlm.study import executors
from hnlm.study.context import to_jsonable

LIST_DEPTH = 50


class NegativeRecorder(nn.Module):
    """Wraps a sampler and counts, per epoch, negatives that are held-out (valid/test) positives of the
    user. Read-only: it never changes what the inner sampler returns. An nn.Module so that a trainable
    inner sampler (DENS) keeps its parameters in the optimiser and in the best-epoch state."""

    def __init__(self, inner, data):
        super().__init__()
        self.inner = inner
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


def train_config(backbone: str, seed: int, settings: dict, train: dict | None = None) -> TrainConfig:
    """The CF run's TrainConfig: its defaults, overridden by the profile's keys of the same names, then by the
    variant's own `train` settings (its tuned learning rate, batch size and lr-scaled validation interval)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    chosen = {k: v for k, v in {**settings, **(train or {})}.items()
              if k in names and k not in ("model", "seed", "sampler", "sampler_opts")}
    return TrainConfig(model=backbone, seed=seed, **chosen)


@dataclass(frozen=True)
class RunSpec:
    """One CF run's identity: dataset split, TrainConfig, method variant with its settings, and the digest of
    every resource the method trains with. Stored runs are reused exactly when the key matches."""

    backbone: str
    variant: Variant
    seed: int

    @property
    def tag(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", self.variant.name).strip("_")
        return f"{self.backbone}__{slug}__seed{self.seed}"

    def config(self, settings: dict) -> TrainConfig:
        return train_config(self.backbone, self.seed, settings, dict(self.variant.train))

    def key(self, data, config: TrainConfig, resources: Resources) -> str:
        blob = json.dumps({"dataset": data.name, "split": data.stats.get("split_seed"),
                           "split_mode": data.stats.get("split_mode"), "config": dataclasses.asdict(config),
                           "method": self.variant.method, "settings": dataclasses.asdict(self.variant.settings()),
                           "resources": resources.digests(self.variant.needs())},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_run(folder: Path, tag: str, key: str) -> dict | None:
    path, lists_path = folder / f"{tag}.json", folder / f"{tag}.npz"
    if path.exists() and lists_path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored
    return None


def stored_run(data, spec: RunSpec, settings: dict, folder: Path, resources: Resources) -> dict | None:
    """The run stored under the same key (same data split, settings and inputs), if there is one: under the spec's
    own tag, else under the tag the key index names, copied to the spec's tag with the spec's labels."""
    key = spec.key(data, spec.config(settings), resources)
    stored = _read_run(folder, spec.tag, key)
    index = folder / "keys" / key
    if stored is not None or not index.exists():
        return stored
    other = _read_run(folder, index.read_text().strip(), key)
    if other is None:
        return None
    relabelled = {**other, **run_labels(spec)}
    with atomic.atomic_path(folder / f"{spec.tag}.npz") as tmp:
        shutil.copyfile(folder / f"{other['tag']}.npz", tmp)
    atomic.write_text(folder / f"{spec.tag}.json", json.dumps(relabelled))
    return relabelled


RUN_LABELS = ("tag", "backbone", "method", "method_name", "overrides", "family", "seed")


def run_labels(spec: RunSpec) -> dict:
    """What names a stored run in tables (RUN_LABELS; the computation itself is named by its key)."""
    return dict(zip(RUN_LABELS, (spec.tag, spec.backbone, spec.variant.name, spec.variant.method,
                                 dict(spec.variant.overrides), spec.variant.declaration.family, spec.seed)))


def run_one(data, spec: RunSpec, settings: dict, folder: Path, resources: Resources | None = None) -> dict:
    """Train one run, or load it when a run with the same key was stored before."""
    resources = resources if resources is not None else Resources()
    stored = stored_run(data, spec, settings, folder, resources)
    if stored is not None:
        return stored
    config = spec.config(settings)
    key = spec.key(data, config, resources)
    path, lists_path = folder / f"{spec.tag}.json", folder / f"{spec.tag}.npz"
    torch.manual_seed(spec.seed)
    sampler, extension = spec.variant.build(data, resources, spec.seed)
    recorder = NegativeRecorder(sampler, data)
    result = train(data, config, extension=extension, sampler=recorder, progress=False)
    model = result.pop("model")
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = (e.detach().cpu() for e in model.propagate())
    users, lists = recommend(lambda u: (user_emb[torch.from_numpy(u)] @ item_emb.T).numpy(), data,
                             k=min(LIST_DEPTH, data.n_items), split="test")
    write_npz(lists_path, compressed=True, users=users, lists=lists)   # atomic, then the json that marks it done
    compact = to_jsonable({"key": key, **run_labels(spec), **{k: v for k, v in result.items() if k != "seed"}})
    write_text(path, json.dumps(compact))
    write_text(folder / "keys" / key, spec.tag)
    return compact


def run_specs(data, specs: list[RunSpec], settings: dict, folder: Path, resources: Resources | None = None,
              executor=None, bar=None) -> list[dict]:
    """Each spec's run, in order: stored ones loaded, the others trained by `executor` (default
    `hnlm.study.executors.from_env()`: here, local processes or Ray tasks), with a progress bar of runs (ETA);
    `bar` (a tqdm) counts only the trained ones instead."""
    resources = resources if resources is not None else Resources()
    executor = executor if executor is not None else executors.from_env()
    results = [stored_run(data, spec, settings, folder, resources) for spec in specs]
    todo = [i for i, r in enumerate(results) if r is None]
    # Jobs that leave this process get the inputs their runs need as plain values (loaders do not travel).
    needed = Resources({k: resources[k] for i in todo for k in specs[i].variant.needs()}) \
        if executor.ships_inputs else resources
    own = bar is None
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="CF runs", unit="run") if own else bar
    done = executor.map(run_one, [(data, specs[i], settings, folder, needed) for i in todo], bar.update)
    if own:
        bar.close()
    for i, result in zip(todo, done):
        results[i] = result
    return results


def run_grid(data, backbones, variants, seeds, settings: dict, out_dir: Path,
             resources: Resources | None = None, executor=None, tuner=None) -> list[dict]:
    """Every (backbone, variant, seed) run, in a stable order (`run_specs`). `variants` are
    `hnlm.methods.Variant`s or method names; `resources` holds what LLM-based methods train with. `tuner`
    (`hnlm.study.tuning.Tuner`) puts each variant at its tuned point first (tuning it if its table has no trials
    for it). Stored runs with the same key are reused, so a killed grid resumes where it stopped."""
    pairs = [(b, as_variant(v)) for b in backbones for v in variants]
    if tuner is not None:      # every method at its tuned point: the tuning's own bars nest under this one
        pairs = [(b, tuner.apply(v, b)) for b, v in tqdm(pairs, desc="tuned methods", unit="method")]
    specs = [RunSpec(b, v, s) for b, v in pairs for s in seeds]
    return run_specs(data, specs, settings, Path(out_dir) / "cf_runs", resources, executor)


def load_lists(out_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    stored = np.load(Path(out_dir) / "cf_runs" / f"{tag}.npz")
    return stored["users"], stored["lists"]


def load_runs(out_dir: Path, tags) -> list[dict]:
    return [json.loads((Path(out_dir) / "cf_runs" / f"{t}.json").read_text()) for t in tags]


def stopped_by_cap(result: dict) -> bool:
    """The run reached its epoch cap while still within `patience` validations of its best epoch: it may not have
    converged, and its numbers must be flagged."""
    cfg = result["config"]
    patience_epochs = cfg["patience"] * cfg.get("eval_every", 1)
    return result["epochs_run"] >= cfg["epochs"] and result["epochs_run"] - result["best_epoch"] < patience_epochs


def runs_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run: backbone, method, family, seed, learning rate and batch size, best and last epoch, whether
    the cap stopped it, seconds per epoch, test metrics, and the validation metrics (columns "valid <metric>") at
    the best epoch, on which baselines are chosen."""
    rows = []
    for r in results:
        test = {k: v for k, v in r["test"].items() if isinstance(v, (int, float)) and "@" in k}
        valid = {f"valid {k}": v for k, v in r["valid"].items() if isinstance(v, (int, float)) and "@" in k}
        rows.append({"backbone": r["backbone"], "method": r["method"], "family": r.get("family", "classic"),
                     "seed": r["seed"], "lr": r["config"]["lr"], "batch_size": r["config"]["batch_size"],
                     "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                     "stopped_by_cap": stopped_by_cap(r), "train_s_per_epoch": r["timings"]["train_s_per_epoch"],
                     **test, **valid})
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


def default_llm_runs(results: list[dict]) -> list[dict]:
    """Runs of LLM-based methods at their default settings (e.g. 04's, without its alpha sweep)."""
    return [r for r in results if r.get("family") == "llm" and not r.get("overrides")]


def popularity_frame(results: list[dict], out_dir: Path, data, head: np.ndarray, k: int) -> pd.DataFrame:
    """Per run: head/tail accuracy and popularity of its stored top-k test lists (hnlm.analysis.popularity)."""
    rows = []
    for r in results:
        users, lists = load_lists(out_dir, r["tag"])
        rows.append({"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                     **run_popularity(users, lists, data, head, k)})
    return pd.DataFrame(rows)


def sparsity_frame(results: list[dict], metrics, groups: np.ndarray, labels) -> pd.DataFrame:
    """Per run and user group (hnlm.analysis.sparsity): the mean of each metric over the group's users."""
    frames = []
    for r in results:
        vectors = r["per_user_test"]
        frame = metrics_by_group({m: vectors[m] for m in metrics}, np.asarray(vectors["users"]), groups, labels)
        frames.append(frame.assign(backbone=r["backbone"], method=r["method"], seed=r["seed"]))
    return pd.concat(frames, ignore_index=True)


def gain_over(frame: pd.DataFrame, metric: str, reference: str, keys=("backbone", "group")) -> pd.Series:
    """Relative gain of each row's `metric` over the `reference` method's row with the same keys."""
    ref = frame[frame["method"] == reference].set_index(list(keys))[metric]
    return frame[metric] / ref.loc[list(frame[list(keys)].itertuples(index=False, name=None))].to_numpy() - 1


def sweep_frame(runs: pd.DataFrame, variants, setting: str) -> pd.DataFrame:
    """The runs of `variants` (one method, `setting` changed) with the setting's value as a column, sorted by
    it and given as labels (a plot then spaces the values evenly)."""
    values = {v.name: getattr(v.settings(), setting) for v in variants}
    frame = runs[runs["method"].isin(list(values))].copy()
    frame[setting] = frame["method"].map(values)
    return frame.sort_values(setting).astype({setting: str})
