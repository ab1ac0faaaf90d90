"""The tuning protocol (hnlm.study.tuning): the search it visits, the point it chooses, widening past a best edge,
replay from the tuning table without training, ablations at their parent's point, and the shared run store."""

import json

import pandas as pd
import pytest

from hnlm.cf.search import Axis, lr_protocol
from hnlm.data import first_users, load_dataset
from hnlm.methods import variant
from hnlm.study import tuning
from hnlm.study.experiments import run_grid
from hnlm.study.tuning import Space, Target, Tuner

SETTINGS = {"epochs": 2, "patience": 2, "dim": 8, "ks": [10, 20]}
SPACE = Space({"lr": (5e-3, 2e-2), "batch_size": (16384,)}, method_values=2, widen=1)


@pytest.fixture(scope="module")
def data():
    return first_users(load_dataset("ml-100k", seed=0), 200)


def make_tuner(data, tmp_path, space=SPACE, retune=False):
    table = tmp_path / "tuning.csv"
    return Tuner(data, SETTINGS, tmp_path / "cf_runs", None, space, table, table.write_text, retune)


def test_axis_widens_one_ratio_past_a_best_edge_within_its_bounds():
    lr = Axis((1e-3, 5e-3, 2e-2), low=1e-4, high=1e-1)
    assert lr.beyond([1e-3, 5e-3, 2e-2], 2e-2) == pytest.approx(8e-2)
    assert lr.beyond([1e-3, 5e-3, 2e-2], 1e-3) == pytest.approx(2e-4)
    assert lr.beyond([1e-3, 5e-3, 2e-2], 5e-3) is None                  # an inner best needs no widening
    assert lr.beyond([5e-3, 2e-2, 8e-2], 8e-2) == pytest.approx(1e-1)    # clipped to the bound ...
    assert lr.beyond([2e-2, 8e-2, 1e-1], 1e-1) is None                   # ... and no further
    assert Axis((16, 32, 64), low=2).beyond([16, 32, 64], 16) == 8 and Axis((2, 5, 10)).beyond([2, 5], 2) == 1
    with pytest.raises(ValueError, match="increase"):
        Axis((5, 2))


def test_patience_and_cap_scale_with_the_learning_rate():
    assert lr_protocol(2e-2, 300) == {"eval_every": 1, "epochs": 300}
    assert lr_protocol(5e-3, 300) == {"eval_every": 1, "epochs": 300}
    assert lr_protocol(1e-3, 300) == {"eval_every": 5, "epochs": 1500}


def test_tuning_chooses_the_best_valid_trial_and_replays_from_its_table(data, tmp_path, monkeypatch):
    tuner = make_tuner(data, tmp_path)
    tuned = tuner.apply(variant("dns"), "mf")
    table = pd.read_csv(tmp_path / "tuning.csv")
    assert set(table["target"]) == {"dns"} and table["chosen"].sum() == 1
    chosen = table[table["chosen"]].iloc[0]
    assert chosen["valid"] == table["valid"].max()
    assert dict(tuned.train)["lr"] == chosen["lr"] and dict(tuned.overrides)["candidates"] == \
        json.loads(chosen["settings"])["candidates"]
    assert tuned.name == "dns"                                   # tables keep the method's label
    stages = table["stage"].tolist()
    assert stages[:2] == ["train grid"] * 2 and "method axis candidates" in stages
    assert len(table) == table["key"].nunique()                 # no trial is run twice

    def no_training(*args, **kwargs):
        raise AssertionError("a trial in the table was trained again")

    monkeypatch.setattr(tuning, "run_specs", no_training)
    again = make_tuner(data, tmp_path).apply(variant("dns"), "mf")
    assert again == tuned
    assert pd.read_csv(tmp_path / "tuning.csv").equals(table)
    with pytest.raises(AssertionError, match="trained again"):     # --retune ignores the table's rows
        make_tuner(data, tmp_path, retune=True).apply(variant("dns"), "mf")


def test_an_ablation_runs_at_its_parents_point_and_explicit_settings_win(data, tmp_path):
    tuner = make_tuner(data, tmp_path)
    parent = tuner.apply(variant("dnsmn-guard"), "mf")
    n = len(pd.read_csv(tmp_path / "tuning.csv"))
    ablation = tuner.apply(variant("dnsmn-guard-random"), "mf")
    assert len(pd.read_csv(tmp_path / "tuning.csv")) == n          # no tuning of its own
    assert (ablation.overrides, ablation.train) == (parent.overrides, parent.train)
    swept = tuner.apply(variant("dnsmn-guard", weight=5.0), "mf")
    assert dict(swept.overrides)["weight"] == 5.0 and swept.train == parent.train
    assert Target.of(variant("dnsmn-guard", weight=5.0, guard="hard"), "mf").name == "dnsmn-guard guard=hard"


def test_a_best_edge_is_widened_and_an_exhausted_one_is_flagged(data, tmp_path, monkeypatch):
    """With valid scores rising with the learning rate, the best lr is the top edge: the tuner tries one step
    beyond (8e-2) and, out of widening budget, flags the chosen point."""
    tuner = make_tuner(data, tmp_path)

    def score(self, target, points, stage):
        for train, settings in points:
            self._trials.append({"key": self._key(target, train, settings), "valid": train["lr"], "chosen": False,
                                 "edge": None})
        return [train["lr"] for train, _ in points]

    monkeypatch.setattr(Tuner, "_score", score)
    monkeypatch.setattr(Tuner, "_save", lambda self, target, final=False: None)
    settings, train = tuner.tune(Target("mf", "rns", ()))
    assert train["lr"] == pytest.approx(8e-2) and train["eval_every"] == 1 and settings == {}
    chosen = max(tuner._trials, key=lambda t: t["valid"])
    assert chosen["chosen"] and chosen["edge"] == "lr: widening budget spent"


def test_the_grid_reuses_the_chosen_trial_as_its_seed_zero_run(data, tmp_path):
    tuner = make_tuner(data, tmp_path)
    results = run_grid(data, ["mf"], ["rns"], [0, 1], SETTINGS, tmp_path, tuner=tuner)
    chosen = pd.read_csv(tmp_path / "tuning.csv").query("chosen").iloc[0]
    assert results[0]["key"] == chosen["key"] and results[0]["tag"] == "mf__rns__seed0"
    assert results[0]["method"] == "rns" and results[1]["config"]["lr"] == chosen["lr"]
    trial_tag = (tmp_path / "cf_runs" / "keys" / chosen["key"]).read_text()
    trial = json.loads((tmp_path / "cf_runs" / f"{trial_tag}.json").read_text())
    assert trial_tag.startswith("mf__tune_rns") and results[0]["timings"] == trial["timings"]   # copied, not retrained
