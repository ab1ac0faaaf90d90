"""What a study notebook needs around its parameters: settings, output folder, result and figure writers.

A notebook's only setup is `run = start("06_main_results", dataset, llm, profile, seeds, out_dir)`; the
result JSON goes to `<out_dir>/<notebook>.json` (default out_dir: runs/<profile>/<dataset>/, git-ignored;
override the root with HNLM_RUNS), tables as CSV beside it, figures to figures/ (full profile) or
figures/<profile>/ (smoke, quick) so a fast pass never overwrites the paper figures. Under the full profile the
result JSON and tables are also written to results/<dataset>/ (tracked, HNLM_RESULTS moves it), so every
reported number has a committed source and two studies can be diffed; smoke and quick write to runs/ only.
Per-epoch curves of every run (`tracked=False`) and the CF run folders (per-user vectors) stay in runs/.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import write_text
from hnlm.cf.trainer import TrainConfig
from hnlm.errors import MissingInputError
from hnlm.paths import PROJECT_ROOT, figures_dir, results_dir
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
    if isinstance(obj, Path):  # relative inside the checkout, so tracked results name no machine's folders
        return str(obj.relative_to(PROJECT_ROOT)) if obj.is_relative_to(PROJECT_ROOT) else str(obj)
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

    @property
    def tracked_dir(self) -> Path | None:
        """Where the full study's result tables are also written (results/<dataset>/); None for smoke/quick."""
        return results_dir() / self.dataset if self.profile == "full" else None

    def write_result(self, filename: str, text: str, tracked: bool = True) -> Path:
        """Write one result file into the run folder and, if `tracked`, the tracked folder; atomically, so a
        reader never sees half a file. Returns the run folder's copy."""
        tracked_dir = self.tracked_dir if tracked else None
        for folder in [self.out_dir] + ([tracked_dir] if tracked_dir else []):
            write_text(folder / filename, text)
        return self.out_dir / filename

    def save_json(self, result: dict, name: str | None = None) -> Path:
        """Write `{"meta": ..., **result}` (tables only: curves of every run go to an untracked CSV)."""
        text = json.dumps(to_jsonable({"meta": self.meta(), **result}), indent=2)
        return self.write_result(f"{name or self.notebook}.json", text)

    def save_csv(self, frame: pd.DataFrame, name: str, tracked: bool = True) -> Path:
        """`tracked=False` for bulky tables that stay in the run folder (per-epoch curves of every run)."""
        return self.write_result(f"{name}.csv", frame.to_csv(index=False), tracked)

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
