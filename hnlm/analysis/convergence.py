"""Convergence: validation metric by epoch per sampler, and how fast each run gets close to its best."""

from __future__ import annotations

import numpy as np
import pandas as pd


def epochs_to_reach(values, fraction: float = 0.95) -> int | None:
    """First epoch (1-based) whose value reaches `fraction` of the run's best; None for an empty curve."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.all(np.isnan(values)):
        return None
    target = fraction * np.nanmax(values)
    return int(np.argmax(values >= target)) + 1


def convergence_summary(curves: pd.DataFrame, metric: str, by=("method", "backbone"),
                        fraction: float = 0.95) -> pd.DataFrame:
    """Per run: best value, best epoch and epochs to reach `fraction` of the best; then mean per group.
    `curves` has columns *by, seed, epoch, metric."""
    by = [c for c in by if c in curves]
    rows = []
    for key, run in curves.sort_values("epoch").groupby([*by, "seed"], sort=False):
        vals = run[metric].to_numpy()
        rows.append({**dict(zip([*by, "seed"], key)), "best": float(np.nanmax(vals)),
                     "best_epoch": int(run["epoch"].to_numpy()[int(np.nanargmax(vals))]),
                     f"epochs_to_{int(fraction * 100)}pct": epochs_to_reach(vals, fraction)})
    per_run = pd.DataFrame(rows)
    return per_run.groupby(by, sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()
