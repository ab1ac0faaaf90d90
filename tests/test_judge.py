"""The LLM as a judge of false negatives: its lists hold only unseen training-pool items and are built without
held-out data; its yes/no scores (real SmolLM2) do not depend on the list's order, are deterministic, agree with a
plain forward pass, and cover every listed item; its marks are the top-scoring items of the list; its ablations
keep each user's number of marks, the sampler vetoes or down-weights exactly the marked candidates, and the marks'
precision is measured on validation items against chance."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from hnlm.analysis.false_negatives import mark_precision, top_similar_marks
from hnlm.cf.samplers import SamplerOptionError
from hnlm.data import load_dataset
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.backends import shared_prefix
from hnlm.methods import variant
from hnlm.methods.dnsmn_judge import JudgedDNSMN, JudgeSettings, random_marks, shuffled_marks, user_marks
from hnlm.semantic import judge, outputs
from hnlm.semantic.resources import JUDGE_SCORES, Resources
from hnlm.semantic.sns import training_pool
from hnlm.study.verify import _sample, verify


class HeldOut:
    """Stands in for the valid/test matrices: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"held-out data read ({name})")

    def __getitem__(self, key):
        raise AssertionError("held-out data read")


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def random_lists(data, n=judge.JUDGE_CANDIDATES, seed=0):
    rng = np.random.default_rng(seed)
    return judge.candidate_lists(data, rng.normal(size=(data.n_users, 8)), rng.normal(size=(data.n_items, 8)), n)


def test_lists_hold_the_best_scored_unseen_pool_items_and_read_no_heldout_data(data):
    blind = dataclasses.replace(data, valid=HeldOut(), test=HeldOut())
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(data.n_users, 8)), rng.normal(size=(data.n_items, 8))
    lists = judge.candidate_lists(blind, users, items, 20)
    pool = set(training_pool(data).tolist())
    for u in range(data.n_users):
        assert not set(lists[u]) & set(data.train_items(u).tolist()) and set(lists[u]) <= pool
        allowed = np.array(sorted(pool - set(data.train_items(u).tolist())))
        best = allowed[np.argsort(-(items[allowed] @ users[u]), kind="stable")[:20]]
        assert lists[u].tolist() == best.tolist()


@pytest.fixture(scope="module")
def smollm():
    """The judge's backend (float32: a prompt scored over its group's shared KV cache matches a forward pass of it
    alone)."""
    return judge.scoring_backend("smollm2-135m", progress=False)


@pytest.mark.slow
def test_scores_cover_the_list_whatever_its_order_and_repeat_exactly(data, smollm, tmp_path):
    """Real SmolLM2: a user's scores are the same, bit for bit, for its list in another order and on a second run,
    match a plain forward pass of each prompt alone, and every listed item's score is stored."""
    config = judge.JudgeConfig(context="history", candidates=6)
    lists = random_lists(data, 6)
    prompts = judge.JudgePrompts(data, config, None, lists)
    flipped = judge.JudgePrompts(data, config, None, {3: lists[3][::-1]})
    first, again = (smollm.yes_no_scores([prompts.user_prompts(3)]) for _ in range(2))
    reverse = smollm.yes_no_scores([flipped.user_prompts(3)])
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[0], reverse[0][::-1])
    assert len(set(first[0].tolist())) > 1   # the items are told apart
    tok, model, answers = smollm.tokenizer, smollm.model, smollm.answer_tokens()
    for k in (0, 5):
        ids = tok(smollm._render(prompts.user_prompts(3)[k]), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logp = model(ids["input_ids"]).logits[0, -1].float().log_softmax(-1)
        alone = float(logp[answers["yes"]].logsumexp(-1) - logp[answers["no"]].logsumexp(-1))
        assert first[0][k] == pytest.approx(alone, abs=1e-3)
    judge.score_users(smollm, [3, 4], prompts, tmp_path)
    records = judge.read_scores(tmp_path / "scores.jsonl", prompts.tag)
    assert sorted(records["user"]) == [3, 4]
    for u, cands, scores in zip(records["user"], records["candidates"], records["scores"]):
        assert cands == lists[u].tolist() and len(scores) == len(cands)
    assert records.set_index("user")["scores"][3] == pytest.approx(first[0].tolist())


def test_answer_tokens_and_the_shared_prefix(smollm):
    answers = smollm.answer_tokens()
    spelled = smollm.scoring()
    assert spelled["dtype"] == "float32"
    assert {w.strip() for w in spelled["yes"]} == {"Yes", "yes"} and {w.strip() for w in spelled["no"]} == {"No", "no"}
    assert not set(answers["yes"]) & set(answers["no"])
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2   # each keeps a token of its own
    assert shared_prefix([[7, 1], [8, 1]]) == 0


def test_a_server_backend_cannot_score_and_says_so_in_one_line():
    backend = judge.scoring_backend("openai:m@http://127.0.0.1:9/v1", progress=False)
    with pytest.raises(UserFacingError, match="scoring needs a local model"):
        backend.scoring()
    with pytest.raises(UserFacingError, match="scoring needs a local model"):
        backend.yes_no_scores([[[{"role": "user", "content": "x"}]]])


def test_marks_are_the_top_scoring_items_of_the_list_and_follow_the_teacher_measure():
    frame = pd.DataFrame({"user": [0, 1], "candidates": [[10, 11, 12, 13], [20, 21, 22, 23]],
                          "scores": [[0.1, 2.0, -1.0, 2.0], [3.0, 2.0, 1.0, 0.0]]})
    assert judge.top_marks(frame, 2) == [[11, 13], [20, 21]]    # ties in the teacher's order
    assert all(set(m) <= set(c) for m, c in zip(judge.top_marks(frame, 4), frame["candidates"]))
    agree = judge.teacher_agreement(frame)   # user 1 scores its list in the teacher's order, user 0 not
    assert agree["users"] == 2 and agree["share_positive"] == 0.5 and agree["mean_spearman"] < 1
    assert judge.teacher_agreement(frame[1:])["mean_spearman"] == pytest.approx(1.0)


def test_missing_scores_name_the_command_that_makes_them(data):
    with pytest.raises(MissingInputError, match="hnlm judge --dataset ml-100k --llm smollm2-135m"):
        judge.obtain_scores(data, "smollm2-135m", judge.JudgeConfig(context="history"))


def test_ablations_keep_each_users_number_of_marks():
    lists = [list(range(10 * u, 10 * u + 10)) for u in range(8)]
    marked = [lists[u][:u % 3] for u in range(8)]
    rand = random_marks(lists, marked, seed=3)
    assert [len(m) for m in rand] == [len(m) for m in marked]
    assert all(set(r) <= set(c) and len(set(r)) == len(r) for r, c in zip(rand, lists))
    assert rand != random_marks(lists, marked, seed=4) and rand == random_marks(lists, marked, seed=3)
    shuffled, kept = shuffled_marks(marked)
    assert [len(m) for m in shuffled] == [len(m) for m in marked] and kept == 0
    assert all(s != m for s, m in zip(shuffled, marked) if m) and shuffled == shuffled_marks(marked)[0]
    frame = pd.DataFrame({"user": [2], "candidates": [[5, 6, 7]], "scores": [[0.0, 1.0, -1.0]]})
    assert user_marks(frame, 3, 1) == ([[], [], [5, 6, 7]], [[], [], [6]])


def picks(sampler, pick, scores=(4.0, 3.0, 2.0, 1.0)):
    """User 0's candidates 0..3 with CF scores `scores`; the `pick`-th of the judged top-2."""
    users, cands = torch.tensor([0]), torch.tensor([[0, 1, 2, 3]])
    return sampler.select(users, cands, torch.tensor([scores]), torch.tensor([[pick]])).item()


def test_marked_candidates_are_vetoed_or_lowered_by_weight_sds():
    veto = JudgedDNSMN([[0], []], 4, JudgeSettings(candidates=4, top=2, mode="veto"))
    assert [picks(veto, p) for p in (0, 1)] == [1, 2]
    small = JudgedDNSMN([[0], []], 4, JudgeSettings(candidates=4, top=2, weight=0.5))   # sd 1.118: 4 -> 3.44
    assert [picks(small, p) for p in (0, 1)] == [0, 1]
    large = JudgedDNSMN([[0], []], 4, JudgeSettings(candidates=4, top=2, weight=2.0))   # 4 -> 1.76
    assert [picks(large, p) for p in (0, 1)] == [1, 2]
    c = large.counts()["judge"]
    assert (c["pairs"], c["pairs_with_marked_candidate"], c["topn_changed"], c["picks_changed"]) == (2, 2, 2, 1)


def test_precision_counts_validation_hits_against_the_lists_chance(data):
    valid = [data.valid.indices[data.valid.indptr[u]:data.valid.indptr[u + 1]].tolist() for u in (0, 1)]
    unseen = [[j for j in range(data.n_items) if j not in valid[u] and data.test[u, j] == 0][:3] for u in (0, 1)]
    lists = [[valid[0][0], *unseen[0]], [valid[1][0], *unseen[1]]]   # one validation item in each list of 4
    out = mark_precision(data, [0, 1], lists, [[valid[0][0], unseen[0][0]], [unseen[1][0]]])
    assert (out["marks"], out["valid_hits"], out["users_with_marks"]) == (3, 1, 2)
    assert out["precision"] == pytest.approx(1 / 3) and out["chance"] == pytest.approx(0.25)
    blind = dataclasses.replace(data, test=HeldOut())
    assert mark_precision(blind, [0], lists[:1], [[]])["marks"] == 0
    assert top_similar_marks([[7, 8, 9]], [2], [[0.1, 0.9, 0.5]]) == [[8, 9]]


@pytest.mark.slow
def test_shipped_scores_are_found_by_key_without_the_teacher_or_artifacts(data, tmp_path, monkeypatch):
    """Records in artifacts/ ship with the hash of their prompts; a clone without artifacts/ reads them back as
    they were (no teacher trained), an output of other settings is not used, and `hnlm outputs verify` rebuilds
    the shipped prompts from the records' lists and scores them again: the same scores (SmolLM2, real for the
    users verify samples)."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    config, llm = judge.JudgeConfig(context="history"), "smollm2-135m"
    lists = random_lists(data)
    prompts = judge.JudgePrompts(data, config, None, lists)
    backend = judge.scoring_backend(llm, progress=False)
    sampled = [int(u) for u in _sample(data.n_users, 2, 0)]
    real = dict(zip(sampled, backend.yes_no_scores([prompts.user_prompts(u) for u in sampled])))
    folder = judge.judge_dir(data.name, llm, "0")
    with (folder / "scores.jsonl").open("w") as fh:
        for u in range(data.n_users):
            scores = real[u].tolist() if u in real else np.linspace(1, -1, len(lists[u])).tolist()
            fh.write(json.dumps({"user": u, "candidates": lists[u].tolist(), "scores": scores,
                                 "context": prompts.tag}) + "\n")
    rows, _ = judge.records_to_ship(data, llm, prompts)
    assert rows[5]["prompt_sha"] == outputs.prompt_sha(prompts.user_prompts(5))
    outputs.publish_records(judge.SHIPPED_KIND, data.name, llm, judge.shipped_slot(prompts, "0"), rows,
                            judge.shipped_key(data, backend, prompts, 0), {"dtype": "float32"})
    (folder / "scores.jsonl").unlink()
    scores = judge.obtain_scores(data, llm, config)
    assert len(scores) == data.n_users and scores["candidates"][7] == lists[7].tolist()
    assert scores["scores"][sampled[0]] == real[sampled[0]].tolist()
    with pytest.raises(MissingInputError, match="hnlm judge"):
        judge.obtain_scores(data, llm, judge.JudgeConfig(context="history", teacher="mf"))
    checked = verify(2, root=tmp_path / "outputs")
    assert len(checked) == 1 and checked[0]["regenerated"] == 2 and checked[0]["prompts_changed"] == 0
    assert checked[0]["max_score_difference"] == 0.0 and checked[0]["same_top_marks"] == 2


def test_the_registered_method_and_its_ablations_train_with_the_marks_they_say(data):
    lists = random_lists(data)
    scores = [np.where(np.arange(20) == (u % 20), 5.0, -np.arange(20) / 10) for u in range(data.n_users)]
    frame = pd.DataFrame({"user": range(data.n_users), "candidates": [c.tolist() for c in lists],
                          "scores": [s.tolist() for s in scores]})
    res = Resources({JUDGE_SCORES: frame})
    for marks in (1, 4):
        built = {name: variant(name, marks=marks).build(data, res, seed=1)[0]
                 for name in ("dnsmn-judge", "dnsmn-judge-random", "dnsmn-judge-shuffled")}
        own = built["dnsmn-judge"].marks
        for u in (0, 5):   # the item scored 5.0, then the teacher's best of the others
            top = [lists[u][u % 20], *[j for j in lists[u] if j != lists[u][u % 20]][:marks - 1]]
            assert own[u].nonzero()[:, 0].tolist() == sorted(top)
        assert own.sum(1).tolist() == [marks] * data.n_users
        for name in ("dnsmn-judge-random", "dnsmn-judge-shuffled"):
            assert torch.equal(built[name].marks.sum(1), own.sum(1)) and not torch.equal(built[name].marks, own)
    assert variant("dnsmn-judge").needs() == (JUDGE_SCORES,)
    with pytest.raises(SamplerOptionError, match="marks"):
        variant("dnsmn-judge", marks=0).build(data, res, seed=1)
