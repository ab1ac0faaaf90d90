"""`hnlm study report`: the README's results section from the result files of a full study (hnlm.study.report).

The files are tiny tables with the column names the notebooks write (header lines copied from a quick run)."""

import json

import pandas as pd
import pytest

from hnlm.cli import build_parser, main
from hnlm.study import commands

MAIN_HEADER = "backbone,method,recall@10,recall@20,recall@50,ndcg@10,ndcg@20,ndcg@50,seeds"
COMPARISON_HEADER = ("backbone,metric,method,baseline,baseline_chosen_on_valid,mean,baseline_mean,relative_gain,"
                     "gain_ci_low,gain_ci_high,seeds,t_p,users,bootstrap_p")
RUNS_HEADER = (
    "backbone,method,family,seed,best_epoch,epochs_run,stopped_by_cap,train_s_per_epoch,recall@10,ndcg@10,hit@10,"
    "precision@10,recall@20,ndcg@20,hit@20,precision@20,recall@50,ndcg@50,hit@50,precision@50,coverage@10,"
    "mean_popularity@10,longtail_share@10,coverage@20,mean_popularity@20,longtail_share@20,coverage@50,"
    "mean_popularity@50,longtail_share@50,valid recall@10,valid ndcg@10,valid hit@10,valid precision@10,"
    "valid recall@20,valid ndcg@20,valid hit@20,valid precision@20,valid recall@50,valid ndcg@50,valid hit@50,"
    "valid precision@50,valid coverage@10,valid mean_popularity@10,valid longtail_share@10,valid coverage@20,"
    "valid mean_popularity@20,valid longtail_share@20,valid coverage@50,valid mean_popularity@50,"
    "valid longtail_share@50")
POPULARITY_HEADER = ("backbone,method,head_recall@20,tail_recall@20,head_ndcg@20,tail_ndcg@20,mean_popularity@20,"
                     "coverage@20,gini@20,tail_share@20,seeds")


def write_csv(folder, name, header, rows):
    """rows: dicts of some columns; the others stay empty, as a reader of the real file would see them."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=header.split(",")).to_csv(folder / name, index=False)


def main_row(backbone, method, recall, ndcg, seeds=5):
    return {"backbone": backbone, "method": method, "recall@20": recall, "ndcg@20": ndcg, "seeds": seeds}


def comparison(backbone, method, baseline, gain, low, high, t_p, boot, chosen=True, metric="recall@20", mean=0.3):
    return {"backbone": backbone, "metric": metric, "method": method, "baseline": baseline,
            "baseline_chosen_on_valid": chosen, "mean": mean, "baseline_mean": 0.3525, "relative_gain": gain,
            "gain_ci_low": low, "gain_ci_high": high, "seeds": 5, "t_p": t_p, "users": 943, "bootstrap_p": boot}


def run_row(backbone, method, seed, best_epoch, capped):
    return {"backbone": backbone, "method": method, "seed": seed, "best_epoch": best_epoch,
            "epochs_run": best_epoch + 20, "stopped_by_cap": capped}


@pytest.fixture
def results(tmp_path):
    """A results root whose ml-100k/ holds the main table of two backbones x three methods."""
    write_csv(tmp_path / "ml-100k", "06_main_table.csv", MAIN_HEADER, [
        main_row("mf", "rns", "0.3178 ± 0.0011", "0.2654 ± 0.0004"),
        main_row("mf", "dns-mn", "0.3525 ± 0.0021", "0.3047 ± 0.0085"),
        main_row("mf", "hnlmrec-text", "0.3157 ± 0.0032", "0.2587 ± 0.0027"),
        main_row("lightgcn", "rns", "0.3235 ± 0.0042", "0.2768 ± 0.0007", seeds=3),
        main_row("lightgcn", "dns-mn", "0.3898 ± 0.0008", "0.3457 ± 0.0003"),
        main_row("lightgcn", "hnlmrec-text", "0.3215 ± 0.0016", "0.2749 ± 0.0044"),
    ])
    return tmp_path


def report(capsys, root, *extra) -> str:
    assert main(["study", "report", "--results", str(root), *extra]) == 0
    return capsys.readouterr().out


def test_main_table_keeps_the_csv_order_and_the_paper_names(results, capsys):
    out = report(capsys, results)
    assert "Source: " in out and "ml-100k/06_main_table.csv" in out
    assert "| method | MF recall@20 | MF ndcg@20 | LightGCN recall@20 | LightGCN ndcg@20 | seeds |" in out
    assert "| DNS(M,N) | 0.3525 ± 0.0021 | 0.3047 ± 0.0085 | 0.3898 ± 0.0008 | 0.3457 ± 0.0003 | 5 |" in out
    assert "| RNS | 0.3178 ± 0.0011 | 0.2654 ± 0.0004 | 0.3235 ± 0.0042 | 0.2768 ± 0.0007 | 5 / 3 |" in out
    assert out.index("| RNS |") < out.index("| DNS(M,N) |") < out.index("| HNLMRec-text |")


def test_missing_files_name_the_notebook_to_run(results, capsys):
    out = report(capsys, results)
    assert "06_comparisons.csv missing; run `hnlm study --notebooks 06_main_results --dataset ml-100k`" in out
    assert "10_table.csv" in out and "`hnlm study --notebooks 10_generalisation --dataset ml-100k`" in out
    assert "Δ vs" not in out      # nothing invented for the missing comparisons


def test_without_the_main_table_the_report_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "ml-100k").mkdir()
    assert main(["study", "report", "--results", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip().splitlines()[-1]
    assert "06_main_table.csv is missing" in error and "hnlm study --notebooks 06_main_results" in error


def test_comparisons_against_the_baseline_chosen_on_validation(results, capsys):
    write_csv(results / "ml-100k", "06_comparisons.csv", COMPARISON_HEADER, [
        comparison("mf", "rns", "dns-mn", -0.0982, -0.1234, -0.0731, 0.0143, 0.0004, mean=0.3178),
        comparison("mf", "hnlmrec-text", "dns-mn", 0.0123, -0.0045, 0.0290, float("nan"), 0.5,
                   mean=0.3157),
        comparison("mf", "rns", "dns-mn", 0.5, 0.4, 0.6, 0.2, 0.2, metric="recall@10"),
        comparison("mf", "hnlmrec-text", "rns", 0.7, 0.6, 0.8, 0.2, 0.2, chosen=False),
    ])
    out = report(capsys, results)
    assert "MF: baseline **DNS(M,N)** (test recall@20 0.3525), 5 seeds, 943 users" in out
    assert "| method | test recall@20 | Δ vs **DNS(M,N)** | 95% interval |" in out
    assert "| RNS | 0.3178 | -9.8% | [-12.3%, -7.3%] | 0.014 | <0.001 |" in out
    assert "| HNLMRec-text | 0.3157 | +1.2% | [-0.4%, +2.9%] | – | 0.500 |" in out
    assert "+50.0%" not in out and "+70.0%" not in out   # other metrics and fixed baselines stay out


def test_convergence_says_how_many_runs_the_cap_stopped(results, capsys):
    write_csv(results / "ml-100k", "06_runs.csv", RUNS_HEADER, [
        run_row("mf", "rns", 0, 8, False), run_row("mf", "rns", 1, 9, False),
        run_row("lightgcn", "rns", 0, 40, False), run_row("lightgcn", "sns", 0, 300, True),
        run_row("lightgcn", "sns", 1, 290, False),
    ])
    out = report(capsys, results)
    assert "- MF: mean best epoch RNS 8.5; stopped by the epoch cap: 0 of 2 runs." in out
    assert "- LightGCN: mean best epoch RNS 40.0, SNS 295.0; stopped by the epoch cap: 1 of 3 runs (SNS 1)." in out


def test_notebook_tables_show_recall_and_each_baselines_gain(results, capsys):
    folder = results / "ml-100k"
    write_csv(folder, "04_table.csv", MAIN_HEADER, [main_row("lightgcn", "rns", "0.3235 ± 0.0042", ""),
                                                    main_row("lightgcn", "dns-mn", "0.3898 ± 0.0008", ""),
                                                    main_row("lightgcn", "sns", "0.3230 ± 0.0009", "")])
    (folder / "04_alignment.json").write_text(json.dumps({"comparisons": [
        comparison("lightgcn", "rns", "dns-mn", -0.1701, -0.1947, -0.1452, 0.0338, 0.001),
        comparison("lightgcn", "sns", "dns-mn", -0.1714, -0.1928, -0.1501, 0.0009, 0.001),
        comparison("lightgcn", "dns-mn", "rns", 0.2050, 0.1749, 0.2346, 0.0338, 0.0002, chosen=False),
        comparison("lightgcn", "sns", "rns", -0.0016, -0.0188, 0.0176, 0.9093, 0.876, chosen=False),
    ]}))
    out = report(capsys, results)
    assert "ml-100k/04_table.csv, " in out and "ml-100k/04_alignment.json (`comparisons`)" in out
    assert "| backbone | method | test recall@20 | Δ vs **DNS(M,N)** (chosen on valid) | Δ vs **RNS** |" in out
    assert "| LightGCN | DNS(M,N) | 0.3898 ± 0.0008 | baseline | +20.5% [+17.5%, +23.5%] (0.034, <0.001) |" in out
    assert ("| LightGCN | SNS | 0.3230 ± 0.0009 | -17.1% [-19.3%, -15.0%] (<0.001, 0.001) "
            "| -0.2% [-1.9%, +1.8%] (0.909, 0.876) |") in out


def test_ablation_section_shows_each_method_against_its_own_ablations(results, capsys):
    write_csv(results / "ml-100k", "04_ablations.csv", COMPARISON_HEADER, [
        comparison("mf", "sns-dnsmn", "sns-dnsmn-random", 0.0123, -0.0021, 0.0260, 0.041, 0.03, chosen=False,
                   mean=0.3561),
        comparison("mf", "sns-dnsmn", "sns-dnsmn-random", 0.01, 0.0, 0.02, 0.5, 0.5, chosen=False, metric="ndcg@20")])
    out = report(capsys, results)
    assert "Source: results/ml-100k/04_ablations.csv" in out.replace(str(results), "results")
    assert "| backbone | method | ablation | test recall@20 | ablation's | Δ over the ablation |" in out
    assert "| MF | SNS-dnsmn | SNS-dnsmn-random | 0.3561 | 0.3525 | +1.2% [-0.2%, +2.6%] (0.041, 0.030) |" in out
    assert out.count("SNS-dnsmn-random |") == 1                          # ndcg@20 rows are not shown


def test_popularity_and_sparsity_tables(results, capsys):
    folder = results / "ml-100k"
    write_csv(folder, "08_popularity_table.csv", POPULARITY_HEADER, [
        {"backbone": "mf", "method": "dns-mn", "head_recall@20": "0.4784 ± 0.0087", "tail_recall@20": "0.0471 ± 0.0155",
         "tail_share@20": "0.0759 ± 0.0207", "coverage@20": "0.3942 ± 0.0328", "seeds": 5}])
    groups = [("rns", 0, "16-26", 0.4228, 0.0), ("rns", 1, "27-51", 0.3556, 0.0),
              ("dns-mn", 0, "16-26", 0.4518, 0.0686), ("dns-mn", 1, "27-51", 0.4034, 0.1344)]
    summary = [{"backbone": "mf", "method": m, "group": g, "history": h, "recall@20": r, "gain_vs_rns": gain}
               for m, g, h, r, gain in groups]
    (folder / "09_sparsity.json").write_text(json.dumps({"summary": summary}))
    out = report(capsys, results)
    assert "| backbone | method | head recall@20 | tail recall@20 | tail share@20 | coverage@20 |" in out
    assert "| MF | DNS(M,N) | 0.4784 ± 0.0087 | 0.0471 ± 0.0155 | 0.0759 ± 0.0207 | 0.3942 ± 0.0328 |" in out
    assert "Test recall@20 (relative gain vs RNS)" in out
    assert "| backbone | method | history 16-26 | history 27-51 |" in out
    assert "| MF | DNS(M,N) | 0.4518 (+6.9%) | 0.4034 (+13.4%) |" in out


def test_write_replaces_only_the_marked_block(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nintro\n\n", "\n\n> Pending rerun: old numbers 0.3653\n"
    readme.write_text(before + "<!-- results:begin -->\nold table 0.1111\n<!-- results:end -->" + after)
    printed = report(capsys, results)
    assert main(["study", "report", "--results", str(results), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert text == before + "<!-- results:begin -->\n" + printed + "<!-- results:end -->" + after
    assert main(["study", "report", "--results", str(results), "--write", str(readme)]) == 0
    assert readme.read_text() == text                      # a rerun on the same files changes nothing


def test_write_without_a_file_rewrites_the_findings_of_the_dataset(results, capsys):
    findings = results / "ml-100k" / "README.md"
    findings.write_text("# Findings\n<!-- results:begin -->\nold\n<!-- results:end -->\nprose\n")
    printed = report(capsys, results)
    assert main(["study", "report", "--results", str(results), "--write"]) == 0
    assert findings.read_text() == "# Findings\n<!-- results:begin -->\n" + printed + "<!-- results:end -->\nprose\n"


def test_main_only_is_the_first_section_and_needs_a_file_to_write(results, capsys):
    main_table = report(capsys, results, "--main")
    assert main_table.startswith("<!-- made by `hnlm study report --main` from ")
    assert "**Main table (notebook 06)" in main_table and "Against the strongest" not in main_table
    assert main(["study", "report", "--results", str(results), "--main", "--write"]) == 2
    assert "--main --write README.md" in capsys.readouterr().err


@pytest.mark.parametrize("document, main_only", [("results/ml-100k/README.md", False), ("README.md", True)])
def test_the_tracked_documents_show_the_tracked_results(document, main_only):
    """The findings (`hnlm study report --write`) and the top README's main table (`--main --write README.md`)
    are what the report makes from the tracked results/ml-100k/ now: a rerun cannot leave them stale."""
    from hnlm.paths import PROJECT_ROOT
    from hnlm.study.report import RESULTS_BEGIN, RESULTS_END, render_report

    text = (PROJECT_ROOT / document).read_text()
    assert text.count(RESULTS_BEGIN) == text.count(RESULTS_END) == 1
    block = text.split(RESULTS_BEGIN + "\n")[1].split("\n" + RESULTS_END)[0]
    assert block == render_report(PROJECT_ROOT / "results" / "ml-100k", "ml-100k", main_only)


def test_write_without_markers_is_an_error(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n<!-- results:end -->\n<!-- results:begin -->\n")
    assert main(["study", "report", "--results", str(results), "--write", str(readme)]) == 2
    assert "results:begin" in capsys.readouterr().err
    assert readme.read_text() == "# Title\n<!-- results:end -->\n<!-- results:begin -->\n"


def test_report_reads_the_tracked_folder_by_default(results, monkeypatch, capsys):
    monkeypatch.setenv("HNLM_RESULTS", str(results))
    assert main(["study", "report"]) == 0
    assert "| DNS(M,N) | 0.3525 ± 0.0021 |" in capsys.readouterr().out


def test_study_without_report_still_runs_the_notebooks():
    args = build_parser().parse_args(["study", "--profile", "quick", "--notebooks", "01_data", "06_main_results"])
    assert args.func is commands.run and args.notebooks == ["01_data", "06_main_results"]
    assert build_parser().parse_args(["study", "report"]).func is commands.run_report
