"""The training loop's parts on a tiny hand-made dataset, each rule checked by hand (fast; the ml-100k runs
are in test_cf_train.py)."""

import dataclasses
import json
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from hnlm.cf import trainer
from hnlm.cf.evaluate import evaluate, metric_summary
from hnlm.cf.extension import Extension
from hnlm.cf.samplers import DENS, RNS, Negatives, TableSampler
from hnlm.cf.trainer import (
    BestEpoch,
    TrainConfig,
    batch_loss,
    build_run,
    check_config,
    is_eval_epoch,
    resolve_device,
    save_result,
    set_batch_context,
    train,
    training_pairs,
)
from tests.cf_helpers import tiny_data

CPU = torch.device("cpu")


def data():
    return tiny_data(train={0: [0, 1], 1: [2], 2: [1, 3]}, valid={0: [2], 2: [0]}, test={0: [3], 1: [1]},
                     n_users=3, n_items=5)


def softplus(x):
    return math.log1p(math.exp(x))


def test_config_from_file_checks_keys_and_takes_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "mf"\ndim = 8\nepochs = 9\n')
    cfg = TrainConfig.from_file(path, epochs=2)
    assert (cfg.model, cfg.dim, cfg.epochs, cfg.lr) == ("mf", 8, 2, TrainConfig().lr)
    path.write_text("dims = 8\n")
    with pytest.raises(ValueError, match=r"unknown training settings \['dims'\]"):
        TrainConfig.from_file(path)


def test_cutoffs_include_the_validation_metric_and_unknown_metrics_are_refused():
    assert check_config(TrainConfig(metric="ndcg@15", ks=[20, 10])) == [10, 15, 20]
    assert [check_config(TrainConfig(metric=f"{m}@5", ks=[5])) for m in ("recall", "hit", "precision")] == [[5]] * 3
    with pytest.raises(ValueError, match="mrr@10"):
        check_config(TrainConfig(metric="mrr@10"))


def test_evaluation_epochs_and_device():
    cfg = TrainConfig(eval_every=3, epochs=7)
    assert [e for e in range(1, 8) if is_eval_epoch(e, cfg)] == [3, 6, 7]
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_best_epoch_keeps_a_copy_of_the_first_best_state_and_counts_evaluations_since():
    model = torch.nn.Linear(1, 1, bias=False)
    best = BestEpoch(patience=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    best.record(1, 0.5, [model])
    with torch.no_grad():
        model.weight.fill_(2.0)
    best.record(2, 0.5, [model])                         # a tie is no improvement
    assert (best.epoch, best.waited, best.stop) == (1, 1, False) and best.state[0]["weight"].item() == 1.0
    best.record(3, 0.4, [model])
    assert best.stop and best.epoch == 1
    best.record(4, 0.6, [model])
    assert (best.epoch, best.score, best.waited, best.stop) == (4, 0.6, 0, False)
    assert best.state[0]["weight"].item() == 2.0


def test_build_run_seeds_the_model_and_shares_a_positive_index_with_its_own_counts():
    d, cfg = data(), TrainConfig(model="mf", dim=2, device="cpu", seed=3)
    run = build_run(d, cfg, CPU)
    run.positives.counts["draws"] = 7
    other = build_run(d, cfg, CPU, positives=run.positives)
    assert torch.equal(run.model.user_emb.weight, other.model.user_emb.weight)
    assert other.positives.table is run.positives.table and other.positives is not run.positives
    assert other.positives.counts == {"draws": 0, "redrawn": 0, "exact_fallback": 0}
    assert run.ctx.popularity.tolist() == [1.0, 2.0, 1.0, 1.0, 0.0] and run.ctx.generator is run.gen
    dens = build_run(d, cfg, CPU, sampler=DENS())
    assert dens.modules == [dens.model, dens.sampler] and dens.sampler.gates is not None
    users, items = training_pairs(d, CPU)
    assert users.tolist() == [0, 0, 1, 2, 2] and items.tolist() == [0, 1, 2, 1, 3]


class ZeroNegatives(Extension):
    """Scores every negative 0 and adds a fixed term; records the batch it saw."""

    def on_batch(self, batch, emb):
        self.batch = batch
        return emb._replace(neg=torch.zeros_like(emb.neg)), torch.tensor(0.7)


def hand_run(loss="bpr", extension=None):
    """MF with users (1, 0), (0, 1), (1, 1) and items (1, 0), (.5, 0), (0, 0), (0, 2), (0, 1)."""
    run = build_run(data(), TrainConfig(model="mf", dim=2, l2=0.1, loss=loss, margin=1.0, device="cpu"), CPU,
                    extension=extension)
    with torch.no_grad():
        run.model.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        run.model.item_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 1.0]]))
    set_batch_context(run.ctx, run.model.layer_embeddings(), run.model.combine)
    return run


def test_batch_loss_by_hand():
    # pairs (user 0, pos 1, neg 4) and (user 2, pos 3, neg 0): scores 0.5 vs 0 and 2 vs 1;
    # L2 = (1 + 2 + .25 + 4 + 1 + 1) / 2 users
    users, pos, negs = torch.tensor([0, 2]), torch.tensor([1, 3]), Negatives(torch.tensor([4, 0]))
    l2 = 0.1 * 9.25 / 2
    run = hand_run()
    layer0 = (run.model.user_emb.weight, run.model.item_emb.weight)
    assert float(batch_loss(run, users, pos, negs, layer0)) == pytest.approx((softplus(-0.5) + softplus(-1)) / 2 + l2)
    hinge = hand_run("hinge")                                                # margin 1: max(0, 1 - .5), max(0, 0)
    assert float(batch_loss(hinge, users, pos, negs, layer0)) == pytest.approx(0.25 + l2)
    # a sampler's own negative embeddings and extra term replace the table rows and add to the loss
    given = Negatives(negs.items, torch.tensor([[0.0, 0.0], [0.0, 5.0]]), torch.tensor(0.2))
    assert float(batch_loss(run, users, pos, given, layer0)) == pytest.approx(
        (softplus(-0.5) + softplus(3)) / 2 + l2 + 0.2)
    ext = ZeroNegatives()
    with_ext = hand_run(extension=ext)
    assert float(batch_loss(with_ext, users, pos, given, layer0)) == pytest.approx(
        (softplus(-0.5) + softplus(-2)) / 2 + l2 + 0.2 + 0.7)
    assert [t.tolist() for t in ext.batch[:3]] == [[0, 2], [1, 3], [4, 0]] and ext.batch.epoch == 0


def test_train_on_a_frozen_model_averages_the_epoch_loss_and_stops_on_patience(tmp_path):
    """lr 0 keeps the initial weights, so every validation score ties: epoch 1 stays best and patience 1
    stops the run after epoch 2. Fixed table negatives make each epoch's loss the full-data batch loss."""
    d = data()
    users, items = training_pairs(d, CPU)
    sampler = TableSampler(users.numpy(), items.numpy(), np.array([4, 3, 0, 4, 2]), d.n_items)
    cfg = TrainConfig(model="mf", dim=4, epochs=6, batch_size=2, lr=0.0, l2=0.01, patience=1, ks=[1, 2],
                      metric="recall@2", device="cpu")
    result = train(d, cfg, sampler=sampler, progress=False)
    assert (result["epochs_run"], result["best_epoch"]) == (2, 1)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    run = build_run(d, cfg, CPU, sampler=TableSampler(users.numpy(), items.numpy(), np.array([4, 3, 0, 4, 2]), 5))
    set_batch_context(run.ctx, run.model.layer_embeddings(), run.model.combine)
    layer0 = (run.model.user_emb.weight, run.model.item_emb.weight)
    full = float(batch_loss(run, users, items, run.sampler.sample(users, items, run.model, run.ctx), layer0))
    assert [r["loss"] for r in result["history"]] == pytest.approx([full, full], rel=1e-6)
    assert set(result["history"][0]["valid"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "hit", "precision",
                                                                        "coverage", "mean_popularity",
                                                                        "longtail_share") for k in (1, 2)}
    test = evaluate(result["model"], d, "test", [1, 2])
    assert result["test"] == metric_summary(test) and result["per_user_test"]["users"] == [0, 1]
    assert result["counts"]["table_sampler"]["from_table"] == 10 and result["counts"]["positive_index"]["draws"] == 10
    assert (result["n_params"], result["device"], result["extension"], result["sampler"]["name"]) == (
        32, "cpu", None, "table")
    saved = json.loads(save_result(result, tmp_path / "out" / "r.json").read_text())
    assert "model" not in saved and saved["best_epoch"] == 1 and saved["per_user_test"] == result["per_user_test"]


def test_results_with_numpy_values_are_saved_as_plain_json(tmp_path):
    path = save_result({"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(2), "model": object()}, tmp_path / "r")
    assert json.loads(path.read_text()) == {"n": 3, "x": 0.5, "v": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable: set"):
        save_result({"s": {1}}, tmp_path / "bad")


def test_a_fresh_best_epoch_has_waited_for_nothing():
    best = BestEpoch(patience=1)
    assert (best.epoch, best.waited, best.stop) == (None, 0, False)


class ExtraState(torch.nn.Module):
    """A module with a buffer that is a view of a larger tensor and a non-tensor extra state."""

    def __init__(self):
        super().__init__()
        self.seen = [1]
        self.register_buffer("row", torch.arange(12.0).view(3, 4)[1])

    def get_extra_state(self):
        return {"seen": self.seen}

    def set_extra_state(self, state):
        self.seen = state["seen"]


def test_best_epoch_state_copies_only_the_viewed_rows_and_deep_copies_extra_state():
    module, best = ExtraState(), BestEpoch(patience=1)
    best.record(1, 0.5, [module])
    module.seen.append(2)
    saved = best.state[0]
    assert saved["_extra_state"] == {"seen": [1]}
    assert saved["row"].tolist() == [4.0, 5.0, 6.0, 7.0] and saved["row"].untyped_storage().nbytes() == 4 * 4


class SetupRecorder(RNS):
    def setup(self, model, data):
        self.data, self.draw = data, np.random.random()


def test_build_run_passes_sampler_options_and_data_and_seeds_every_generator():
    d = data()
    cfg = TrainConfig(model="mf", dim=2, device="cpu", seed=3, sampler="dns", sampler_opts={"candidates": 7})
    run = build_run(d, cfg, CPU)
    assert run.sampler.candidates == 7
    assert isinstance(run.gen, torch.Generator) and run.gen.initial_seed() == 3
    first = build_run(d, cfg, CPU, sampler=SetupRecorder())
    np.random.seed(99)
    second = build_run(d, cfg, CPU, sampler=SetupRecorder())
    assert first.sampler.data is d and first.sampler.draw == second.sampler.draw


def frozen_table_run(**changes):
    d = data()
    users, items = training_pairs(d, CPU)
    sampler = TableSampler(users.numpy(), items.numpy(), np.array([4, 3, 0, 4, 2]), d.n_items)
    cfg = TrainConfig(model="mf", dim=4, epochs=2, batch_size=2, lr=0.0, ks=[1, 2], metric="recall@2", device="cpu")
    return d, sampler, dataclasses.replace(cfg, **changes)


def test_progress_bar_names_the_run_shows_loss_and_metric_and_is_cleared(capsys):
    d, sampler, cfg = frozen_table_run()
    train(d, cfg, sampler=sampler)
    err = capsys.readouterr().err
    assert "mf/table:" in err and "loss=0." in err and "recall@2=0.5000" in err and "\n" not in err
    train(d, cfg, sampler=sampler, progress=False)
    assert capsys.readouterr().err == ""


class Clock:
    """perf_counter that advances by one second per reading."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_timings_are_clock_differences_summed_per_epoch(monkeypatch):
    # per epoch: start, (before, after) sampling for each of 3 batches, end -> train 7 s, sampling 3 s;
    # each evaluation and the test pass read the clock twice -> 1 s
    monkeypatch.setattr(trainer, "time", Clock())
    d, sampler, cfg = frozen_table_run()
    result = train(d, cfg, sampler=sampler, extension=Extension(), progress=False)
    assert [(r["train_s"], r["sample_s"], r["eval_s"]) for r in result["history"]] == [(7.0, 3.0, 1.0)] * 2
    assert result["timings"] == {"train_s_per_epoch": 7.0, "train_s_total": 14.0, "sample_s_per_epoch": 3.0,
                                 "eval_s_mean": 1.0, "test_eval_s": 1.0}
    assert set(result) == {"dataset", "config", "seed", "sampler", "extension", "device", "n_params", "history",
                           "epochs_run", "best_epoch", "valid", "test", "per_user_test", "timings", "counts", "model"}
    assert (result["dataset"], result["config"], result["seed"], result["extension"]) == (
        "tiny", {**dataclasses.asdict(cfg), "sampler": "table"}, 0, "Extension")   # the sampler that trained
    assert result["valid"] == metric_summary(evaluate(result["model"], d, "valid", [1, 2]))


class PlainNegatives(NamedTuple):
    items: torch.Tensor
    emb: torch.Tensor | None = None


class PlainSampler:
    """A sampler written outside hnlm.cf: only `sample`, no name, counts or describe; records its calls."""

    def __init__(self):
        self.calls = []

    def sample(self, users, pos, model, ctx):
        self.calls.append((ctx.epoch, model, users.tolist(), pos.tolist()))
        return PlainNegatives(torch.full_like(users, 4))


def test_a_sampler_needs_only_sample_and_sees_the_epochs_batches_and_model(capsys):
    d, _, cfg = frozen_table_run(seed=5)
    sampler = PlainSampler()
    result = train(d, cfg, sampler=sampler)
    assert "mf/custom:" in capsys.readouterr().err
    assert result["sampler"] == {"name": "PlainSampler"} and set(result["counts"]) == {"positive_index"}
    assert [c[0] for c in sampler.calls] == [0, 0, 0, 1, 1, 1] and all(c[1] is result["model"] for c in sampler.calls)
    users, items = training_pairs(d, CPU)
    gen = torch.Generator().manual_seed(5)    # the batch order comes from the run's generator alone
    orders = [torch.randperm(5, generator=gen) for _ in range(2)]
    expected = [(users[o[i:i + 2]].tolist(), items[o[i:i + 2]].tolist()) for o in orders for i in (0, 2, 4)]
    assert [(c[2], c[3]) for c in sampler.calls] == expected


class FirstBatchTerm(torch.nn.Module):
    """A sampler module whose parameter is in the loss of the first batch only; records it at each batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.seen = []

    def sample(self, users, pos, model, ctx):
        self.seen.append(self.w.detach().clone())
        return Negatives(torch.full_like(users, 4), None, (self.w ** 2).sum() if len(self.seen) == 1 else None)


def test_a_parameter_outside_a_batch_loss_is_not_moved_by_stale_gradients():
    d, _, cfg = frozen_table_run(lr=0.1)
    sampler = FirstBatchTerm()
    train(d, cfg, sampler=sampler, progress=False)
    moved = sampler.seen[1]
    assert not torch.equal(moved, torch.ones(2)) and all(torch.equal(w, moved) for w in sampler.seen[1:])


def test_saved_results_create_missing_folders_and_indent_by_one(tmp_path):
    path = save_result({"a": [1]}, tmp_path / "x" / "y" / "r.json")
    assert path.read_text() == '{\n "a": [\n  1\n ]\n}'
