"""What a study notebook needs around its parameters: settings, output folder, result and figure writers.

A notebook's only setup is `run = start("06_main_results", dataset, llm, profile, seeds, out_dir)`; the
result JSON goes to `<out_dir>/<notebook>.json` (default out_dir: runs/<profile>/<dataset>/, git-ignored;
override the root with HNLM_RUNS), tables as CSV beside it, figures to figures/ (full profile) or
figures/<profile>/ (smoke, quick) so a fast pass never overwrites the paper figures.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.cf.trainer import TrainConfig
from hnlm.errors import MissingInputError
from hnlm.paths import PROJECT_ROOT, figures_dir
from hnlm.plots import save_figure
from hnlm.study.settings import DEFAULT_PROFILE
from hnlm.study.settings import settings as profile_settings


def runs_dir() -> Path:
    return Path(os.environ.get("HNLM_RUNS", PROJECT_ROOT / "runs"))


def default_out_dir(profile: str, dataset: str) -> Path:
    return runs_dir() / profile / dataset


def to_jsonable(obj):
    """numpy/pandas values -> plain JSON types (results carry numpy scalars and arrays)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@dataclass
class NotebookRun:
    notebook: str
    dataset: str
    llm: str
    profile: str
    seeds: list[int]
    out_dir: Path
    settings: dict
    started: float = field(default_factory=time.time)

    @property
    def fig_dir(self) -> Path:
        path = figures_dir() if self.profile == "full" else figures_dir() / self.profile
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def metric(self) -> str:
        """The validation metric of model selection, also the one comparisons and figures lead with."""
        return self.settings.get("metric", TrainConfig.metric)

    def meta(self) -> dict:
        return {"notebook": self.notebook, "dataset": self.dataset, "llm": self.llm, "profile": self.profile,
                "seeds": self.seeds, "settings": self.settings,
                "wall_s": round(time.time() - self.started, 2)}

    def save_json(self, result: dict, name: str | None = None) -> Path:
        """Write `{"meta": ..., **result}`; atomically, so a reader never sees half a file."""
        path = self.out_dir / f"{name or self.notebook}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(to_jsonable({"meta": self.meta(), **result}), indent=2))
        tmp.replace(path)
        return path

    def save_csv(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.out_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        return path

    def load_json(self, name: str) -> dict:
        """A result written earlier in this run folder (e.g. 06's runs, read by 08 and 09)."""
        path = self.out_dir / f"{name}.json"
        if not path.exists():
            raise MissingInputError(f"{path} is missing: run notebook {name.split('.')[0]} first "
                                    f"(hnlm study --profile {self.profile} --dataset {self.dataset})")
        return json.loads(path.read_text())

    def save_figure(self, fig, name: str) -> list[Path]:
        return save_figure(fig, f"{name}_{self.dataset}", folder=self.fig_dir)


def start(notebook: str, dataset: str, llm: str, profile: str | None = None, seeds=None, out_dir=None) -> NotebookRun:
    """Resolve a notebook's parameters: the profile's settings (profile None: the default profile), seeds
    (explicit ones win), output folder."""
    profile = profile or DEFAULT_PROFILE
    conf = profile_settings(profile, notebook)
    seeds = list(seeds) if seeds else list(conf["seeds"])
    conf["seeds"] = seeds
    out = Path(out_dir) if out_dir else default_out_dir(profile, dataset)
    out.mkdir(parents=True, exist_ok=True)
    return NotebookRun(notebook, dataset, llm, profile, seeds, out, conf)
