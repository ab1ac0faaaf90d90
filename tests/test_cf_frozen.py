"""A converged, frozen CF model (hnlm.cf.frozen) and the static DNS(M,N) built on it (dnsmn-static)."""

import numpy as np
import pytest

from hnlm.cf.frozen import frozen_model, frozen_path, mine_dnsmn
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import first_users, load_dataset
from hnlm.methods import variant
from hnlm.methods.dnsmn_static import teacher_config

CONFIG = TrainConfig(model="mf", dim=8, epochs=6, patience=2, batch_size=4096, lr=2e-2, sampler="dns-mn")


@pytest.fixture(scope="module")
def data():
    return first_users(load_dataset("ml-100k", seed=0), 150)


def test_a_frozen_model_is_selected_on_validation_and_cached(data):
    model = frozen_model(data, CONFIG)
    assert frozen_path(data, CONFIG).exists()
    assert model.user_emb.shape == (data.n_users, 8) and model.item_emb.shape == (data.n_items, 8)
    assert 1 <= model.summary["best_epoch"] <= model.summary["epochs_run"] <= 6
    assert "test" not in model.summary and model.summary["valid"]["recall@20"] > 0
    again = frozen_model(data, CONFIG)
    assert np.array_equal(again.item_emb, model.item_emb) and again.summary == model.summary
    other = frozen_model(data, TrainConfig(**{**CONFIG.__dict__, "lr": 1e-2}))
    assert not np.array_equal(other.item_emb, model.item_emb)          # the key follows every setting


def test_dnsmn_mining_is_hard_reproducible_and_never_a_training_positive(data):
    model = frozen_model(data, CONFIG)
    users, pos, neg = mine_dnsmn(data, model, candidates=32, top=2, seed=3)
    assert len(users) == data.train.nnz and (pos == data.train.tocoo().col).all()
    assert not np.asarray(data.train.tocsr()[np.array(users), np.array(neg)]).any()
    users2, _, neg2 = mine_dnsmn(data, model, candidates=32, top=2, seed=3)
    assert np.array_equal(neg, neg2) and not np.array_equal(neg, mine_dnsmn(data, model, 32, 2, seed=4)[2])
    score = (model.user_emb[users] * model.item_emb[neg]).sum(1)
    uniform = (model.user_emb[users] * model.item_emb[np.random.default_rng(0).integers(0, data.n_items,
                                                                                         len(users))]).sum(1)
    assert score.mean() > uniform.mean() + 2 * uniform.std() / np.sqrt(len(users))


def test_static_dnsmn_trains_on_its_frozen_table_and_reports_its_teacher(data):
    static = variant("dnsmn-static", teacher="mf", teacher_lr=2e-2, teacher_batch_size=4096)
    assert static.declaration.ablation_of == "dns-mn"
    assert teacher_config(static.settings()).eval_every == 1
    sampler, extension = static.build(data, None, seed=0)
    result = train(data, TrainConfig(model="mf", dim=8, epochs=2, patience=2, batch_size=4096), sampler=sampler,
                   progress=False)
    table = result["counts"]["table_sampler"]
    assert extension is None and table["from_table"] == table["pairs"] == 2 * data.train.nnz
    assert result["counts"]["teacher"]["valid"]["recall@20"] > 0


def test_hnlmrec_teacher_with_no_epoch_count_is_the_converged_frozen_model(data):
    """TeacherConfig(epochs=None): HNLMRec's teacher is the stored converged model of uniform sampling (early
    stopping on validation under the lr-scaled protocol), its valid score and best epoch in the meta."""
    from hnlm.cf.search import lr_protocol
    from hnlm.semantic.hnlmrec.run import TeacherConfig, train_teacher
    cfg = TeacherConfig(model="mf", epochs=None, lr=2e-2, dim=8, batch_size=4096)
    teacher = train_teacher(data, cfg)
    frozen = frozen_model(data, TrainConfig(model="mf", lr=2e-2, dim=8, batch_size=4096, sampler="rns",
                                            **lr_protocol(2e-2, TrainConfig.epochs)))
    assert np.array_equal(teacher.item_emb, frozen.item_emb) and np.array_equal(teacher.user_emb, frozen.user_emb)
    assert teacher.meta["best_epoch"] == frozen.summary["best_epoch"] < frozen.summary["epochs_run"]
    assert teacher.meta["valid_recall@20_recorded_only"] == frozen.summary["valid"]["recall@20"] > 0
