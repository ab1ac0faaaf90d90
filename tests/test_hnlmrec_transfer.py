"""HNLMRec runs: user-limited embedding passes, run keys, reuse of a finished run, and the untuned transfer to
another dataset (real smollm2-135m, real MovieLens)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hnlm.data import first_users, load_dataset
from hnlm.errors import MissingInputError
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.queries import QueryBuilder, Teacher, inference_queries
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, settings_key
from hnlm.semantic.sns import Budget, train_fingerprint
from tests.hnlmrec_helpers import random_teacher


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def test_run_key_ignores_the_embedding_pass_only():
    base = settings_key(RunConfig())
    assert settings_key(RunConfig(infer_users=32, infer_batch=4, infer_budget="per-user:2")) == base
    assert settings_key(RunConfig(teacher=TeacherConfig(batch_size=8192))) != base
    assert settings_key(RunConfig(finetune=FinetuneConfig(max_length=160))) != base


def test_embedding_queries_of_the_first_users_only(data):
    builder = QueryBuilder(data, random_teacher(data))
    some = inference_queries(data, builder, Budget(1), max_users=5)
    every = inference_queries(data, builder, Budget(1))
    assert some["user"].tolist() == [0, 1, 2, 3, 4]
    assert some.equals(every.iloc[:5].reset_index(drop=True))  # the same pairs and texts, just fewer


def test_first_users_keeps_their_splits_and_the_catalogue(data):
    sub = first_users(data, 100)
    assert sub.name == "ml-100k-first100" and (sub.n_users, sub.n_items) == (100, data.n_items)
    for part in ("train", "valid", "test"):
        assert (getattr(sub, part) != getattr(data, part)[:100]).nnz == 0
    assert (sub.reviews["user"] < 100).all() and len(sub.users) == 100  # MovieLens: no reviews
    assert first_users(data, None) is data and first_users(data, 10_000) is data


def test_transfer_needs_a_finished_source_run(data, tmp_path, monkeypatch):
    from hnlm.semantic.hnlmrec.transfer import transfer_bank
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    with pytest.raises(MissingInputError, match="fine-tune on ml-100k first"):
        transfer_bank(first_users(data, 20), "ml-100k", RunConfig())


@pytest.mark.slow
@pytest.mark.xdist_group("finetuned_run")
def test_finished_run_is_reused_and_transfers_with_the_targets_own_teacher(data, finetuned_run, monkeypatch):
    """A finished fine-tuning run reloads without another step; its encoder then emits for ml-1m query
    pairs, whose CF signal comes from a teacher trained on ml-1m's training split; a rerun reuses the bank."""
    from hnlm.semantic.hnlmrec.infer import adapter_fingerprint
    from hnlm.semantic.hnlmrec.run import run_finetune
    from hnlm.semantic.hnlmrec.transfer import transfer_bank
    target = first_users(load_dataset("ml-1m", seed=0), 40)
    root, cfg, first = finetuned_run.artefacts, finetuned_run.config, finetuned_run.summary
    monkeypatch.setenv("HNLM_ARTIFACTS", str(root))
    again = run_finetune(data, cfg)  # transformers 5 alone would take a second step here
    folder = Path(first["folder"])
    assert first["steps"] == again["steps"] == 1 and again["finetune_reused"] and not first["finetune_reused"]
    assert [p.name for p in (folder / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]
    assert again["adapter"] == first["adapter"] == adapter_fingerprint(folder / "final")
    assert again["timings"]["s_per_step"] == first["timings"]["s_per_step"] and again["timings"]["queries"] == 2
    assert first["counts"]["truncated_queries"] > 0 and first["counts"]["held_out_for_quality"] == 4
    quality = first["finetune_quality"]
    assert quality["pairs"] == 4 and quality["candidates"] == 50 and -1 <= quality["emitted_mean_pairwise_cosine"] <= 1

    teacher = TeacherConfig(model="mf", epochs=1, batch_size=8192)
    bank, summary = transfer_bank(target, "ml-100k", replace(cfg, infer_users=3), teacher)
    assert bank.users.tolist() == [0, 1, 2] and bank.dim == 384 and summary["queries"] == 3
    assert all(int(i) in set(target.train_items(int(u)).tolist()) for u, i in zip(bank.users, bank.items))
    np.testing.assert_allclose(np.linalg.norm(bank.emb, axis=1), 1.0, atol=1e-4)
    own = Teacher.load(next(root.glob("ml-1m-first40/hnlmrec-transfer/*/split-0/teacher.npz")))
    assert own.meta["train_fingerprint"] == train_fingerprint(target) and own.user_emb.shape[0] == 40
    assert bank.meta["adapter"] == first["adapter"] and bank.meta["source_dataset"] == "ml-100k"
    assert summary["context_counts"]["user_history"] == 3

    path = next(root.glob("ml-1m-first40/hnlmrec-transfer/*/split-0/bank_per-user-1-users-3.npz"))
    stamp = path.stat().st_mtime_ns
    reused, _ = transfer_bank(target, "ml-100k", replace(cfg, infer_users=3), teacher)
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(reused.emb, bank.emb)
