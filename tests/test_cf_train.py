"""Training on ml-100k: beats popularity, deterministic, extension hook wired, CLI end to end."""

import json

import numpy as np
import pytest
import torch

from hnlm.cf.evaluate import evaluate
from hnlm.cf.extension import Extension
from hnlm.cf.models import MF
from hnlm.cf.trainer import TrainConfig, save_result, train
from hnlm.cli import main
from hnlm.data import load_dataset
from hnlm.errors import DegenerateDatasetError
from hnlm.methods import get_method, method_names
from tests.cf_helpers import tiny_data

FAST = dict(dim=32, batch_size=4096, lr=5e-3, eval_every=1, patience=3, device="cpu")


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k", seed=0)


def popularity_recall(data):
    """Most-popular baseline as a real MF: every user scores items by training popularity."""
    model = MF(data.n_users, data.n_items, 1)
    with torch.no_grad():
        model.user_emb.weight.fill_(1.0)
        model.item_emb.weight.copy_(torch.from_numpy(data.train_popularity()).float()[:, None])
    return evaluate(model, data, "test")["recall@20"]


def test_lightgcn_beats_popularity(ml100k, tmp_path):
    result = train(ml100k, TrainConfig(model="lightgcn", sampler="dns", epochs=2, layers=2, **FAST),
                   progress=False)
    pop = popularity_recall(ml100k)
    assert result["test"]["recall@20"] > 1.3 * pop, (result["test"]["recall@20"], pop)
    assert result["best_epoch"] in (1, 2)
    assert len(result["history"]) == result["epochs_run"]
    assert len(result["per_user_test"]["recall@20"]) == result["test"]["n_users"]
    path = save_result(result, tmp_path / "r.json")
    saved = json.loads(path.read_text())
    assert saved["config"]["sampler"] == "dns" and "model" not in saved


def test_same_seed_same_metrics(ml100k):
    cfg = TrainConfig(model="mf", sampler="dns", epochs=1, **{**FAST, "dim": 16})
    a, b = train(ml100k, cfg, progress=False), train(ml100k, cfg, progress=False)
    assert a["test"] == b["test"]
    assert a["per_user_test"] == b["per_user_test"]
    # the epoch loss is a float sum whose last bits may depend on thread scheduling
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], rel=1e-6)


def test_early_stopping_restores_best_epoch(ml100k):
    # MF + DNS without L2 at a high lr peaks on validation after a few epochs and then falls
    cfg = TrainConfig(model="mf", sampler="dns", epochs=8,
                      **{**FAST, "dim": 16, "batch_size": 8192, "lr": 0.05, "l2": 0.0, "patience": 2})
    result = train(ml100k, cfg, progress=False)
    scores = [r["valid"]["recall@20"] for r in result["history"]]
    assert result["best_epoch"] == int(np.argmax(scores)) + 1
    assert result["best_epoch"] < result["epochs_run"] == result["best_epoch"] + 2   # stopped by patience
    assert result["valid"]["recall@20"] == pytest.approx(max(scores))   # the best epoch's weights are back


class ShiftNegatives(Extension):
    """A small real extension: a trainable vector added to every negative, plus a penalty on it."""

    def setup(self, model, data):
        self.shift = torch.nn.Parameter(torch.zeros(model.embedding_dim))
        self.calls = 0

    def on_batch(self, batch, emb):
        self.calls += 1
        assert batch.users.shape == batch.pos.shape == batch.neg.shape
        return emb._replace(neg=emb.neg + self.shift), 0.1 * (self.shift - 1.0).pow(2).sum()

    def counts(self):
        return {"shift": {"calls": self.calls}}


def test_train_refuses_a_split_without_targets():
    no_test = tiny_data({0: [0, 1], 1: [2, 3]}, {0: [4], 1: [5]}, {}, 2, 8)
    with pytest.raises(DegenerateDatasetError, match="'test'"):
        train(no_test, TrainConfig(model="mf", epochs=1, **FAST), progress=False)


def test_extension_is_trained_and_counted(ml100k):
    ext = ShiftNegatives()
    result = train(ml100k, TrainConfig(model="mf", sampler="rns", epochs=1, **FAST), extension=ext,
                   progress=False)
    assert result["counts"]["shift"]["calls"] == int(np.ceil(ml100k.train.nnz / FAST["batch_size"]))
    assert ext.shift.abs().sum() > 0          # its parameter was in the optimiser
    assert result["extension"] == "ShiftNegatives"


def test_cli_train_and_a_newly_declared_method(tmp_path, capsys):
    """A method declared once (name, settings dataclass, builder) is trainable by `hnlm train` with --set."""
    from dataclasses import dataclass

    from hnlm.cf.samplers import DNS
    from hnlm.methods import Method, method_names, register

    @dataclass
    class Few:
        candidates: int = 4

    if "test-dns4" not in method_names():
        register(Method("test-dns4", "DNS over few candidates (test)", Few,
                        lambda data, settings, resources, seed: (DNS(candidates=settings.candidates), None)))
    out, conf = tmp_path / "out.json", tmp_path / "fast.toml"
    conf.write_text('model = "mf"\ndim = 16\nbatch_size = 8192\nepochs = 5\n')
    assert main(["train", "--dataset", "ml-100k", "--config", str(conf), "--sampler", "test-dns4", "--epochs", "1",
                 "--set", "candidates=3", "--json", str(out), "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert saved["method"] == "test-dns4" and saved["sampler"]["candidates"] == 3
    assert (saved["config"]["dim"], saved["config"]["epochs"], saved["config"]["model"]) == (16, 1, "mf")
    conf.write_text("epochz = 3\n")
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_file(conf)
    assert main(["train", "--sampler", "nope", "--epochs", "1"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["train", "--sampler", "sns", "--set", "alhpa=0.1", "--epochs", "1"]) == 2
    assert "no setting alhpa" in capsys.readouterr().err


def test_cli_train_takes_the_method_and_its_settings_from_the_config_file(tmp_path, capsys):
    """`sampler` and `sampler_opts` of `--config FILE` are the method and its settings (--set overrides them);
    settings of another method than --sampler's are an error, never dropped."""
    out, conf = tmp_path / "out.json", tmp_path / "dns.toml"
    conf.write_text('model = "mf"\ndim = 8\nbatch_size = 16384\nepochs = 1\nsampler = "dns"\n'
                    "sampler_opts = {candidates = 3}\n")
    assert main(["train", "--dataset", "ml-100k", "--config", str(conf), "--json", str(out), "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert saved["method"] == "dns" and saved["sampler"]["candidates"] == 3
    assert saved["config"]["sampler"] == "dns" and saved["config"]["sampler_opts"] == {"candidates": 3}
    assert main(["train", "--dataset", "ml-100k", "--config", str(conf), "--set", "candidates=5", "--json", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["sampler"]["candidates"] == 5
    capsys.readouterr()
    assert main(["train", "--dataset", "ml-100k", "--config", str(conf), "--sampler", "rns", "--no-progress"]) == 2
    assert "sampler_opts for sampler 'dns', but --sampler is 'rns'" in capsys.readouterr().err


def self_contained(method: str) -> bool:
    return not get_method(method).needs(get_method(method).settings())


# dnsmn-static trains a converged teacher first (minutes): tests/test_cf_frozen.py trains it small
@pytest.mark.parametrize("method", [m for m in method_names("classic") if self_contained(m) and m != "dnsmn-static"])
def test_a_run_records_the_method_and_sampler_it_trained_with(method, tmp_path):
    """Every classic sampler through `hnlm train` (the other methods need LLM outputs, a text encoder or a CF
    teacher; the study's run store records the method of every run, hnlm.study.experiments.run_one)."""
    out = tmp_path / "run.json"
    assert main(["train", "--dataset", "ml-100k", "--sampler", method, "--model", "mf", "--dim", "8", "--epochs", "1",
                 "--batch-size", "8192", "--json", str(out), "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert saved["method"] == method
    assert saved["config"]["sampler"] == saved["sampler"]["name"] == method   # config.sampler once said "rns"


def test_cli_trains_on_a_published_split_and_llm_methods_refuse_id_only_data(tmp_path, monkeypatch, capsys):
    """Own data reaches `hnlm train` by path (LightGCN-style split files); an LLM method refuses it loudly."""
    from hnlm.data.splitfiles import write_lightgcn
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    write_lightgcn(load_dataset("ml-100k", seed=0), tmp_path / "split")
    own = ["--dataset", "my-split", "--source", "lightgcn", "--path", str(tmp_path / "split")]
    out = tmp_path / "r.json"
    assert main(["train", *own, "--model", "mf", "--dim", "8", "--epochs", "1", "--batch-size", "16384",
                 "--json", str(out), "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert saved["dataset"] == "my-split" and saved["method"] == "rns" and saved["test"]["recall@20"] > 0
    assert main(["train", *own, "--sampler", "sns", "--epochs", "1"]) == 2
    assert "needs item text" in capsys.readouterr().err
