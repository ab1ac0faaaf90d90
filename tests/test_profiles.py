"""Module 1 profiles: prompts use training data only; generation, saving and loading with a real model."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from hnlm.data import load_dataset
from hnlm.errors import MissingInputError
from hnlm.semantic import profiles as pf
from hnlm.semantic.common import split_id_of, title_of


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def listed_titles(prompt: str) -> list[str]:
    return [line[2:].split(" [")[0] for line in prompt.splitlines() if line.startswith("- ")]


def test_no_heldout_item_reaches_a_user_prompt(data):
    builder = pf.ProfilePrompts(data, 0, item_profiles={i: f"profile <p{i}>" for i in range(data.n_items)})
    titles = [title_of(data, i) for i in range(data.n_items)]
    for user in range(data.n_users):
        shown, total = builder.history(user)
        train, held = set(data.train_items(user).tolist()), set(data.heldout_items(user).tolist())
        assert set(shown.tolist()) <= train and not set(shown.tolist()) & held
        assert len(shown) == min(total, pf.HISTORY_ITEMS) and total == len(train)
        prompt = builder.user_messages(user)[1]["content"]
        held_only = {titles[i] for i in held} - {titles[i] for i in train}
        assert not held_only & set(listed_titles(prompt)), user
        assert not any(f"<p{i}>" in prompt for i in held)


def test_user_prompt_does_not_change_when_heldout_data_changes(data):
    """Counterfactual: emptying valid/test (or swapping them) leaves every user prompt unchanged."""
    base = pf.ProfilePrompts(data, 0)
    empty = sp.csr_matrix(data.valid.shape, dtype=data.valid.dtype)
    altered = type(data)(data.name, data.train, empty, data.test.copy(), data.items, data.users,
                         data.reviews, data.stats)
    altered.valid, altered.test = data.test, empty
    other = pf.ProfilePrompts(altered, 0)
    for user in range(0, data.n_users, 7):
        assert base.user_messages(user) == other.user_messages(user)


def test_item_prompt_uses_training_reviews_only(data):
    import pandas as pd
    reviews = pd.DataFrame({"user": [0, 1, 2], "item": [5, 5, 5],
                            "review": ["train words alpha", "valid words beta", "test words gamma"],
                            "split": [0, 1, 2]})
    d = type(data)(data.name, data.train, data.valid, data.test, data.items, data.users, reviews, data.stats)
    text = pf.ProfilePrompts(d).item_messages(5)[1]["content"]
    assert "alpha" in text and "beta" not in text and "gamma" not in text


def test_history_selection_is_bounded_and_seeded(data):
    long_user = int(np.argmax(np.diff(data.train.indptr)))
    a, total = pf.ProfilePrompts(data, 0).history(long_user)
    b, _ = pf.ProfilePrompts(data, 0).history(long_user)
    c, _ = pf.ProfilePrompts(data, 1).history(long_user)
    assert total > pf.HISTORY_ITEMS and len(a) == pf.HISTORY_ITEMS
    assert (a == b).all() and not (a == c).all() and (np.diff(a) > 0).all()


@pytest.mark.slow
def test_generate_save_and_load_profiles(data, tmp_path, monkeypatch):
    from hnlm.llm.backends import make_backend
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    backend = make_backend("smollm2-135m", batch_size=3, progress=False, cache_path=tmp_path / "c.jsonl")
    schema = pf.profile_schema(summary_tokens=16, reasoning_tokens=6)
    items, counts = pf.generate_profiles(data, backend, "item", limit=3, schema=schema)
    assert counts["requested"] == 3 and counts["generated"] == 3 and counts["failed"] == 0
    assert items["ok"].all() and items["summarization"].str.len().gt(0).all()
    item_profiles = dict(zip(items["id"], items["summarization"]))
    users, ucounts = pf.generate_profiles(data, backend, "user", limit=2, schema=schema,
                                          item_profiles=item_profiles)
    assert ucounts["failed"] == 0 and users["ok"].all()
    pf.save_profiles(items, "ml-100k", "smollm2-135m", "item", "0")
    pf.save_profiles(users, "ml-100k", "smollm2-135m", "user", "0")
    ip, up = pf.load_profiles(data, "smollm2-135m")
    assert set(ip) == {0, 1, 2} and set(up) == {0, 1} and ip[0] == items["summarization"][0]
    pf.save_profiles(items.iloc[:1].assign(summarization="new"), "ml-100k", "smollm2-135m", "item", "0")
    merged, _ = pf.load_profiles(data, "smollm2-135m")
    assert set(merged) == {0, 1, 2} and merged[0] == "new"      # a limited run merges by id, loses nothing
    _, again = pf.generate_profiles(data, backend, "item", limit=3, schema=schema)
    assert again["cached"] == 3 and again["generated"] == 0
    with pytest.raises(Exception, match="hnlm profiles --dataset ml-100k"):
        pf.load_profiles(data, "no-such-llm")


def test_profiles_of_another_split_never_reach_a_run(data, tmp_path, monkeypatch):
    """Profiles made from split 0's training data hold split 1's held-out items, and those of the temporal split
    with seed 0: such runs must not read them (they ask for their own split's profiles, named by split id, and
    fail loudly when they do not exist; profile files record no fingerprint)."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    rows = pd.DataFrame({"id": [0, 1], "ok": [True, True], "summarization": ["a", "b"], "reasoning": ["", ""],
                         "reason": [None, None]})
    for kind in ("item", "user"):
        pf.save_profiles(rows, "ml-100k", "test-llm", kind, split_id_of(data))
    assert (tmp_path / "ml-100k/profiles/test-llm/items_split-0.jsonl").exists()  # the name the random split has
    assert pf.profiles_of(data, "test-llm")[0] == {0: "a", 1: "b"}
    with pytest.raises(MissingInputError, match="split-seed 1"):
        pf.profiles_of(load_dataset("ml-100k", seed=1), "test-llm")
    with pytest.raises(MissingInputError, match=r"items_split-0-temporal.jsonl; run: hnlm profiles --dataset ml-100k "
                                                r"--llm test-llm --split-seed 0 --split temporal$"):
        pf.profiles_of(load_dataset("ml-100k", seed=0, split="temporal"), "test-llm")
