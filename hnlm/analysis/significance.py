"""Mean +- std over seeds; paired tests over seeds (t-test, Wilcoxon); a crossed paired bootstrap over seeds and
users; Holm's correction for testing several methods against one baseline.

Runs come as a long frame: one row per (method, backbone, seed) with metric columns ("recall@20", ...).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def paired_test(a, b) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of a vs b (same units, same order; NaN pairs dropped).

    Returns n, the means, the mean difference, t_stat/t_p, wilcoxon_stat/wilcoxon_p and `note`, which says
    why a p-value is missing or set by rule (None when both tests ran as such):
    - fewer than 2 pairs: no test, every p is NaN;
    - every difference exactly 0 (a == b): both p are 1.0, the samples are identical;
    - all differences equal but not 0 (zero variance, e.g. one method ahead by the same amount on two or three
      seeds): the t statistic is undefined, so t_stat and t_p are NaN; a p of 0 from two or three values would
      claim a certainty the data cannot give. Wilcoxon still runs: with n pairs of one sign its exact two-sided
      p is 2 / 2**n (0.5 for 2 pairs, 0.25 for 3).
    Equal differences are judged with numpy's default closeness (float noise from subtracting metric values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    out = {"n": int(len(a)), "mean_a": float(a.mean()) if len(a) else np.nan,
           "mean_b": float(b.mean()) if len(b) else np.nan,
           "mean_diff": float(diff.mean()) if len(a) else np.nan,
           "t_stat": np.nan, "t_p": np.nan, "wilcoxon_stat": np.nan, "wilcoxon_p": np.nan, "note": None}
    if len(a) < 2:
        return {**out, "note": f"{len(a)} pair(s): a paired test needs at least 2"}
    if (diff == 0).all():
        return {**out, "t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0, "wilcoxon_p": 1.0,
                "note": "identical samples: p = 1 by rule"}
    w = stats.wilcoxon(a, b, zero_method="wilcox")
    out = {**out, "wilcoxon_stat": float(w.statistic), "wilcoxon_p": float(w.pvalue)}
    if np.allclose(diff, diff.mean()):
        return {**out, "note": "zero variance of the differences: t-test undefined (t_p NaN)"}
    t_stat, t_p = stats.ttest_rel(a, b)
    return {**out, "t_stat": float(t_stat), "t_p": float(t_p)}


BOOTSTRAP_SAMPLES = 2000


def paired_bootstrap(a_by_seed: np.ndarray, b_by_seed: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict:
    """Mean difference a - b of per-user metric vectors [seeds, users] (same users, runs paired by seed), with a
    95% percentile interval and a two-sided p-value from a crossed bootstrap: each resample draws the seeds and,
    once, the users, and uses that one user draw in every drawn seed. The same users appear in every seed, so a
    user's gain that persists across seeds is one piece of evidence, not one per seed; drawing users anew inside
    each seed (a nested scheme) averages that persistent part away and understates the error (by about a third
    when most of the per-user variance persists, `tests/test_analysis.py`). Resampling seeds keeps the seed
    variance in. Users with a NaN are dropped."""
    a_by_seed, b_by_seed = np.asarray(a_by_seed, float), np.asarray(b_by_seed, float)
    diff = a_by_seed - b_by_seed
    diff = diff[:, ~np.isnan(diff).any(axis=0)]
    n_seeds, n_users = diff.shape
    out = {"seeds": int(n_seeds), "users": int(n_users), "mean_diff": float(diff.mean()) if diff.size else np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "samples": int(samples)}
    if n_seeds < 2 or n_users < 2:
        return {**out, "note": "the bootstrap needs at least 2 seeds and 2 users"}
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(samples, n_seeds))
    user_draws = rng.integers(0, n_users, size=(samples, n_users), dtype=np.int32)
    # mean over drawn seeds of each seed's mean over the drawn users: counts of each user per resample suffice
    user_counts = np.zeros((samples, n_users))
    np.add.at(user_counts, (np.arange(samples)[:, None], user_draws), 1.0)
    per_seed = user_counts @ diff.T / n_users               # [samples, seeds]: each seed's mean over the draw
    stats_ = np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)
    low, high = np.percentile(stats_, [2.5, 97.5])
    tail = min((stats_ <= 0).mean(), (stats_ >= 0).mean())
    return {**out, "ci_low": float(low), "ci_high": float(high), "p": float(min(1.0, 2 * max(tail, 1 / samples))),
            "note": None}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of p-values tested together (one family: the methods of one table against one
    baseline); NaN p-values stay NaN and do not count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)]) if m else []
    out[order] = np.minimum(1.0, adjusted)
    return out


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
    matched by seed) and, when `per_user` maps (method, seed) -> per-user vector, the crossed paired
    bootstrap over seeds and users with a 95% interval of the difference and of the relative gain."""
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
        ua = np.array([np.asarray(per_user[(method, s)], float) for s in seeds])
        ub = np.array([np.asarray(per_user[(baseline, s)], float) for s in seeds])
        out["bootstrap"] = boot = paired_bootstrap(ua, ub)
        out["relative_gain_ci"] = [boot["ci_low"] / mean_b, boot["ci_high"] / mean_b] if mean_b else [np.nan] * 2
    return out
