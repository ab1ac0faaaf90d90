"""`hnlm study --dataset NAME` on your own data, registered once: a synthetic Amazon 2018 reviews + meta pair (item
text, no LLM outputs) and a LightGCN split folder (ID-only). CF notebooks run on it; a notebook whose inputs the
data lacks is skipped with its reason in one line; a failing notebook prints its cell and the exception's last
line. Each study runs a few notebooks only (01, 06 and LLM notebooks that must skip: a skip starts no kernel)."""

import json

import pytest

from hnlm.cli import main
from hnlm.data import load_dataset
from hnlm.data.splitfiles import write_lightgcn
from hnlm.errors import DatasetConflictError
from hnlm.semantic.outputs import REGENERATE_VAR
from hnlm.study.inputs import classic_only, llm_methods_missing, llm_only_stages, skip_reason, unscored_judge_left_out
from hnlm.study.runner import run_study
from hnlm.study.settings import STAGES, settings
from tests.test_data_loaders import write_lines
from tests.test_data_own import meta, reviews

pytestmark = [pytest.mark.filterwarnings("ignore::hnlm.data.checks.DatasetWarning"), pytest.mark.slow]
LLM = "qwen2.5-0.5b"


def runs_of(out_dir) -> dict:
    result = json.loads((out_dir / "06_main_results.json").read_text())
    return {(r["backbone"], r["method"]) for r in result["runs"]}, result


def test_smoke_study_on_registered_amazon2018_files(tmp_path, capsys):
    path = write_lines(tmp_path / "Toys.json.gz", reviews(n_users=60, n_items=80))
    meta_path = write_lines(tmp_path / "meta_Toys.json", meta(range(80)))
    assert main(["data", "add", "mytoys", "--source", "amazon2018", "--reviews", str(path), "--meta", str(meta_path),
                 "--min-rating", "4", "--kcore", "5"]) == 0
    out = tmp_path / "run"
    report = run_study("smoke", "mytoys", LLM, out_dir=out,
                       notebooks=["01_data", "02_profiles", "06_main_results", "10_generalisation", "11_llm_size"])
    printed = capsys.readouterr().out
    assert report["01_data"]["ok"] and report["06_main_results"]["ok"]
    reason = report["02_profiles"]["skipped"]
    assert reason.startswith(f"no LLM outputs of {LLM} for mytoys") and "hnlm study --llm-only" in reason
    assert f"skipped: {reason}\n" in printed and f"skipped 02_profiles: {reason}\n" in printed
    assert "\n" not in reason
    assert report["10_generalisation"]["skipped"].startswith("no transfer target for mytoys: notebook 10 transfers "
                                                             "to ml-1m")
    assert report["11_llm_size"]["skipped"].startswith("no LLM outputs of smollm2-135m for mytoys")
    stats = json.loads((out / "01_data.json").read_text())
    assert {r["dataset"]: r["items"] for r in stats["datasets"]}["mytoys"] == 71
    runs, result = runs_of(out)
    assert result["meta"]["dataset"] == "mytoys"
    assert runs == {(b, m) for b in ("mf", "lightgcn") for m in ("rns", "pns")}
    assert json.loads((out / "study_timings.json").read_text())["notebooks"]["02_profiles"]["skipped"] == reason
    # the registered file changes: the study stops before any notebook, in one line
    write_lines(meta_path, meta(range(79)))
    with pytest.raises(DatasetConflictError, match="changed since it was registered"):
        run_study("smoke", "mytoys", LLM, notebooks=["01_data"], out_dir=out)


def test_smoke_study_on_a_lightgcn_split_runs_cf_notebooks_and_skips_the_rest(tmp_path, capsys):
    raw = write_lines(tmp_path / "reviews.json", reviews(n_users=60, n_items=80))
    write_lightgcn(load_dataset("syn", source="amazon2018", reviews=str(raw), cache=False), tmp_path / "split")
    (tmp_path / "split" / "valid.txt").unlink()   # train.txt and test.txt only, as most published splits
    load_dataset("lg", source="lightgcn", path=str(tmp_path / "split"))   # registers it
    out = tmp_path / "run"
    llm_notebooks = ["02_profiles", "03_sns", "04_alignment", "05_hnlmrec", "10_generalisation", "11_llm_size"]
    report = run_study("smoke", "lg", LLM, notebooks=["08_popularity", *llm_notebooks, "06_main_results"],
                       out_dir=out)
    printed = capsys.readouterr().out
    reason = report["02_profiles"]["skipped"]
    assert reason.startswith("this notebook needs item text") and "dataset 'lg' is ID-only" in reason
    assert all(report[name]["skipped"] == reason for name in llm_notebooks)
    assert f"  skipped {', '.join(llm_notebooks)}: {reason}\n" in printed   # the summary: one line per reason
    assert report["06_main_results"]["ok"]
    runs, _ = runs_of(out)
    assert runs == {(b, m) for b in ("mf", "lightgcn") for m in ("rns", "pns")}
    # 08 ran before 06 wrote its results: its failing cell and the exception's last line reach the terminal
    assert not report["08_popularity"]["ok"] and "skipped" not in report["08_popularity"]
    failure = printed.split("FAILED")[1].split("  02_profiles")[0]
    assert "in cell" in failure and "from IPython.display import display" in failure
    assert 'main = run.load_json("06_main_results")' in failure.split("failing line")[1]
    assert "MissingInputError: " in failure and "06_main_results.json is missing" in failure
    assert "PapermillExecutionError" not in printed


def test_a_notebook_reading_a_failed_or_skipped_one_is_skipped_and_06_keeps_its_llm_methods_on_shipped_data():
    data = load_dataset("ml-100k", seed=0)
    failed = {"06_main_results": {"ok": False, "wall_s": 1.0, "error": "x"}}
    assert skip_reason("08_popularity", data, LLM, "smoke", failed) == ("it reads 06_main_results's results, "
                                                                        "which failed")
    skipped = {"03_sns": {"ok": False, "wall_s": 0.0, "skipped": "why"}}
    assert "which was skipped" in skip_reason("04_alignment", data, LLM, "smoke", skipped)
    assert skip_reason("08_popularity", data, LLM, "smoke", {}) is None   # 06's results of an earlier study
    # ml-100k ships outputs of both LLMs (outputs/): nothing is skipped for want of them (the smoke study of
    # tests/test_notebooks.py makes smollm2-135m's few profiles, which are not shipped)
    for name in ("02_profiles", "03_sns", "04_alignment", "05_hnlmrec", "10_generalisation", "11_llm_size"):
        for profile, llm in (("smoke", LLM), ("full", LLM), ("smoke", "smollm2-135m")):
            assert skip_reason(name, data, llm, profile, {}) is None, (name, profile, llm)
    assert llm_methods_missing(data, LLM, "full") is None
    assert "no LLM outputs of nosuch-llm for ml-100k" in llm_methods_missing(data, "nosuch-llm", "full")
    conf = classic_only(settings("full", "06_main_results"), "why")
    assert conf["semantic_methods"] == conf["hnlmrec_signals"] == [] and "rns" in conf["methods"]


def test_regenerate_runs_what_lacks_outputs_and_llm_only_skips_a_transfer_without_target(tmp_path, monkeypatch,
                                                                                          capsys):
    path = write_lines(tmp_path / "Toys.json", reviews(n_users=60, n_items=80))
    data = load_dataset("mytoys", source="amazon2018", reviews=str(path), meta=str(write_lines(
        tmp_path / "meta.json", meta(range(80)))), cache=False)
    assert skip_reason("03_sns", data, LLM, "smoke", {}).startswith(f"no LLM outputs of {LLM} for mytoys")
    monkeypatch.setenv(REGENERATE_VAR, "1")   # hnlm study --regenerate: the notebooks make them here
    assert skip_reason("03_sns", data, LLM, "smoke", {}) is None
    assert skip_reason("10_generalisation", data, LLM, "smoke", {}).startswith("no transfer target for mytoys")
    assert llm_only_stages("mytoys", STAGES) == [s for s in STAGES if s != "transfer"]
    assert "[llm-only] transfer stage skipped: no transfer target for mytoys" in capsys.readouterr().out
    assert llm_only_stages("ml-100k", STAGES) == list(STAGES)


def test_the_judge_is_left_out_with_its_reason_when_its_scores_are_missing(capsys):
    """Full 04/06/07 ask for the judge; without shipped or made scores they run without it and say why."""
    data = load_dataset("ml-100k", seed=0)
    conf = {"methods": ["rns", "dnsmn-judge"], "semantic_methods": ["sns", "dnsmn-judge-random"], "judge": True}
    kept = unscored_judge_left_out(conf, data, "smollm2-135m")   # its scores are never shipped
    assert kept == {"methods": ["rns"], "semantic_methods": ["sns"], "judge": False}
    line = capsys.readouterr().out.strip()
    assert line.startswith("judge left out (dnsmn-judge, dnsmn-judge-random): ") and "hnlm judge" in line
    classic = {"methods": ["rns", "dns"]}
    assert unscored_judge_left_out(classic, data, "smollm2-135m") is classic   # nothing asked, nothing checked
