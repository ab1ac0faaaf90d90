"""The LLM as a judge of false negatives: its lists hold only unseen training-pool items and are built without
held-out data, its answers are constrained to the list (through the real grammar with SmolLM2), its ablations keep
each user's number of marks, the sampler vetoes or down-weights exactly the marked candidates, and the marks'
precision is measured on validation items against chance."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from hnlm.analysis.false_negatives import mark_precision, top_similar_marks
from hnlm.data import load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.methods import variant
from hnlm.methods.dnsmn_judge import JudgedDNSMN, JudgeSettings, random_marks, shuffled_marks, user_marks
from hnlm.semantic import judge, outputs
from hnlm.semantic.resources import JUDGE_MARKS, Resources
from hnlm.semantic.sns import training_pool
from hnlm.study.verify import verify


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


@pytest.mark.slow
def test_the_judge_answers_only_with_items_of_its_list(data, tmp_path):
    """Through the real constrained decoder: numbers off a 3-item list cannot be written."""
    config = judge.JudgeConfig(context="history", candidates=3)
    prompts = judge.JudgePrompts(data, config, None, random_lists(data, 3))
    backend = make_backend("smollm2-135m", batch_size=4, progress=False, cache_path=tmp_path / "cache.jsonl")
    users = [0, 1, 2, 3]
    results = backend.generate_json([prompts.user_messages(u) for u in users], prompts.json_schema(),
                                    max_new_tokens=prompts.max_new_tokens)
    assert all(r.ok for r in results)
    assert all(len(r.value["enjoy"]) == judge.JUDGE_MARKS and 1 <= n <= 3 for r in results for n in r.value["enjoy"])
    judge.generate_marks(backend, users, prompts, tmp_path)
    marks = judge.read_marks(tmp_path / "marks.jsonl", prompts.tag)
    assert sorted(marks["user"]) == users and marks["ok"].all() and (marks["out_of_range"] == 0).all()
    for u, cands, marked in zip(marks["user"], marks["candidates"], marks["marked"]):
        assert cands == prompts.lists[u].tolist() and set(marked) <= set(cands)
        assert 1 <= len(marked) <= judge.JUDGE_MARKS


def test_answers_become_item_ids_of_the_list_with_off_list_numbers_counted():
    ok = type("Result", (), {"ok": True, "value": {"reasoning": "r", "enjoy": [2, 9, 2, 1]}, "reason": None})
    listed = judge.shown([10, 11, 12], 4)
    rec = judge.parse_marks(ok, [10, 11, 12], 4)
    assert (rec["marked"], rec["repeated"], rec["out_of_range"]) == ([listed[1], listed[0]], 1, 1)
    assert rec["candidates"] == [10, 11, 12] and sorted(listed) == [10, 11, 12]
    assert len({tuple(judge.shown(list(range(20)), u)) for u in range(5)}) == 5   # each user's own order
    bad = type("Result", (), {"ok": False, "value": None, "reason": "invalid JSON"})
    assert judge.parse_marks(bad, [10], 0)["marked"] == [] and not judge.parse_marks(bad, [10], 0)["ok"]


def test_position_bias_counts_marks_among_the_first_numbers_shown():
    cands = list(range(20))
    first, last = judge.shown(cands, 3)[:3], judge.shown(cands, 3)[-3:]
    frame = pd.DataFrame({"user": [3, 3], "candidates": [cands, cands], "marked": [first, last]})
    assert judge.position_bias(frame) == {"marks": 6, "first_shown_share": 0.5, "chance": 0.15}


def test_missing_marks_name_the_command_that_makes_them(data):
    with pytest.raises(MissingInputError, match="hnlm judge --dataset ml-100k --llm smollm2-135m"):
        judge.obtain_marks(data, "smollm2-135m", judge.JudgeConfig(context="history"))


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
    frame = pd.DataFrame({"user": [2], "candidates": [[5, 6, 7]], "marked": [[6]]})
    assert user_marks(frame, 3) == ([[], [], [5, 6, 7]], [[], [], [6]])


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
def test_shipped_marks_are_found_by_key_without_the_teacher_or_artifacts(data, tmp_path, monkeypatch):
    """Records in artifacts/ ship with their prompt hashes; a clone without artifacts/ reads them back as they were
    (no teacher trained), an output of other settings is not used, and `hnlm outputs verify` rebuilds the shipped
    prompts from the records' lists and regenerates them (SmolLM2)."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    config, llm = judge.JudgeConfig(context="history"), "smollm2-135m"
    lists = random_lists(data)
    prompts = judge.JudgePrompts(data, config, None, lists)
    folder = judge.judge_dir(data.name, llm, "0")
    folder.mkdir(parents=True, exist_ok=True)
    ok = type("Result", (), {"ok": True, "value": {"reasoning": "r", "enjoy": [1, 3]}, "reason": None})
    with (folder / "marks.jsonl").open("w") as fh:
        for u in range(data.n_users):
            fh.write(json.dumps({"user": u, **prompts.parse_marks(ok, u), "context": prompts.tag}) + "\n")
    rows, _ = judge.records_to_ship(data, llm, prompts)
    assert rows[5]["prompt_sha"] == outputs.prompt_sha(prompts.user_messages(5))
    backend = make_backend(llm, progress=False)
    outputs.publish_records(judge.SHIPPED_KIND, data.name, llm, judge.shipped_slot(prompts, "0"), rows,
                            judge.shipped_key(data, backend, prompts, 0), {"dtype": "float32"})
    (folder / "marks.jsonl").unlink()
    marks = judge.obtain_marks(data, llm, config)
    assert len(marks) == data.n_users and marks["marked"][7] == [judge.shown(lists[7], 7)[k] for k in (0, 2)]
    with pytest.raises(MissingInputError, match="hnlm judge"):
        judge.obtain_marks(data, llm, judge.JudgeConfig(context="history", teacher="mf"))
    checked = verify(2, root=tmp_path / "outputs")
    assert len(checked) == 1 and checked[0]["regenerated"] == 2 and checked[0]["prompts_changed"] == 0


def test_the_registered_method_and_its_ablations_train_with_the_marks_they_say(data):
    lists = random_lists(data)
    frame = pd.DataFrame({"user": range(data.n_users), "candidates": [c.tolist() for c in lists],
                          "marked": [c[:1 + u % 3].tolist() for u, c in enumerate(lists)]})
    res = Resources({JUDGE_MARKS: frame})
    built = {name: variant(name).build(data, res, seed=1)[0]
             for name in ("dnsmn-judge", "dnsmn-judge-random", "dnsmn-judge-shuffled")}
    own = built["dnsmn-judge"].marks
    assert own[5, lists[5][0]] and own[5, lists[5][1]]
    assert own.sum(1).tolist() == [1 + u % 3 for u in range(data.n_users)]
    for name in ("dnsmn-judge-random", "dnsmn-judge-shuffled"):
        assert torch.equal(built[name].marks.sum(1), own.sum(1)) and not torch.equal(built[name].marks, own)
    assert variant("dnsmn-judge").needs() == (JUDGE_MARKS,)
