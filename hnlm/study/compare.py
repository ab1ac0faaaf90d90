"""Comparison tables of the study: each method against the strongest baseline (chosen on validation, never on
test) and any fixed baselines, per backbone, with paired tests over seeds and over users and Holm's correction
over the methods compared with one baseline."""

from __future__ import annotations

import pandas as pd

from hnlm.analysis.significance import best_method, compare, holm
from hnlm.cf.trainer import TrainConfig
from hnlm.methods import get_method
from hnlm.study.experiments import per_user


def metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]


def strongest(runs: pd.DataFrame, metric: str, among) -> str:
    """The baseline of `among` with the best mean VALIDATION `metric` (test is read once, for reporting)."""
    return best_method(runs, f"valid {metric}", list(among))


def compare_table(runs: pd.DataFrame, results: list[dict], metrics, methods, *, select_on: str, best_of=(),
                  baselines=()) -> pd.DataFrame:
    """One row per (backbone, metric, method, baseline): means, relative gain with its 95% interval, paired
    t-test over seeds and the crossed paired bootstrap over seeds and users (hnlm.analysis.significance), each p
    also Holm-adjusted over the methods compared with the same baseline on the same backbone and metric
    (`t_p_holm`, `bootstrap_p_holm`). Baselines are the strongest of `best_of` on mean VALIDATION `select_on`
    (required: the study's rule is validation recall@20, whatever metric a table leads with) plus every name in
    `baselines`; `selected_on` names the selection metric of a chosen baseline. A method is never
    compared with itself."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
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
                                 "baseline_chosen_on_valid": base in chosen,
                                 "selected_on": f"valid {select_on}" if base in chosen else None,
                                 "mean": c["mean"], "baseline_mean": c["baseline_mean"],
                                 "relative_gain": c["relative_gain"], "gain_ci_low": c["relative_gain_ci"][0],
                                 "gain_ci_high": c["relative_gain_ci"][1], "seeds": len(c["seeds"]),
                                 "t_p": c["over_seeds"]["t_p"], "users": boot["users"],
                                 "bootstrap_p": boot["p"], "bootstrap_samples": boot["samples"]})
    return with_holm(pd.DataFrame(rows))


def with_holm(table: pd.DataFrame, family=("backbone", "metric", "baseline")) -> pd.DataFrame:
    """Holm-adjusted `t_p` and `bootstrap_p` per family of tests (default: the methods of one backbone, metric and
    baseline)."""
    if table.empty:
        return table
    family = table.groupby(list(family), sort=False)
    for column in ("t_p", "bootstrap_p"):
        table[f"{column}_holm"] = family[column].transform(lambda p: holm(p.to_numpy()))
    return table


def ablation_table(runs: pd.DataFrame, results: list[dict], metrics, methods) -> pd.DataFrame:
    """Each method of `methods` against every ablation of it that `methods` also holds (Method.ablation_of),
    with the paired tests of `compare_table`, backbone by backbone: a gain over its ablation is what the removed
    idea adds."""
    pairs = [(get_method(name).ablation_of, name) for name in methods if get_method(name).ablation_of in methods]
    tables = [compare_table(runs[runs["backbone"] == backbone], results, metrics, [parent], baselines=[ablation],
                            select_on=TrainConfig.metric)
              for backbone in runs["backbone"].unique() for parent, ablation in pairs]
    # one family per backbone and metric: every (method, ablation) pair of the table is tested together
    return with_holm(pd.concat(tables, ignore_index=True), ("backbone", "metric")) if tables else pd.DataFrame()
