"""Comparison tables of the study: each method against the strongest baseline (chosen on validation, never on
test) and any fixed baselines, per backbone, with paired tests over seeds and over users."""

from __future__ import annotations

import pandas as pd

from hnlm.analysis.significance import best_method, compare
from hnlm.methods import get_method
from hnlm.study.experiments import per_user


def metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]


def strongest(runs: pd.DataFrame, metric: str, among) -> str:
    """The baseline of `among` with the best mean VALIDATION `metric` (test is read once, for reporting)."""
    return best_method(runs, f"valid {metric}", list(among))


def compare_table(runs: pd.DataFrame, results: list[dict], metrics, methods, best_of=(), baselines=(),
                  select_on: str | None = None) -> pd.DataFrame:
    """One row per (backbone, metric, method, baseline): means, relative gain with its 95% interval, paired
    t-test over seeds and the two-level paired bootstrap over seeds and users (hnlm.analysis.significance).
    Baselines are the strongest of `best_of` (on validation `select_on`, default the first metric) plus every
    name in `baselines`; a method is never compared with itself."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    select_on = select_on or metrics[0]
    rows = []
    for backbone, part in runs.groupby("backbone", sort=False):
        chosen = [strongest(part, select_on, best_of)] if best_of else []
        for metric in metrics:
            vectors = per_user(results, metric, backbone)
            for method in methods:
                for base in dict.fromkeys([*chosen, *baselines]):
                    if method == base:
                        continue
                    c = compare(part, metric, method, base, vectors)
                    boot = c["bootstrap"]
                    rows.append({"backbone": backbone, "metric": metric, "method": method, "baseline": base,
                                 "baseline_chosen_on_valid": base in chosen, "mean": c["mean"],
                                 "baseline_mean": c["baseline_mean"], "relative_gain": c["relative_gain"],
                                 "gain_ci_low": c["relative_gain_ci"][0], "gain_ci_high": c["relative_gain_ci"][1],
                                 "seeds": len(c["seeds"]), "t_p": c["over_seeds"]["t_p"], "users": boot["users"],
                                 "bootstrap_p": boot["p"]})
    return pd.DataFrame(rows)


def ablation_table(runs: pd.DataFrame, results: list[dict], metrics, methods) -> pd.DataFrame:
    """Each method of `methods` against every ablation of it that `methods` also holds (Method.ablation_of),
    with the paired tests of `compare_table`, backbone by backbone: a gain over its ablation is what the removed
    idea adds."""
    pairs = [(get_method(name).ablation_of, name) for name in methods if get_method(name).ablation_of in methods]
    tables = [compare_table(runs[runs["backbone"] == backbone], results, metrics, [parent], baselines=[ablation])
              for backbone in runs["backbone"].unique() for parent, ablation in pairs]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
