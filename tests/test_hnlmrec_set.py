"""HNLMRec fine-tuning set: training split only, guard, loss (no LLM needed)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hnlm.data import load_dataset
from hnlm.semantic.hnlmrec.model import contrastive_loss
from hnlm.semantic.hnlmrec.queries import MiningConfig, QueryBuilder, build_examples
from hnlm.semantic.sns import Budget
from tests.hnlmrec_helpers import random_teacher


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def without_heldout(data, seed=1):
    """The same training split with valid/test replaced by random other items."""
    import dataclasses
    rng = np.random.default_rng(seed)
    fake = sp.random(data.n_users, data.n_items, density=0.01, format="csr", random_state=rng)
    fake.data[:] = 1
    return dataclasses.replace(data, valid=fake, test=fake.copy())


def examples(data, teacher, signal="text", n_users=120):
    ex, counts = build_examples(data, teacher, QueryBuilder(data, teacher, signal), Budget(2), MiningConfig())
    return ex[ex.user < n_users].reset_index(drop=True), counts


def test_examples_use_training_pairs_and_unseen_negatives(data):
    ex, counts = examples(data, random_teacher(data))
    assert counts["with_negative"] == counts["pairs"] == 2 * data.n_users
    for u, i, n in zip(ex.user, ex.item, ex.neg):
        train = set(data.train_items(u).tolist())
        assert i in train and n not in train


def test_no_heldout_information_reaches_the_set(data):
    """Valid/test contents cannot change a single example or query text."""
    teacher = random_teacher(data)
    a, _ = examples(data, teacher)
    b, _ = examples(without_heldout(data), teacher)
    assert a.equals(b)
    # and the queries never name a user's held-out item as the interacted one
    for u, i in zip(a.user, a.item):
        assert i not in set(data.heldout_items(u).tolist())


def test_guard_skips_top_scored_candidates(data):
    teacher = random_teacher(data)
    cfg = MiningConfig(candidates=200, guard_top=0.05)
    ex, counts = examples(data, teacher)
    assert counts["candidates_removed_by_guard"] > 0
    for u, n in zip(ex.user[:50], ex.neg[:50]):
        s = teacher.scores(u)
        unseen = np.setdiff1d(np.arange(data.n_items), data.train_items(u))
        assert s[n] < np.quantile(s[unseen], 1 - cfg.guard_top)


def test_text_signal_names_rank_and_neighbours(data):
    teacher = random_teacher(data)
    text = QueryBuilder(data, teacher, "text").text(0, int(data.train_items(0)[0]))
    assert "top" in text and "closest" in text
    soft = QueryBuilder(data, teacher, "soft").text(0, int(data.train_items(0)[0]))
    assert "embedding tokens" in soft


def test_contrastive_loss_hand_computed():
    """-mean over every (i, j) of log sigmoid((cos(q_i, p_i) - cos(q_i, n_j)) / tau): all in-batch n_j, not
    only n_i. q = (e1, e2) (scaled: cosines ignore norms), p = (e1, (e1 + e2) / sqrt2), n = (e2, -e1)."""
    q = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    n = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    c, tau = 1 / math.sqrt(2), 0.5
    margins = [(1 - 0) / tau, (1 + 1) / tau,      # q_1: cos to p_1 is 1; to n_1 0, to n_2 -1
               (c - 1) / tau, (c - 0) / tau]      # q_2: cos to p_2 is 1/sqrt2; to n_1 1, to n_2 0
    expected = sum(math.log1p(math.exp(-m)) for m in margins) / 4
    assert float(contrastive_loss(q, p, n, tau, objective="paper")) == pytest.approx(expected, rel=1e-6)
    # InfoNCE: each query against every target and every interacted item, its own target the right class
    rows = [([1, c, 0, -1], 0),                   # q_1: cos to p_1, p_2, n_1, n_2
            ([0, c, 1, 0], 1)]                    # q_2
    infonce = sum(math.log(sum(math.exp(v / tau) for v in row)) - row[k] / tau for row, k in rows) / 2
    assert float(contrastive_loss(q, p, n, tau, objective="infonce")) == pytest.approx(infonce, rel=1e-6)


@pytest.mark.slow
def test_teacher_ignores_validation(data):
    """The teacher trains a fixed number of epochs: valid/test contents do not change it."""
    from hnlm.semantic.hnlmrec.run import TeacherConfig, train_teacher
    cfg = TeacherConfig(model="mf", epochs=1)
    a = train_teacher(data, cfg)
    b = train_teacher(without_heldout(data), cfg)
    # equal up to float summation order (two runs on the same data differ by ~1e-7 too)
    np.testing.assert_allclose(a.user_emb, b.user_emb, atol=1e-5)
    np.testing.assert_allclose(a.item_emb, b.item_emb, atol=1e-5)


def test_train_method_reads_the_emitted_bank(data, tmp_path, monkeypatch):
    """`hnlm train --sampler hnlmrec --hnlmrec-run run-abc` finds that run's bank (fingerprinted) and wraps it in
    module 3; without a run of the asked settings, the error names the fine-tune."""
    import json

    from hnlm.errors import MissingInputError
    from hnlm.methods import variant
    from hnlm.semantic.alignment import AlignmentExtension
    from hnlm.semantic.common import train_fingerprint
    from hnlm.semantic.hnlmrec.run import run_dir
    from hnlm.semantic.resources import provide_inputs
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    method = variant("hnlmrec")
    with pytest.raises(MissingInputError, match="hnlm finetune"):
        method.build(data, provide_inputs(data, "smollm2-135m"), 0)
    folder = run_dir(data.name, "smollm2-135m", "text", "per-user:1", "0") / "run-abc"
    folder.mkdir()
    users = np.arange(data.n_users)
    items = np.array([data.train_items(u)[0] for u in users])
    emb = np.random.default_rng(0).standard_normal((len(users), 384)).astype(np.float32)
    np.savez(folder / "bank_per-user-1.npz", users=users, items=items, emb=emb)
    (folder / "bank_per-user-1.json").write_text(json.dumps(
        {"adapter": "x", "train_fingerprint": train_fingerprint(data)}))
    sampler, ext = method.build(data, provide_inputs(data, "smollm2-135m", hnlmrec_run="run-abc"), 0)
    assert isinstance(ext, AlignmentExtension) and sampler is not None
    np.testing.assert_array_equal(ext.bank.emb, emb)
    assert ext.bank.source == "hnlmrec:smollm2-135m:text" and ext.bank.meta["run"] == "run-abc"


def test_a_finished_run_is_refused_for_another_split(data, tmp_path, monkeypatch):
    """A run's folder is named by split id (the random split's keeps its name), so the temporal split with the
    same seed finds none; under one name, the fingerprint its bank and summary record must be the data's."""
    import dataclasses
    import json
    import re

    from hnlm.errors import MissingInputError
    from hnlm.semantic.common import OtherSplitError, train_fingerprint
    from hnlm.semantic.hnlmrec.run import RunConfig, finished_summary, load_bank, run_dir
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    folder = run_dir(data.name, "smollm2-135m", "text", "per-user:1", "0") / "run-abc"
    assert folder == tmp_path / "ml-100k/hnlmrec/smollm2-135m-text-per-user-1/split-0/run-abc"
    folder.mkdir()
    np.savez(folder / "bank_per-user-1.npz", users=[0], items=[data.train_items(0)[0]], emb=np.ones((1, 4), np.float32))
    (folder / "bank_per-user-1.json").write_text(json.dumps({"adapter": "x", "train_fingerprint":
                                                             train_fingerprint(data)}))
    cfg = RunConfig()
    summary = {"steps": cfg.finetune.max_steps, "teacher": {"train_fingerprint": train_fingerprint(data)}}
    (folder / "summary.json").write_text(json.dumps(summary))
    args = ("smollm2-135m", "text", "per-user:1", "per-user:1", "run-abc")
    assert len(load_bank(data, *args)) == 1 and finished_summary(data, folder, cfg)["finetune_reused"]

    temporal = load_dataset("ml-100k", seed=0, split="temporal")
    with pytest.raises(MissingInputError, match=r"split-0-temporal/run-abc/bank_per-user-1.npz is missing: run "
                                                r"`hnlm finetune .*--split-seed 0 --split temporal` first"):
        load_bank(temporal, *args)
    other = dataclasses.replace(data, train=data.train[::-1].tocsr())  # same split id, other training pairs
    regenerate = re.escape(f"`rm -r {folder} && hnlm finetune --dataset ml-100k --llm smollm2-135m --cf-signal text")
    with pytest.raises(OtherSplitError, match=re.escape(f"{folder / 'bank_per-user-1.npz'} was made from another "
                                                        f"training split") + f".*{regenerate}.*--split-seed 0`$"):
        load_bank(other, *args)
    with pytest.raises(OtherSplitError, match=re.escape(f"{folder / 'summary.json'} was made from another")):
        finished_summary(other, folder, cfg)


def test_train_inputs_take_the_run_of_their_settings_not_the_latest(data, tmp_path, monkeypatch):
    """`hnlm train`'s provider reads module 4's bank from the finished run whose settings are asked for (here
    `hnlm finetune`'s defaults), not from a newer run with other settings; with none, one line names the
    fine-tune that makes it."""
    import json

    from hnlm.errors import MissingInputError
    from hnlm.semantic.bank import NegativeBank
    from hnlm.semantic.common import train_fingerprint
    from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
    from hnlm.semantic.hnlmrec.run import RunConfig, bank_files, run_folder
    from hnlm.semantic.resources import hnlmrec_bank, provide_inputs
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    default_steps = FinetuneConfig().max_steps
    for steps in (default_steps, 3):      # the default settings' run, then a newer run with other settings
        cfg = RunConfig(finetune=FinetuneConfig(llm="smollm2-135m", max_steps=steps))
        folder = run_folder(data.name, cfg, "0")
        npz, meta = bank_files(folder, cfg)
        NegativeBank(np.full((1, 4), steps, np.float32), [0], [int(data.train_items(0)[0])], "test").save(npz)
        meta.write_text(json.dumps({"adapter": "x", "train_fingerprint": train_fingerprint(data)}))
        (folder / "summary.json").write_text(json.dumps({"steps": steps, "teacher": {
            "train_fingerprint": train_fingerprint(data)}}))
    inputs = provide_inputs(data, "smollm2-135m")
    assert inputs[hnlmrec_bank("text")].emb[0, 0] == default_steps
    with pytest.raises(MissingInputError, match=r"no soft bank of these settings .*run `hnlm finetune --dataset "
                                                r"ml-100k --llm smollm2-135m --cf-signal soft"):
        inputs[hnlmrec_bank("soft")]


def test_long_queries_lose_the_middle_of_their_user_part_and_are_counted(data):
    from hnlm.llm.models import load_causal_lm
    _, tok = load_causal_lm("smollm2-135m", device="cpu")
    teacher = random_teacher(data)
    free = QueryBuilder(data, teacher, "text")
    full = free.text(0, int(data.train_items(0)[0]))
    n_full = len(tok(full)["input_ids"])
    fitted = QueryBuilder(data, teacher, "text").fit_to(tok, n_full - 10)
    cut = fitted.text(0, int(data.train_items(0)[0]))
    assert len(tok(cut)["input_ids"]) <= n_full - 10
    assert " [...] " in cut
    tail = full[full.index("Collaborative signal"):]
    assert cut.endswith(tail)  # CF signal and final cue kept whole
    assert cut.startswith(full[:full.index("User profile:") + len("User profile:") + 5])
    assert fitted.counts["truncated_queries"] == 1 and fitted.counts["truncated_tokens"] >= 10
    short = QueryBuilder(data, teacher, "text").fit_to(tok, n_full)
    assert short.text(0, int(data.train_items(0)[0])) == full and short.counts["truncated_queries"] == 0


def test_items_without_a_profile_are_counted(data):
    teacher = random_teacher(data)
    builder = QueryBuilder(data, teacher, "text", item_profiles={1: "A profile."})
    builder.text(0, 1)
    builder.text(0, 2)
    assert builder.counts["item_without_profile_genres_used"] == 1
