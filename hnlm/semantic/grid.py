"""Issue-5 comparison on one dataset: methods x seeds through `hnlm train` (in one process, so imports,
data and text embeddings load once), then a summary with mean, standard deviation and a paired t-test.

    python -m hnlm.semantic.grid run --methods rns dns mixgcf rlmrec-con --seeds 0 1 2 -- --rlmrec-text metadata
    python -m hnlm.semantic.grid summary

Results: artifacts/<dataset>/results/<model>_<method>_seed<k>.json (a run whose file exists is skipped)
and summary.json beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from hnlm.paths import PROJECT_ROOT, artifacts_dir

CONFIG = PROJECT_ROOT / "hnlm" / "semantic" / "study_ml100k.toml"
METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")


def result_path(out: Path, model: str, method: str, seed: int, tag: str = "") -> Path:
    return out / f"{model}_{method}{tag}_seed{seed}.json"


def run(dataset: str, model: str, methods: list[str], seeds: list[int], extra: list[str], tag: str = "") -> None:
    from hnlm.cli import build_parser
    parser = build_parser()
    out = artifacts_dir(dataset, "results")
    for seed in seeds:
        for method in methods:
            path = result_path(out, model, method, seed, tag)
            marker = path.with_suffix(".running")
            if path.exists():
                continue
            try:  # several grid processes may share the list: each run is claimed by one
                marker.open("x").close()
            except FileExistsError:
                continue
            argv = ["train", "--dataset", dataset, "--config", str(CONFIG), "--model", model,
                    "--sampler", method, "--seed", str(seed), "--json", str(path), "--no-progress", *extra]
            print("run:", " ".join(argv), flush=True)
            args = parser.parse_args(argv)
            try:
                args.func(args)
            finally:
                marker.unlink(missing_ok=True)


def summarise(dataset: str, baseline: str = "lightgcn_rns") -> dict:
    """Mean/std per method over seeds; paired t-test (per seed) of recall@20 / ndcg@20 against baseline."""
    out = artifacts_dir(dataset, "results")
    runs: dict[str, dict[int, dict]] = {}
    for name, seed, result in load_runs(dataset):
        runs.setdefault(name, {})[seed] = result
    table = {}
    for name, by_seed in runs.items():
        row = {"seeds": sorted(by_seed), "n": len(by_seed)}
        for m in METRICS:
            vals = np.array([by_seed[s]["test"][m] for s in sorted(by_seed)])
            row[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None}
        row["best_epoch_mean"] = float(np.mean([r["best_epoch"] for r in by_seed.values()]))
        row["train_s_per_epoch"] = float(np.mean([r["timings"]["train_s_per_epoch"] for r in by_seed.values()]))
        counts = next(iter(by_seed.values()))["counts"]
        row["counts_seed0"] = {k: v for k, v in counts.items() if k != "positive_index"}
        if name != baseline and baseline in runs:
            common = sorted(set(by_seed) & set(runs[baseline]))
            for m in ("recall@20", "ndcg@20"):
                a = np.array([by_seed[s]["test"][m] for s in common])
                b = np.array([runs[baseline][s]["test"][m] for s in common])
                p = float(stats.ttest_rel(a, b).pvalue) if len(common) > 1 else None
                row[f"vs_{baseline}_{m}"] = {"diff_mean": float((a - b).mean()), "paired_t_p": p,
                                             "seeds": common}
        table[name] = row
    summary = {"dataset": dataset, "config": str(CONFIG.relative_to(PROJECT_ROOT)), "baseline": baseline,
               "methods": table}
    (out / f"summary_vs_{baseline}.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_runs(dataset: str) -> list[tuple[str, int, dict]]:
    out = artifacts_dir(dataset, "results")
    return [(*_name_seed(p), json.loads(p.read_text())) for p in sorted(out.glob("*_seed*.json"))]


def _name_seed(path: Path) -> tuple[str, int]:
    name, seed = path.stem.rsplit("_seed", 1)
    return name, int(seed)


def figures(dataset: str, methods: list[str] | None = None, curves: list[str] | None = None) -> list[Path]:
    """Test recall@20 per method (mean +- std over seeds) and valid recall@20 by epoch (for `curves`,
    default: the same methods), into figures/."""
    import pandas as pd
    from hnlm import plots
    runs = load_runs(dataset)
    curves = curves or methods
    plots.set_style()
    bars = pd.DataFrame([{"method": n.split("_", 1)[1], "seed": s, "recall@20": r["test"]["recall@20"]}
                         for n, s, r in runs if methods is None or n in methods])
    order = bars.groupby("method")["recall@20"].mean().sort_values(ascending=False).index
    bars["method"] = pd.Categorical(bars["method"], order)
    saved = plots.save_figure(plots.plot_metric_bars(bars.sort_values("method"), "recall@20", hue="none"),
                              f"{dataset}_grid_test_recall20")
    curves = pd.DataFrame([{"method": n.split("_", 1)[1], "seed": s, "epoch": h["epoch"],
                            "recall@20": h["valid"]["recall@20"]}
                           for n, s, r in runs for h in r["history"]
                           if "valid" in h and (curves is None or n in curves)])
    saved += plots.save_figure(plots.plot_convergence(curves), f"{dataset}_grid_convergence")
    return saved


def markdown(summary: dict) -> str:
    lines = [f"| method | seeds | recall@20 | ndcg@20 | recall@50 | vs {summary['baseline']} recall@20 (paired t p) |", "|---|---|---|---|---|---|"]
    for name, row in sorted(summary["methods"].items(), key=lambda kv: -kv[1]["recall@20"]["mean"]):
        def f(m):
            s = row[m]["std"]
            return f"{row[m]['mean']:.4f} ± {s:.4f}" if s is not None else f"{row[m]['mean']:.4f}"
        vs = row.get(f"vs_{summary['baseline']}_recall@20")
        vs_s = "" if vs is None else (f"{vs['diff_mean']:+.4f} ({vs['paired_t_p']:.3f})"
                                      if vs["paired_t_p"] is not None else f"{vs['diff_mean']:+.4f}")
        lines.append(f"| {name} | {row['n']} | {f('recall@20')} | {f('ndcg@20')} | {f('recall@50')} | {vs_s} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hnlm.semantic.grid")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", default="ml-100k")
    r.add_argument("--model", default="lightgcn")
    r.add_argument("--methods", nargs="+", required=True)
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--tag", default="", help="suffix of the result names (e.g. an alpha sweep)")
    s = sub.add_parser("summary")
    s.add_argument("--dataset", default="ml-100k")
    s.add_argument("--baseline", default="lightgcn_rns", help="result name the paired tests compare with")
    f = sub.add_parser("figures", help="bar chart and convergence curves of the results, into figures/")
    f.add_argument("--dataset", default="ml-100k")
    f.add_argument("--methods", nargs="+", default=None, help="result names (default: all)")
    f.add_argument("--curves", nargs="+", default=None, help="result names of the convergence panel")
    args, extra = p.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    if args.cmd == "run":
        run(args.dataset, args.model, args.methods, args.seeds, extra, args.tag)
    elif args.cmd == "figures":
        for path in figures(args.dataset, args.methods, args.curves):
            print(path)
    else:
        print(markdown(summarise(args.dataset, args.baseline)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
