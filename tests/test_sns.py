"""Module 2 (semantic negatives): budgets, prompts (training data only), title matching, grounding."""

import numpy as np
import pytest

from hnlm.data import load_dataset
from hnlm.errors import UserFacingError
from hnlm.semantic import sns
from hnlm.semantic.sns import Budget


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def test_budget_parse():
    assert Budget.parse("all").per_user is None
    assert Budget.parse("per-user:3").per_user == 3
    assert Budget.parse("per-user:3").tag == "per-user-3"
    for bad in ("per-user:0", "some", "per-user:x"):
        with pytest.raises(UserFacingError):
            Budget.parse(bad)


def test_pairs_are_training_pairs_and_budgets_nest(data):
    one = sns.select_pairs(data, Budget(1), seed=0)
    two = sns.select_pairs(data, Budget(2), seed=0)
    assert len(one) == data.n_users and len(two) == 2 * data.n_users
    assert np.all(np.asarray(data.train[one["user"], one["item"]]).ravel() == 1)
    assert set(zip(one.user, one.item)) <= set(zip(two.user, two.item))
    every = sns.select_pairs(data, Budget(None), seed=0)
    assert len(every) == data.train.nnz


def test_history_prompt_uses_training_items_only(data):
    builder = sns.PromptBuilder(data, context="history")
    titles = [sns.title_of(data, i) for i in range(data.n_items)]
    for user in range(20):
        item = int(data.train_items(user)[0])
        text = builder.messages(user, item)[1]["content"]
        train_titles = {titles[i] for i in data.train_items(user)}
        held = {titles[i] for i in data.heldout_items(user)} - train_titles
        assert titles[item] in text
        assert not any(f"{t};" in text or f"{t}." in text for t in held), user


def test_title_matching():
    assert sns.norm_title("Godfather, The (1972)") == "the godfather"
    assert sns.names_any("The Godfather: a mafia saga", ["the godfather"])
    assert not sns.names_any("Godfatherly advice", ["the godfather"])
    assert not sns.names_any("It is a film", ["it"])  # too short to count as a title


def test_parse_answer_cuts_to_twenty_words():
    class R:  # the fields of hnlm.llm.backends.GenerationResult that parse_answer reads
        def __init__(self, ok, value, reason=None):
            self.ok, self.value, self.reason = ok, value, reason
    long = " ".join(f"w{i}" for i in range(30))
    rec = sns.parse_answer(R(True, {"hard_negative_item": long, "reasoning": "r"}))
    assert rec["ok"] and rec["truncated"] and len(rec["text"].split()) == sns.MAX_WORDS
    assert not sns.parse_answer(R(True, {"hard_negative_item": " ", "reasoning": "r"}))["ok"]
    bad = sns.parse_answer(R(False, None, "invalid json"))
    assert not bad["ok"] and bad["reason"] == "invalid json"


def test_grounding_excludes_training_items(data):
    rng = np.random.default_rng(0)
    item_emb = rng.standard_normal((data.n_items, 8)).astype(np.float32)
    item_emb /= np.linalg.norm(item_emb, axis=1, keepdims=True)
    user = 0
    train = data.train_items(user)
    other = int(np.setdiff1d(np.arange(data.n_items), train)[0])
    # One negative identical to a training item, one identical to a non-training item.
    neg = item_emb[[int(train[0]), other]]
    nearest, sim, top, nearest_any = sns.ground(neg, np.array([user, user]), item_emb, data, pool=5)
    assert nearest_any[0] == train[0]
    assert nearest[0] not in set(train) and not set(top[0]) & set(train)
    assert nearest[1] == other and sim[1] == pytest.approx(1.0, abs=1e-5)


def test_negatives_of_another_prompt_context_are_not_reused(tmp_path):
    """A negative generated from training titles must not stand in for one generated from a profile."""
    import json
    from hnlm.semantic.sns import read_negatives
    path = tmp_path / "negatives.jsonl"
    rows = [{"user": 0, "item": 5, "ok": True, "text": "A", "context": "history"},
            {"user": 1, "item": 6, "ok": True, "text": "B", "context": "profile:qwen2.5-0.5b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"user": 2, "item"')  # torn tail
    assert read_negatives(path)["text"].tolist() == ["A", "B"]
    assert read_negatives(path, "history")["text"].tolist() == ["A"]
    assert read_negatives(path, "profile:qwen2.5-0.5b")["text"].tolist() == ["B"]
    assert read_negatives(path, "profile:smollm2-135m").empty
