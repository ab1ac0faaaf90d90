"""Where a notebook's results land: the run folder always, the tracked results folder only under `full`; and how
`hnlm study` relays a notebook's printed lines and progress bars to the terminal."""

import io
import json

import pandas as pd
import pytest

from hnlm.paths import PROJECT_ROOT
from hnlm.study import start
from hnlm.study.runner import IndentedStream

TABLE = pd.DataFrame({"method": ["rns", "dns"], "recall@20": [0.31, 0.33]})


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("HNLM_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def save_all(profile, out_dir):
    run = start("06_main_results", "ml-100k", "qwen2.5-0.5b", profile, out_dir=out_dir)
    run.save_json({"table": TABLE, "figures": [PROJECT_ROOT / "figures" / "06_main_results_ml-100k.png"]})
    run.save_csv(TABLE, "06_main_table")
    run.save_csv(TABLE, "06_curves", tracked=False)


def test_full_profile_tables_also_land_in_the_results_folder(tmp_path, results):
    save_all("full", tmp_path / "runs")
    tracked = results / "ml-100k"
    assert sorted(p.name for p in tracked.iterdir()) == ["06_main_results.json", "06_main_table.csv"]
    for name in ("06_main_results.json", "06_main_table.csv"):
        assert (tracked / name).read_bytes() == (tmp_path / "runs" / name).read_bytes()
    assert (tmp_path / "runs" / "06_curves.csv").exists()
    stored = json.loads((tracked / "06_main_results.json").read_text())
    assert stored["meta"]["profile"] == "full" and stored["table"][1]["recall@20"] == 0.33
    assert stored["figures"] == ["figures/06_main_results_ml-100k.png"]  # no machine's checkout path


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_fast_profiles_write_the_run_folder_only(tmp_path, results, profile):
    save_all(profile, tmp_path / "runs")
    assert not (results / "ml-100k").exists()
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"06_main_results.json", "06_main_table.csv",
                                                              "06_curves.csv"}


def test_relayed_lines_and_redrawn_progress_bars_keep_their_indent():
    out = io.StringIO()
    relay = IndentedStream(out, indent="  ")
    for chunk in ["[outputs] sns: shipped\nCF runs:   0%|", "\rCF runs:  50%|", "\rCF runs: 100%|\n", "done", "\n"]:
        relay.write(chunk)
    assert out.getvalue() == ("  [outputs] sns: shipped\n  CF runs:   0%|\r  CF runs:  50%|\r  CF runs: 100%|\n"
                              "  done\n")
