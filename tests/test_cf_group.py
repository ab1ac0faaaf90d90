"""Grouped training: each run of a group gives what it gives alone with train() (same seed, same config)."""

import numpy as np
import pytest
import torch
from cf_helpers import tiny_data

from hnlm.cf.extension import Extension
from hnlm.cf.group import GroupError, train_group
from hnlm.cf.trainer import TrainConfig, train
from hnlm.errors import DegenerateDatasetError

FAST = {"dim": 8, "layers": 2, "batch_size": 128, "lr": 0.05, "epochs": 4, "patience": 10, "device": "cpu"}
HARD = [("rns", {}), ("dns", {"candidates": 8}), ("dns-mn", {"candidates": 8, "top": 3})]


@pytest.fixture(scope="module")
def data():
    """60 users x 90 items, 6-19 items each: the last two of a user's items are test, the two before valid."""
    rng = np.random.default_rng(0)
    parts = [{}, {}, {}]
    for u in range(60):
        items = rng.choice(90, size=rng.integers(6, 20), replace=False).tolist()
        parts[0][u], parts[1][u], parts[2][u] = items[:-4], items[-4:-2], items[-2:]
    return tiny_data(*parts, 60, 90)


def configs(model, samplers=HARD, seeds=(0, 1), **overrides):
    return [TrainConfig(model=model, sampler=s, sampler_opts=o, seed=seed, **{**FAST, **overrides})
            for s, o in samplers for seed in seeds]


def assert_same(grouped, alone):
    for g, a in zip(grouped, alone):
        for key in ("test", "valid", "best_epoch", "epochs_run", "per_user_test", "counts", "sampler", "config",
                    "n_params"):
            assert g[key] == a[key], key
        assert [r["loss"] for r in g["history"]] == [r["loss"] for r in a["history"]]
        assert [r.get("valid") for r in g["history"]] == [r.get("valid") for r in a["history"]]


@pytest.mark.parametrize(("model", "shared_product"), [("mf", True), ("lightgcn", True), ("lightgcn", False)])
def test_grouped_runs_equal_runs_alone(data, model, shared_product):
    cfgs = configs(model)
    grouped = train_group(data, cfgs, progress=False, shared_product=shared_product)
    alone = [train(data, c, progress=False) for c in cfgs]
    assert_same(grouped, alone)
    assert [r["group"] for r in grouped] == [{"size": 6, "position": i} for i in range(6)]
    # the models come back with their own (best-epoch) weights, not views of the group's tables
    a, b = grouped[0]["model"].user_emb.weight, grouped[1]["model"].user_emb.weight
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() and a.requires_grad
    with torch.no_grad():
        for g, s in zip(grouped, alone):
            assert all(torch.equal(x, y) for x, y in zip(g["model"].propagate(), s["model"].propagate()))
    if model == "lightgcn":     # one adjacency for the whole group
        assert all(r["model"].adj is grouped[0]["model"].adj for r in grouped)


def test_runs_stop_early_on_their_own(data):
    # MF at a high lr without L2 peaks early on valid; with patience 1 the seeds stop at different epochs
    cfgs = configs("mf", seeds=range(4), epochs=8, patience=1, lr=0.2, l2=0.0)
    grouped = train_group(data, cfgs, progress=False)
    assert_same(grouped, [train(data, c, progress=False) for c in cfgs])
    stopped = [r["epochs_run"] for r in grouped]
    assert len(set(stopped)) > 1 and min(stopped) < 8, stopped
    for r in grouped:    # each run's own best weights were restored
        scores = [h["valid"]["recall@20"] for h in r["history"]]
        assert r["best_epoch"] == int(np.argmax(scores)) + 1
        assert r["valid"]["recall@20"] == max(scores)


class NoisyShift(Extension):
    """A trainable shift of the negative with dropout: draws from the global torch RNG on every batch."""

    def setup(self, model, data):
        self.shift = torch.nn.Parameter(torch.randn(model.embedding_dim) * 0.01)

    def on_batch(self, batch, emb):
        shift = torch.nn.functional.dropout(self.shift, 0.5, training=True)
        return emb._replace(neg=emb.neg + shift), 0.1 * (self.shift - 0.1).pow(2).sum()


def test_other_samplers_and_extensions_run_per_run(data):
    samplers = [("mixgcf", {"candidates": 4}), ("dens", {"candidates": 4}), ("rns", {})]
    cfgs = configs("lightgcn", samplers=samplers, seeds=(0, 1))
    grouped = train_group(data, cfgs, extensions=[NoisyShift() for _ in cfgs], progress=False)
    alone = [train(data, c, extension=NoisyShift(), progress=False) for c in cfgs]
    assert_same(grouped, alone)
    assert grouped[0]["extension"] == "NoisyShift"


def test_thread_count_does_not_change_results(data):
    cfgs = configs("lightgcn", seeds=(0,))
    alone = [train(data, c, progress=False) for c in cfgs]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        grouped = train_group(data, cfgs, progress=False)
    finally:
        torch.set_num_threads(threads)
    for g, a in zip(grouped, alone):
        assert g["best_epoch"] == a["best_epoch"]
        assert g["test"]["recall@20"] == pytest.approx(a["test"]["recall@20"], abs=1e-6)
        assert g["test"]["ndcg@20"] == pytest.approx(a["test"]["ndcg@20"], abs=1e-6)


def test_group_refuses_runs_that_cannot_share(data):
    with pytest.raises(GroupError, match=r"\['lr'\]"):
        train_group(data, [TrainConfig(**FAST), TrainConfig(**{**FAST, "lr": 0.01})], progress=False)
    ext = NoisyShift()
    with pytest.raises(GroupError, match="same extension"):
        train_group(data, configs("mf", samplers=[("rns", {})]), extensions=[ext, ext], progress=False)


def test_group_refuses_a_split_without_targets():
    empty_valid = tiny_data({0: [0, 1], 1: [2, 3]}, {}, {0: [4], 1: [5]}, 2, 8)
    with pytest.raises(DegenerateDatasetError, match="'valid'"):
        train_group(empty_valid, configs("mf", samplers=[("rns", {})]), progress=False)
