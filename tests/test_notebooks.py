"""Every study notebook runs headless through papermill on the smoke profile; its result file is checked.

The notebooks run once, in study order (05 reads 03's bank, 08 and 09 read 06's runs, 10 transfers 05's
fine-tuned model), into a temporary run folder and figure folder. Their kernels inherit the session's
temporary artefact root (tests/conftest.py), so every run prepares the data, generates the LLM outputs and
fine-tunes what it checks; only the converted LLM weights are shared between runs.
"""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest

from hnlm.methods import get_method
from hnlm.study.runner import NOTEBOOK_DIR, STUDY_NOTEBOOKS, run_study

PARAMETERS = {"dataset", "llm", "profile", "seeds", "out_dir"}


def _metrics_ok(values: dict) -> None:
    for key, value in values.items():
        if any(key.startswith(m) for m in ("recall@", "ndcg@", "hit@", "precision@")):
            assert value is not None and 0.0 <= value <= 1.0, (key, value)


def check_01_data(result, out_dir, fig_dir):
    rows = {r["dataset"]: r for r in result["datasets"]}
    assert {"ml-100k", "ml-1m"} <= set(rows)
    for row in rows.values():
        assert row["train"] + row["valid"] + row["test"] == row["interactions"]
        assert 0 < row["density"] < 1 and 0 <= row["popularity_gini"] < 1
        assert row["history_min"] <= row["history_median"] <= row["history_max"]
    assert (rows["ml-100k"]["users"], rows["ml-100k"]["items"]) == (943, 1682)
    assert len(result["top_items"]["ml-100k"]) == result["meta"]["settings"]["top_items"]
    assert (out_dir / "01_data_stats.csv").exists()
    assert (fig_dir / "smoke" / "01_distributions_ml-100k.png").exists()
    assert (fig_dir / "smoke" / "01_distributions_ml-100k.pdf").exists()


def _alignment_counts_ok(rows, runs, train_pairs):
    """Every training pair of every epoch either got a semantic negative or kept its ID negative."""
    epochs = {(r["method"], r["seed"]): r["epochs_run"] for r in runs}
    for c in rows:
        assert c["pairs"] == train_pairs * epochs[(c["method"], c["seed"])]
        assert c["with_negative"] + c["missing"] == c["pairs"] and c["with_negative"] > 0
        assert c["exact_pair"] + c["user_reuse"] == c["with_negative"]


def _comparisons_ok(rows, n_seeds, n_users):
    for c in rows:
        assert c["t_p"] is None or 0 <= c["t_p"] <= 1  # None: no variance over seeds
        assert 0 < c["bootstrap_p"] <= 1 and c["baseline_mean"] >= 0
        assert c["gain_ci_low"] <= c["relative_gain"] <= c["gain_ci_high"]
        assert c["mean"] > c["baseline_mean"] or c["relative_gain"] <= 0
        if "users" in c:
            assert c["users"] == n_users and c["seeds"] == n_seeds


def check_05_hnlmrec(result, out_dir, fig_dir):
    settings = result["meta"]["settings"]
    conf, seeds = settings["hnlmrec"], result["meta"]["seeds"]
    for row in result["finetune"]:
        assert row["steps"] == conf["max_steps"] and row["bank_rows"] == row["queries"] > 0
        assert row["queries"] == conf["infer_users"]  # per-user:1 over the first infer_users users
        assert 0 < row["examples"] <= 943 and row["loss_first5_mean"] > 0 and row["loss_last5_mean"] > 0
    assert {r["signal"] for r in result["finetune"]} == set(settings["signals"])
    methods = settings["methods"] + [f"hnlmrec-{s}" for s in settings["signals"]]
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {(m, s) for m in methods for s in seeds}
    for r in result["runs"]:
        _metrics_ok(r)
        assert r["recall@10"] <= r["recall@20"] <= r["recall@50"]
    assert len(result["table"]) == len(methods) and all(t["seeds"] == len(seeds) for t in result["table"])
    assert len(result["comparisons"]) == len(settings["signals"]) * len(settings["methods"])
    _comparisons_ok(result["comparisons"], len(seeds), 943)
    semantic = {m for m in methods if m == "sns" or m.startswith("hnlmrec-")}
    assert {(c["method"], c["seed"]) for c in result["alignment_counts"]} == {(m, s) for m in semantic for s in seeds}
    _alignment_counts_ok(result["alignment_counts"], result["runs"], 80024)
    assert (out_dir / "05_table.csv").exists()
    for name in ("05_hnlmrec_cf", "05_finetune_loss"):
        assert (fig_dir / "smoke" / f"{name}_ml-100k.png").exists()
    assert (fig_dir / "smoke" / "05_hnlmrec_cf_ml-100k.pdf").exists()


def check_10_generalisation(result, out_dir, fig_dir):
    settings = result["meta"]["settings"]
    seeds, target = result["meta"]["seeds"], result["target_data"]
    assert result["source"] == "ml-100k" and result["target"] == "ml-1m"
    assert (target["users"], target["items"]) == (settings["target_first_users"], 3706)
    assert target["train"] + target["valid"] + target["test"] == target["interactions"]
    for row in result["transfer"]:
        assert row["queries"] == row["bank_rows"] == row["users_embedded"] == settings["target_users"]
        assert row["target_users"] == target["users"] and "/ml-100k/hnlmrec/" in row["source_run"]
        assert not row["finetuned_here"]  # notebook 05's fine-tuned model is the one transferred
        assert 0 <= row["teacher_valid_recall@20"] <= 1
        assert row["teacher_epochs"] == settings["target_teacher"]["epochs"]
    methods = settings["methods"] + [f"hnlmrec-{s}" for s in settings["signals"]]
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {(m, s) for m in methods for s in seeds}
    for r in result["runs"]:
        _metrics_ok(r)
        assert r["recall@10"] <= r["recall@20"] <= r["recall@50"]
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= settings["epochs"]
    assert len(result["table"]) == len(methods) and all(t["seeds"] == len(seeds) for t in result["table"])
    comps = result["comparisons"]
    assert {c["method"] for c in comps} == {f"hnlmrec-{s}" for s in settings["signals"]}
    assert {c["baseline"] for c in comps} <= set(settings["methods"]) and "rns" in {c["baseline"] for c in comps}
    _comparisons_ok(comps, len(seeds), target["users"])
    _alignment_counts_ok(result["alignment_counts"], result["runs"], target["train"])
    for name in ("10_table", "10_runs", "10_comparisons"):
        assert (out_dir / f"{name}.csv").exists()
    for ext in ("png", "pdf"):
        assert (fig_dir / "smoke" / f"10_transfer_to_ml-1m_ml-100k.{ext}").exists()


def check_06_main_results(result, out_dir, fig_dir):
    settings = result["meta"]["settings"]
    runs = result["runs"]
    methods = (settings["methods"] + settings["semantic_methods"]
               + [f"hnlmrec-{s}" for s in settings["hnlmrec_signals"]])
    expected = {(b, m, s) for b in settings["backbones"] for m in methods for s in result["meta"]["seeds"]}
    assert {(r["backbone"], r["method"], r["seed"]) for r in runs} == expected
    for r in runs:
        _metrics_ok(r)
        assert r["recall@10"] <= r["recall@20"] <= r["recall@50"]
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= settings["epochs"]
        # smoke trains one epoch under a one-epoch cap: every run is flagged as stopped by the cap
        assert r["stopped_by_cap"] == (r["epochs_run"] == settings["epochs"]
                                       and r["epochs_run"] - r["best_epoch"] < settings["patience"])
        assert r["stopped_by_cap"]
    assert len(result["table"]) == len(settings["backbones"]) * len(methods)
    assert all(row["seeds"] == len(result["meta"]["seeds"]) for row in result["table"])
    comps = [c for c in result["comparisons"] if c["metric"] == result["reference_metric"]]
    assert len(comps) == len(settings["backbones"]) * (len(methods) - 1)
    assert all(c["baseline_chosen_on_valid"] for c in comps)
    _comparisons_ok(comps, len(result["meta"]["seeds"]), 943)
    assert {c["method"] for c in result["convergence"]} == set(methods)
    assert all(c["selected_on"] == "valid recall@20" and 0 < c["bootstrap_p_holm"] <= 1 for c in comps)
    # every method ran at the point its tuning chose on seed 0, recorded in the tuning table
    chosen = {(c["backbone"], c["method"]): c for c in result["tuning"]["chosen"]}
    assert set(chosen) >= {(b, m) for b in settings["backbones"] for m in methods}   # 04 and 05 tune theirs too
    trials = pd.read_csv(out_dir / "tuning.csv")
    assert trials.groupby(["backbone", "target"])["chosen"].sum().eq(1).all()
    assert set(trials["lr"]) >= set(settings["tuning"]["lr"])
    for r in runs:
        point = chosen[(r["backbone"], r["method"])]
        assert (r["lr"], r["batch_size"]) == (point["lr"], point["batch_size"])
    for name in ("06_main_results", "06_convergence", "06_tuning"):
        assert (fig_dir / "smoke" / f"{name}_ml-100k.pdf").exists()


def check_08_popularity(result, out_dir, fig_dir):
    k = result["k"]
    assert result["head_items"] == 337  # ceil(0.2 * 1682)
    for r in result["per_run"]:
        _metrics_ok(r)
        for key in (f"coverage@{k}", f"gini@{k}", f"tail_share@{k}"):
            assert 0 <= r[key] <= 1, key
        assert r[f"mean_popularity@{k}"] > 0 and r["head_users"] + r["tail_users"] >= 943
    assert (fig_dir / "smoke" / "08_head_tail_ml-100k.png").exists()


def check_09_sparsity(result, out_dir, fig_dir):
    assert sum(result["group_sizes"]) == 943 and len(result["groups"]) == result["meta"]["settings"]["n_groups"]
    for r in result["per_run"]:
        _metrics_ok(r)
    sizes = {}
    for r in result["per_run"]:
        sizes.setdefault(r["group"], set()).add(r["users"])
    assert all(len(v) == 1 for v in sizes.values()) and sum(v.pop() for v in sizes.values()) == 943
    assert (fig_dir / "smoke" / "09_sparsity_ml-100k.png").exists()


def check_02_profiles(result, out_dir, fig_dir):
    limit = result["meta"]["settings"]["limit"]
    for c in result["counts"]:
        assert c["requested"] == limit and c["generated"] + c["cached"] == c["requested"]
        assert 0 <= c["failed"] <= c["requested"] and 0 <= c["valid_rate"] <= 1
    for kind, stats in result["summary_words"].items():
        assert stats["n"] <= limit and (stats["max_words"] or 0) <= 100  # the schema's word cap
    assert result["backend"] and (fig_dir / "smoke" / "02_summary_words_ml-100k.png").exists()


def check_03_sns(result, out_dir, fig_dir):
    q = result["quality"]
    limit = result["meta"]["settings"]["limit_users"]
    assert q["samples"] >= 4 and q["requested"] == limit * q["samples"]
    assert q["n_valid"] + q["invalid"] == q["requested"]
    assert q["copy_share_after_filter"] == 0 and q["copy_share_before_filter"] >= 0   # the filter's measure is exact
    for key, value in result["report"].items():
        assert value is None or 0 <= value <= 1 or key == "grounding_distance_mean", key
    assert result["bank_rows"] == q["n_valid"] and len(result["examples"]) == q["n_valid"]
    for key in ("valid_json_rate", "names_train_item_share", "false_hard_negative_share",
                "false_hard_negative_chance", "pool_heldout_share"):
        assert 0 <= q[key] <= 1, key
    assert all(-1 <= v <= 1 for v in result["similarity"].values() if v is not None)
    # one "similarity to the positive": the figure's is the quality table's
    assert result["similarity"]["generated negative"] == pytest.approx(q["sim_to_positive_mean"], abs=1e-6)
    assert result["similarity"]["random item"] == pytest.approx(q["sim_random_item_to_positive_mean"], abs=1e-6)
    assert (out_dir / "sns_bank.npz").exists() and (out_dir / "sns_grounded.parquet").exists()


def check_04_alignment(result, out_dir, fig_dir):
    settings = result["meta"]["settings"]
    methods = set(settings["methods"]) | {f"sns alpha={a}" for a in settings["alpha_sweep"]}
    assert {r["method"] for r in result["runs"]} == methods
    for r in result["runs"]:
        _metrics_ok(r)
    for c in result["alignment_counts"]:  # every pair is either aligned or counted as missing
        assert c["with_negative"] + c["missing"] == c["pairs"] > 0
        assert c["exact_pair"] + c["user_reuse"] == c["with_negative"]
    assert {c["method"] for c in result["alignment_counts"]} >= {"sns", "sns-random"}
    assert (fig_dir / "smoke" / "04_alpha_sweep_ml-100k.pdf").exists()
    ablated = {(c["method"], c["baseline"]) for c in result["ablations"]}   # smoke: SNS and one of its ablations
    assert ablated == {(get_method(m).ablation_of, m) for m in settings["methods"] if get_method(m).ablation_of}
    assert ablated == {("sns", "sns-random")} and (out_dir / "04_ablations.csv").exists()
    _comparisons_ok(result["ablations"], len(result["meta"]["seeds"]), 943)


def check_07_false_negatives(result, out_dir, fig_dir):
    assert 0 < result["chance_share"] < 0.1
    for row in result["overall"]:
        assert 0 <= row["false_negatives"] <= row["negatives"] and 0 <= row["share"] <= 1
    by_epoch = pd.read_csv(out_dir / "07_false_negatives_by_epoch.csv")
    assert len(by_epoch) and (by_epoch["negatives"] == 80024).all()  # one negative per training pair and epoch
    assert result["sources"]["06_main_results"] > 0 and result["sns_quality"] is not None
    assert result["judge_precision"] is None   # the judge's scores are made under the full profile only


def check_11_llm_size(result, out_dir, fig_dir):
    settings, seeds = result["meta"]["settings"], result["meta"]["seeds"]
    methods = {"rns"} | {f"{m}@{llm}" for llm in settings["llms"]
                         for m in settings["methods"] + [f"hnlmrec-{s}" for s in settings["signals"]]}
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {(m, s) for m in methods for s in seeds}
    for r in result["runs"]:
        _metrics_ok(r)
    assert {c["method"] for c in result["comparisons"]} == methods - {"rns"}
    _comparisons_ok(result["comparisons"], len(seeds), 943)
    for row in result["outputs"]:
        assert row["llm"] in settings["llms"] and -1 <= row["text_pairwise_cosine"] <= 1
        if "sns" in settings["methods"]:
            assert 0 <= row["sns_valid_json_rate"] <= 1 and 0 < row["sns_distinct_texts"] <= 1
    assert (fig_dir / "smoke" / "11_llm_size_ml-100k.png").exists()


CHECKS = {"01_data": check_01_data, "02_profiles": check_02_profiles, "03_sns": check_03_sns,
          "04_alignment": check_04_alignment, "05_hnlmrec": check_05_hnlmrec,
          "06_main_results": check_06_main_results, "07_false_negatives": check_07_false_negatives,
          "08_popularity": check_08_popularity, "09_sparsity": check_09_sparsity,
          "10_generalisation": check_10_generalisation, "11_llm_size": check_11_llm_size}


def test_every_study_notebook_has_a_check_and_a_clean_parameters_cell():
    on_disk = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert set(STUDY_NOTEBOOKS) <= set(on_disk)
    assert set(STUDY_NOTEBOOKS) <= set(CHECKS)  # every notebook the study runs has its result check
    for name in on_disk:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assigned = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
        assert PARAMETERS <= assigned, (name, assigned)
        for cell in nb.cells:  # committed without outputs
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("runs")
    fig_dir = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HNLM_FIGURES", str(fig_dir))
        report = run_study("smoke", "ml-100k", "smollm2-135m", out_dir=out_dir)
    return report, out_dir, fig_dir


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # under pytest-xdist one worker runs them all, so smoke_study runs once
@pytest.mark.parametrize("name", STUDY_NOTEBOOKS)
def test_notebook_runs_on_smoke_profile(smoke_study, name):
    report, out_dir, fig_dir = smoke_study
    assert report[name]["ok"], report[name].get("error")
    assert (out_dir / "executed" / f"{name}.ipynb").exists()
    result = json.loads((out_dir / f"{name}.json").read_text())
    assert result["meta"]["notebook"] == name and result["meta"]["profile"] == "smoke"
    CHECKS[name](result, out_dir, fig_dir)


def test_metric_check_rejects_out_of_range():
    with pytest.raises(AssertionError):
        _metrics_ok({"recall@20": 1.5})
    _metrics_ok({"recall@20": 0.2, "ndcg@10": float(np.float32(0.1)), "loss": 3.0})
