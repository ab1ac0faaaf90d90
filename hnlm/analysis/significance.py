"""Mean +- std over seeds, paired tests (t-test and Wilcoxon) over seeds and over per-user metric vectors.

Runs come as a long frame: one row per (method, backbone, seed) with metric columns ("recall@20", ...).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def paired_test(a, b) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of a vs b (same units, same order).

    p-values are NaN with fewer than 2 pairs; when every difference is zero the two samples are equal and
    both p-values are 1.0 (scipy would return NaN or raise)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    out = {"n": int(len(a)), "mean_a": float(a.mean()) if len(a) else np.nan,
           "mean_b": float(b.mean()) if len(b) else np.nan,
           "mean_diff": float(diff.mean()) if len(a) else np.nan,
           "t_stat": np.nan, "t_p": np.nan, "wilcoxon_stat": np.nan, "wilcoxon_p": np.nan}
    if len(a) < 2:
        return out
    if np.allclose(diff, 0.0):
        return {**out, "t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0, "wilcoxon_p": 1.0}
    if np.allclose(diff, diff[0]):  # constant nonzero difference: t undefined (zero variance)
        t_stat, t_p = np.sign(diff[0]) * np.inf, 0.0
    else:
        t_stat, t_p = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b, zero_method="wilcox")
    return {**out, "t_stat": float(t_stat), "t_p": float(t_p), "wilcoxon_stat": float(w.statistic),
            "wilcoxon_p": float(w.pvalue)}


def summarise(runs: pd.DataFrame, metrics: list[str], by=("method", "backbone")) -> pd.DataFrame:
    """Mean, std (ddof 1) and seed count of each metric per group."""
    by = [c for c in by if c in runs]
    grouped = runs.groupby(by, sort=False)[metrics]
    mean, std = grouped.mean().add_suffix(" mean"), grouped.std(ddof=1).add_suffix(" std")
    out = pd.concat([mean, std], axis=1)
    out["seeds"] = grouped.size()
    return out.reset_index()


def mean_std_table(runs: pd.DataFrame, metrics: list[str], by=("method", "backbone"), digits: int = 4):
    """Paper-style cells "0.1234 ± 0.0056" per group and metric."""
    summary = summarise(runs, metrics, by)
    table = summary[[c for c in by if c in summary]].copy()
    for m in metrics:
        std = summary[f"{m} std"].fillna(0.0)
        table[m] = [f"{mu:.{digits}f} ± {sd:.{digits}f}" for mu, sd in zip(summary[f"{m} mean"], std)]
    table["seeds"] = summary["seeds"]
    return table


def best_method(runs: pd.DataFrame, metric: str, among: list[str]) -> str:
    """The method of `among` with the highest mean `metric` (the strongest baseline)."""
    means = runs[runs["method"].isin(among)].groupby("method")[metric].mean()
    if means.empty:
        raise ValueError(f"none of {among} has runs")
    return str(means.idxmax())


def compare(runs: pd.DataFrame, metric: str, method: str, baseline: str, per_user: dict | None = None) -> dict:
    """`method` vs `baseline` on one metric: relative gain of the means, paired tests over seeds (runs
    matched by seed) and, when `per_user` maps (method, seed) -> per-user vector, over users (each user's
    value averaged over the common seeds)."""
    a = runs[runs["method"] == method].set_index("seed")[metric]
    b = runs[runs["method"] == baseline].set_index("seed")[metric]
    seeds = sorted(set(a.index) & set(b.index))
    over_seeds = paired_test(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
    mean_b = float(b.loc[seeds].mean()) if seeds else np.nan
    out = {"method": method, "baseline": baseline, "metric": metric, "seeds": seeds,
           "mean": float(a.loc[seeds].mean()) if seeds else np.nan, "baseline_mean": mean_b,
           "relative_gain": (float(a.loc[seeds].mean()) - mean_b) / mean_b if seeds and mean_b else np.nan,
           "over_seeds": over_seeds}
    if per_user is not None:
        ua = np.nanmean([np.asarray(per_user[(method, s)], float) for s in seeds], axis=0)
        ub = np.nanmean([np.asarray(per_user[(baseline, s)], float) for s in seeds], axis=0)
        out["over_users"] = paired_test(ua, ub)
    return out
