"""The study's CF grid: runs are stored by key and reused (a killed grid resumes without rerunning finished
runs), and runs trained in worker processes give the same results as in the main process."""

import pytest

from hnlm.data import first_users, load_dataset
from hnlm.study.executors import Local
from hnlm.study.experiments import run_grid

SETTINGS = {"epochs": 2, "patience": 2, "dim": 8, "batch_size": 16384, "lr": 1e-2, "ks": [10, 20]}


@pytest.fixture(scope="module")
def data():
    return first_users(load_dataset("ml-100k", seed=0), 200)


def test_a_grid_resumes_without_rerunning_finished_runs(data, tmp_path):
    first = run_grid(data, ["mf"], ["rns", "dns"], [0, 1], SETTINGS, tmp_path)
    folder = tmp_path / "cf_runs"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    (folder / "mf__dns__seed1.json").unlink()          # as if the grid was killed during that run
    again = run_grid(data, ["mf"], ["rns", "dns"], [0, 1], SETTINGS, tmp_path)
    assert [r["tag"] for r in again] == [r["tag"] for r in first]
    assert again[3]["test"] == pytest.approx(first[3]["test"])           # retrained, same result
    for name, stamp in stamps.items():
        if name != "mf__dns__seed1.json":
            assert (folder / name).stat().st_mtime_ns == stamp           # loaded, not retrained


@pytest.mark.slow
def test_runs_in_worker_processes_equal_runs_in_the_main_process(data, tmp_path):
    alone = run_grid(data, ["mf"], ["rns", "dns-mn"], [0, 1], SETTINGS, tmp_path / "one", executor=Local(1))
    pooled = run_grid(data, ["mf"], ["rns", "dns-mn"], [0, 1], SETTINGS, tmp_path / "two", executor=Local(2))
    assert [r["tag"] for r in pooled] == [r["tag"] for r in alone]
    for a, b in zip(alone, pooled):
        assert b["best_epoch"] == a["best_epoch"]
        assert b["test"]["recall@20"] == pytest.approx(a["test"]["recall@20"], rel=1e-3)
