"""The tuning protocol: every method of a comparison table gets the same search on validation recall@20.

For each (backbone, method with its fixed settings and inputs), on seed 0 (`TUNING_SEED`):
1. the CF training grid: every learning rate x batch size of the profile's axes (`hnlm.cf.search.TRAIN_SEARCH`:
   1e-3, 5e-3, 2e-2 x 2048, 8192 in `full`) at the method's default settings;
2. each training axis in turn at the best point, widened past an edge that is best (`Axis.beyond`);
3. each of the method's own key settings (`Method.search`, declared beside the method) in turn, the same way.
A run at learning rate lr is validated every max(1, round(5e-3 / lr)) epochs (`hnlm.cf.search.lr_protocol`), so
its patience and cap scale with 1 / lr. The chosen point is the best valid recall@20 visited (ties: the first
visited); it then runs on every seed of the table. An ablation (`Method.ablation_of`) runs at its parent's
chosen point, so that it differs from the parent only in the idea it removes; a setting a table fixes
explicitly (the alpha sweep's alpha) keeps its value, and the rest of the point applies.

No trial is stopped early: successive halving ranks trials by their early scores, which favours exactly the
fast-starting, early-peaking samplers (high learning rates) that a slow, better run at 1e-3 would beat.

Every trial is a stored CF run under its content key (`hnlm.study.experiments`), and its setting and valid score
are a row of the tuning table (`tuning.csv` beside the notebook results; `full`: the tracked
`results/<dataset>/tuning.csv`). A tuning is replayed from that table: a trial whose key has a row is not trained
again, so with the table present `make study` re-derives every chosen point without training a trial, and a
killed tuning resumes. `hnlm study --retune` (HNLM_RETUNE=1) ignores the table's rows (runs stored in `cf_runs/`
with the same key are still reused: the computation is deterministic).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from hnlm.cf.search import TRAIN_SEARCH, Axis, lr_protocol
from hnlm.cf.trainer import TrainConfig
from hnlm.methods import Variant, get_method
from hnlm.paths import results_dir
from hnlm.semantic.resources import Resources
from hnlm.study.experiments import RunSpec, run_specs, stopped_by_cap

TUNING_SEED = 0
TUNING_FILE = "tuning.csv"
RETUNE_VARIABLE = "HNLM_RETUNE"


@dataclass(frozen=True)
class Space:
    """A profile's tuning budget: the training axes' first values, how many of each method axis' declared values
    are tried (None: all), and how many widening steps an axis may take past an edge."""

    train: dict = field(default_factory=lambda: {k: a.values for k, a in TRAIN_SEARCH.items()})
    method_values: int | None = None
    widen: int = 3

    @classmethod
    def of(cls, conf: dict | None) -> "Space | None":
        """The profile's `tuning` block ({} for the defaults; absent or None: no tuning)."""
        if conf is None:
            return None
        values = {k: tuple(conf[k]) for k in TRAIN_SEARCH if k in conf}
        return cls({**cls().train, **values}, conf.get("method_values"), conf.get("widen", cls.widen))

    def train_axes(self) -> dict[str, Axis]:
        return {k: dataclasses.replace(TRAIN_SEARCH[k], values=tuple(v)) for k, v in self.train.items()}

    def method_axes(self, method) -> dict[str, Axis]:
        return {k: dataclasses.replace(a, values=a.values[:self.method_values]) for k, a in method.search.items()}


@dataclass(frozen=True)
class Target:
    """What is tuned: a method (the parent, for an ablation) with its fixed settings, on one backbone."""

    backbone: str
    method: str
    fixed: tuple        # the variant's overrides outside the method's search axes

    @classmethod
    def of(cls, variant: Variant, backbone: str) -> "Target":
        method = variant.declaration.ablation_of or variant.method
        searched = get_method(method).search
        return cls(backbone, method, tuple((k, v) for k, v in variant.overrides if k not in searched))

    @property
    def name(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.fixed)])


def point_label(target: Target, train: dict, settings: dict) -> str:
    shown = {"lr": train["lr"], "batch": train["batch_size"], **settings}
    return f"tune {target.name} " + " ".join(f"{k}={v}" for k, v in shown.items())


class Tuner:
    """Tunes each Target once (lazily, when a table first needs it) and applies the chosen point to variants.

    `settings` are the notebook's profile settings (TrainConfig overrides: the cap, patience, ...); `folder` the
    run store (`<out_dir>/cf_runs`); `table` the tuning table read at start (unless `retune`) and rewritten after
    every trial through `write` (text -> None); `executor` trains each batch of trials (the learning rate x batch
    grid, the values of one axis) together (default: `hnlm.study.executors.from_env()`)."""

    def __init__(self, data, settings: dict, folder: Path, resources: Resources | None, space: Space,
                 table: Path, write, retune: bool = False, executor=None):
        self.data, self.settings, self.folder, self.space = data, settings, Path(folder), space
        self.executor = executor
        self.resources = resources if resources is not None else Resources()
        self.write = write
        known = pd.read_csv(table) if table.exists() and not retune else pd.DataFrame()
        self.rows: list[dict] = known.to_dict("records")
        self.by_key = {r["key"]: r for r in self.rows}
        self.chosen: dict[tuple, tuple[dict, dict]] = {}
        self.metric = settings.get("metric", TrainConfig.metric)
        self.cap = settings.get("epochs", TrainConfig.epochs)

    # ------------------------------------------------------------------ applying

    def apply(self, variant: Variant, backbone: str) -> Variant:
        """`variant` at its target's chosen point (tuned first if needed), under its own label."""
        target = Target.of(variant, backbone)
        key = (target, tuple(self.resources.digest(k) for k in variant.needs()))
        if key not in self.chosen:
            self.chosen[key] = self.tune(target)
        settings, train = self.chosen[key]
        names = {f.name for f in dataclasses.fields(variant.declaration.settings)}
        own = {k: v for k, v in settings.items() if k in names}
        overrides = {**own, **dict(variant.overrides)}          # what the table fixes explicitly wins
        return dataclasses.replace(variant, label=variant.name, overrides=tuple(sorted(overrides.items())),
                                   train=tuple(sorted(train.items())))

    # ------------------------------------------------------------------ searching

    def tune(self, target: Target) -> tuple[dict, dict]:
        """Run (or replay) the protocol for `target`; returns its chosen (method settings, train settings)."""
        method = get_method(target.method)
        defaults = dataclasses.asdict(method.make_settings(**dict(target.fixed)))
        train_axes, method_axes = self.space.train_axes(), self.space.method_axes(method)
        settings = {k: defaults[k] for k in method_axes}
        grid = [dict(zip(train_axes, values)) for values in itertools.product(*[a.values for a in train_axes.values()])]
        n = len(grid) + sum(len(a.values) for a in method_axes.values())
        self._bar = tqdm(total=n, desc=f"tuning {target.name} ({target.backbone})", unit="trial")
        self._trials: list[dict] = []
        scores = self._score(target, [(p, settings) for p in grid], "train grid")
        train = grid[max(range(len(grid)), key=scores.__getitem__)]
        edges = {}
        for name, axis in train_axes.items():
            train, edges[name] = self._climb(target, name, axis, train, settings, on_train=True)
        for name, axis in method_axes.items():
            settings, edges[name] = self._climb(target, name, axis, train, settings, on_train=False)
        self._bar.close()
        self._finish(target, self._key(target, train, settings), train, settings, edges)
        return settings, self._train_settings(train)

    def _climb(self, target, name: str, axis: Axis, train: dict, settings: dict, on_train: bool):
        """Best value of one axis with the others fixed (its values trained together), widened one value at a
        time past a best edge. Returns (point, edge note)."""
        point = dict(train if on_train else settings)
        stage = f"{'train' if on_train else 'method'} axis {name}"

        def trial(value):
            moved = {**point, name: value}
            return (moved, settings) if on_train else (train, moved)

        values = sorted({*axis.values, point[name]})
        scored = dict(zip(values, self._score(target, [trial(v) for v in values], stage)))
        for _ in range(self.space.widen):
            best = max(scored, key=scored.get)
            nxt = axis.beyond(list(scored), best)
            if nxt is None:
                break
            self._bar.total += 1
            scored[nxt] = self._score(target, [trial(nxt)], stage)[0]
            if scored[nxt] <= scored[best]:
                break
        best = point[name] if scored[point[name]] == max(scored.values()) else max(scored, key=scored.get)
        edge = None
        if best in (min(scored), max(scored)) and len(scored) > 1:
            edge = "bound" if axis.beyond(list(scored), best) is None else "widening budget spent"
        return {**point, name: best}, edge

    def _train_settings(self, train: dict) -> dict:
        return {**train, **lr_protocol(train["lr"], self.cap)}

    def _spec(self, target: Target, train: dict, settings: dict) -> RunSpec:
        variant = Variant(target.method, tuple(sorted({**dict(target.fixed), **settings}.items())),
                          point_label(target, train, settings), tuple(sorted(self._train_settings(train).items())))
        return RunSpec(target.backbone, variant, TUNING_SEED)

    def _key(self, target: Target, train: dict, settings: dict) -> str:
        spec = self._spec(target, train, settings)
        return spec.key(self.data, spec.config(self.settings), self.resources)

    def _score(self, target: Target, points: list[tuple[dict, dict]], stage: str) -> list[float]:
        """Valid scores of trials (train point, method settings): visited ones and table rows as they are, the
        others trained together by the executor (in parallel where it can)."""
        specs = [self._spec(target, t, s) for t, s in points]
        keys = [self._key(target, t, s) for t, s in points]
        visited = {t["key"]: t for t in self._trials}
        new = list(dict.fromkeys(k for k in keys if k not in visited and k not in self.by_key))
        trained = dict(zip(new, run_specs(self.data, [specs[keys.index(k)] for k in new], self.settings, self.folder,
                                          self.resources, self.executor, bar=self._bar))) if new else {}
        for (train, settings), key in zip(points, keys):
            if key in visited:
                continue
            if key in trained:
                r = trained[key]
                measured = {"valid": r["valid"][self.metric], "best_epoch": r["best_epoch"],
                            "epochs_run": r["epochs_run"], "stopped_by_cap": stopped_by_cap(r),
                            "train_s": round(r["timings"]["train_s_total"], 2)}
            else:
                measured = self.by_key[key]
                self._bar.update()
            visited[key] = row = {
                "dataset": self.data.name, "backbone": target.backbone, "target": target.name,
                "method": target.method, "stage": stage, "trial": len(self._trials), **self._train_settings(train),
                "settings": json.dumps(settings, sort_keys=True), "metric": f"valid {self.metric}", "key": key,
                **{k: measured[k] for k in ("valid", "best_epoch", "epochs_run", "stopped_by_cap", "train_s")},
                "chosen": False, "edge": None}
            self._trials.append(row)
            self.by_key[key] = row
        self._save(target)
        return [float(visited[k]["valid"]) for k in keys]

    def _finish(self, target: Target, key: str, train: dict, settings: dict, edges: dict) -> None:
        """Mark the chosen trial, note which chosen values sit at an edge, and write the table."""
        best = next(t for t in self._trials if t["key"] == key)
        best["chosen"] = True
        best["edge"] = "; ".join(f"{k}: {v}" for k, v in edges.items() if v) or None
        self._save(target, final=True)
        print(f"tuned {target.name} ({target.backbone}): lr {train['lr']:g}, batch {train['batch_size']}"
              + "".join(f", {k} {v}" for k, v in settings.items())
              + f" -> valid {self.metric} {best['valid']:.4f} ({len(self._trials)} trials)"
              + (f"; at an edge: {best['edge']}" if best["edge"] else ""))

    def _save(self, target: Target, final: bool = False) -> None:
        """The table: other targets' rows, this target's trials and, until it finishes, its older rows not visited
        yet (so a kill mid-tuning loses none of them)."""
        mine = [r["target"] == target.name and r["backbone"] == target.backbone for r in self.rows]
        visited = {t["key"] for t in self._trials}
        others = [r for r, m in zip(self.rows, mine) if not m]
        older = [] if final else [r for r, m in zip(self.rows, mine) if m and r["key"] not in visited]
        rows = others + older + self._trials
        if final:
            self.rows = rows
        self.write(pd.DataFrame(rows).to_csv(index=False))


def study_tuner(run, data, resources: Resources | None = None) -> Tuner | None:
    """The notebook's Tuner under its profile's `tuning` block (None when the profile does not tune). The table
    is `tuning.csv` of the run folder, and for `full` also the tracked results folder, from which it is read."""
    space = Space.of(run.settings.get("tuning"))
    if space is None:
        return None
    table = (run.tracked_dir or run.out_dir) / TUNING_FILE
    retune = os.environ.get(RETUNE_VARIABLE, "") not in ("", "0")
    return Tuner(data, run.settings, run.out_dir / "cf_runs", resources, space, table,
                 lambda text: run.write_result(TUNING_FILE, text), retune)


def tuning_table(path: Path) -> pd.DataFrame:
    """The tuning table as written (`settings`: each trial's method settings as JSON)."""
    table = pd.read_csv(path)
    table["chosen"] = table["chosen"].astype(str) == "True"
    return table


def best_by_lr(trials: pd.DataFrame) -> pd.DataFrame:
    """The best valid score each target reached at each learning rate (over batch sizes and its own settings):
    the curve that shows whether a method's learning rate was the issue."""
    best = trials.groupby(["backbone", "target", "lr"], sort=False)["valid"].max().reset_index()
    return best.rename(columns={"target": "method"}).sort_values(["backbone", "method", "lr"], kind="stable")


def chosen_points(trials: pd.DataFrame, shared: dict) -> pd.DataFrame:
    """One row per tuned target: its chosen point and valid score, beside its valid score at the `shared`
    training setting (e.g. {"lr": 2e-2, "batch_size": 8192}) with its default settings when the search visited
    it, and which chosen values sit at an edge of what was searched. A target whose tuning has not finished has
    no row."""
    rows = []
    for (backbone, target), part in trials.groupby(["backbone", "target"], sort=False):
        if not part["chosen"].any():
            continue      # its tuning was stopped before it chose (it resumes from these rows)
        chosen = part[part["chosen"]].iloc[0]
        at_shared = part[(part["stage"] == "train grid") & (part["lr"] == shared["lr"])
                         & (part["batch_size"] == shared["batch_size"])]
        rows.append({"backbone": backbone, "method": target, "lr": chosen["lr"], "batch_size": chosen["batch_size"],
                     "eval_every": chosen["eval_every"], **json.loads(chosen["settings"]),
                     "valid": chosen["valid"], "valid at shared setting": at_shared["valid"].max(),
                     "best_epoch": chosen["best_epoch"], "trials": len(part), "edge": chosen["edge"]})
    return pd.DataFrame(rows)


def before_after(tuned: pd.DataFrame, untuned: pd.DataFrame, metric: str, reference: str = "rns") -> pd.DataFrame:
    """Per backbone and method present in both run frames: mean test `metric` untuned and tuned, the change, and
    each one's gain over `reference` (does the ordering against it change?)."""
    means = [frame.groupby(["backbone", "method"], sort=False)[metric].mean().rename(name)
             for frame, name in ((untuned, "untuned"), (tuned, "tuned"))]
    table = pd.concat(means, axis=1, join="inner").reset_index()
    table["change"] = table["tuned"] / table["untuned"] - 1
    for column in ("untuned", "tuned"):
        ref = table[table["method"] == reference].set_index("backbone")[column]
        table[f"{column} vs {reference}"] = table[column] / table["backbone"].map(ref) - 1
    return table


def untuned_runs(dataset: str) -> pd.DataFrame | None:
    """Notebook 06's runs at the shared setting before tuning (`results/<dataset>/untuned/06_runs.csv`, kept from
    the study that ran every method at lr 2e-2 and batch 8192), or None when this results folder has none."""
    path = results_dir() / dataset / "untuned" / "06_runs.csv"
    return pd.read_csv(path) if path.exists() else None
