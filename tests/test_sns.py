"""Module 2 (semantic negatives): budgets, prompts (training data only), title matching, grounding."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

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


def test_context_tag_changes_with_decoding_and_prompt_variant(data):
    greedy = sns.PromptBuilder(data, context="history")
    sampled = sns.PromptBuilder(data, context="history", decoding=sns.sampling_tag(0.8, 0.9, 1))
    pick = sns.PickPromptBuilder(data, context="history")
    assert len({greedy.tag, sampled.tag, pick.tag}) == 3
    assert greedy.tag.startswith("history|sns-") and greedy.tag.endswith("|greedy")
    assert sampled.tag.endswith("|sample-t0.8-p0.9-s1")
    assert sns.PromptBuilder(data, context="history").tag == greedy.tag


def test_reasoning_comes_before_the_title():
    assert list(sns.sns_schema()["properties"]) == ["reasoning", "hard_negative_item"]
    assert list(sns.pick_schema()["properties"]) == ["reasoning", "not_enjoy"]


def test_pairs_whose_item_has_no_profile_are_counted(data, monkeypatch):
    builder = sns.PromptBuilder(data, context="profile", profiles_llm="m")   # profiles are read on first use
    monkeypatch.setattr(sns, "profiles_of", lambda data, llm: ({1: "A profile."}, {}))
    pairs = pd.DataFrame({"user": [0, 0, 1], "item": [1, 2, 2]})
    assert builder.profile_fallbacks(pairs) == {"pairs_item_without_profile": 2, "items_without_profile": 1}
    assert sns.PromptBuilder(data, context="history").profile_fallbacks(pairs)["pairs_item_without_profile"] == 0


def test_candidate_lists_come_from_the_training_pool_without_the_users_items(data):
    builder = sns.PickPromptBuilder(data, context="history")
    pool = set(sns.training_pool(data).tolist())
    for user, item in [(0, int(data.train_items(0)[0])), (5, int(data.train_items(5)[1]))]:
        cands = builder.candidates(user, item)
        assert len(cands) == sns.PICK_CANDIDATES == len(set(cands.tolist()))
        assert set(cands.tolist()) <= pool and not set(cands.tolist()) & set(data.train_items(user).tolist())
        np.testing.assert_array_equal(cands, builder.candidates(user, item))  # seeded by pair
        text = builder.messages(user, item)[1]["content"]
        assert f"20. {sns.short_text(data, int(cands[-1]))}" in text


def test_picks_map_numbers_to_item_ids_and_quality_compares_with_the_control(data):
    from types import SimpleNamespace as R
    builder = sns.PickPromptBuilder(data, context="history")
    user, item = 0, int(data.train_items(0)[0])
    cands = builder.candidates(user, item)
    rec = builder.parse(R(ok=True, value={"reasoning": "r", "not_enjoy": [3, 3, 1, 25]}, reason=None), user, item)
    assert rec["ok"] and rec["picked"] == [int(cands[2]), int(cands[0])] and rec["out_of_range"] == 1
    assert not builder.parse(R(ok=False, value=None, reason="invalid json"), user, item)["ok"]
    held = data.heldout_items(user).tolist()
    listing = held[:1] + cands.tolist()[:19]
    frame = pd.DataFrame({"user": [user, user], "candidates": [listing] * 2, "picked": [held[:1], held[:1]]})
    q, control = sns.pick_quality(data, frame)
    chance = sum(j in set(held) for j in listing) / 20
    assert q["false_hard_negative_share"] == 1.0 and q["false_hard_negative_chance"] == pytest.approx(chance)
    assert q["distinct_negative_share"] == 0.5 and [len(c) for c in control] == [1, 1]


def test_similarity_measures_compare_generated_text_with_the_positives_short_text(data):
    rng = np.random.default_rng(0)
    short = rng.standard_normal((data.n_items, 8)).astype(np.float32)
    short /= np.linalg.norm(short, axis=1, keepdims=True)
    rec = pd.DataFrame({"user": [0, 1, 2], "item": [int(data.train_items(u)[0]) for u in range(3)],
                        "text": ["A", "a", "B"]})
    neg = short[rec["item"]]  # each text embeds exactly as its positive's short text
    nearest = np.array([5, 5, 6])
    q = sns.quality(data, rec, neg, short, nearest, nearest, np.array([[5], [5], [6]]))
    assert q["sim_to_positive_mean"] == pytest.approx(1.0, abs=1e-5)
    assert q["sim_random_item_to_positive_mean"] < 0.9 and q["sim_other_pairs_negative_to_positive_mean"] < 0.9
    assert q["distinct_texts_share"] == pytest.approx(2 / 3)
    assert q["distinct_nearest_items_share"] == pytest.approx(2 / 3)
    assert sns.short_text(data, 0).startswith(sns.title_of(data, 0))


def test_similarity_to_positive_per_negative_with_a_derangement_of_the_other_pairs():
    """Per negative: its product with its positive's short text; the "another pair's negative" baseline never
    uses the row's own negative."""
    short = np.eye(4, dtype=np.float32)
    neg = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 1]], np.float32)
    items = np.array([0, 1, 2])
    sim = sns.similarity_to_positive(neg, items, short, seed=3)
    assert sim["generated negative"] == pytest.approx([1.0, 0.8, 0.0])
    assert set(sim) == {"generated negative", "random item", "another pair's negative"}
    assert all(v in (0.0, 1.0) for v in sim["random item"])            # unit short texts: same item or not
    other = np.array([neg[r] @ short[items[k]] for k in range(3) for r in range(3) if r != k]).reshape(3, 2)
    assert all(sim["another pair's negative"][k] in other[k] for k in range(3))


def test_copy_filter_rejects_a_copy_of_a_training_item_and_never_sees_held_out_items(data):
    """The filter the generation path builds knows each user's training items and nothing else: naming one is a
    copy (exact or normalised title), naming a held-out (valid/test) item is not; only a sparse training matrix
    is accepted."""
    copies = sns.PromptBuilder(data, context="history", decoding=sns.SAMPLED.tag(0)).draw_filter
    titles = data.items["title"].fillna("")
    for user in range(data.n_users):
        train, held = data.train_items(user), data.heldout_items(user)
        assert sorted(copies.items(user).tolist()) == sorted(train.tolist())   # fails if handed valid/test items
        assert not set(copies.items(user).tolist()) & set(held.tolist())
    user = next(u for u in range(data.n_users)
                if any(len(sns.norm_title(titles[j])) >= 4 and not sns.names_any(titles[j], [
                    sns.norm_title(titles[t]) for t in data.train_items(u)]) for j in data.heldout_items(u)))
    liked = int(data.train_items(user)[0])
    assert copies.is_copy(user, sns.title_of(data, liked))                      # exact, with the year
    assert copies.is_copy(user, sns.norm_title(titles[liked]).upper() + ": more of the same")   # normalised
    assert sns.title_forms("Boot, Das (1981)") == ("das boot", "boot das")   # 'boot' alone: too short to match
    assert sns.title_forms("Die Hard (1988)") == ("die hard",)                  # not an article at the front
    assert sns.names_any("Secret Garden", list(sns.title_forms("Secret Garden, The (1993)")))   # article dropped
    assert sns.names_any("The Rainmaker", list(sns.title_forms("Rainmaker, The (1997)")))
    assert sns.names_any("Boot, Das (1981); a war film", list(sns.title_forms("Boot, Das (1981)")))
    held = next(int(j) for j in data.heldout_items(user) if len(sns.norm_title(titles[j])) >= 4 and not sns.names_any(
        titles[j], [sns.norm_title(titles[t]) for t in data.train_items(user)]))
    assert not copies.is_copy(user, sns.title_of(data, held))                   # held-out items are not its business
    with pytest.raises(TypeError, match="training interaction matrix"):
        sns.DrawFilter(data, list(titles))
    with pytest.raises(TypeError, match="training interaction matrix"):
        sns.DrawFilter(data.heldout_items(user), list(titles))


def test_draw_filter_rejects_texts_that_name_no_item_and_keeps_descriptions(data):
    """Genre words, a field name, a bare article or year and texts about the user name no item (read record by
    record in the qwen draws); a film's title or a description of an item is kept."""
    rules = sns.DrawFilter.of(data)
    user = 0
    for text in ["Drama", "Crime thriller", "Action Thriller Drama Sci-Fi War Children's Musical", "Reasoning",
                 "The", "The (1993)", "The 199", "The movie", "The user dislikes the genre Drama and Romance.",
                 "Romantic comedies", "Epic", "First Reasoning", "Psychological thrillers", "The movies",
                 "The movie is a crime thriller", "It's a science fiction film",
                 "I'm sorry, but I can't assist with that request.", "Bo", "The classic drama", "Dystopian future",
                 "Why not", "The novel", "Children's animated film", "Scifi"]:
        assert rules.reject_reason(user, text) == sns.NOT_ITEM_REASON, text
    for text in ["The Matrix", "The Walking Dead", "The psychological thriller set in a lighthouse",
                 "The documentary about a young woman who discovers she"]:
        assert rules.reject_reason(user, text) is None, text
    assert rules.reject_reason(user, sns.title_of(data, int(data.train_items(user)[0]))) == sns.COPY_REASON


def test_draw_filter_rejects_near_copies_part_of_or_misspelling_a_training_title():
    """Near-copies read in qwen's kept negatives: a part of a training title, a misspelt one, one word of one
    (as written, misspelt or cut short); other films, a shared short word and long descriptions that mention a
    title's words are not copies. The price of the one-word rule: a real other film named by one word of a
    training title ("Chocolat") is rejected too."""
    titles = ["Three Colors: Red (1994)", "Like Water for Chocolate (Como agua para chocolate) (1992)",
              "Immortal Beloved (1994)", "Incognito (1997)", "Lost World: Jurassic Park, The (1997)", "Matrix, The",
              "Net, The (1995)", "Interview with the Vampire (1994)", "Last of the Mohicans, The (1992)",
              "Dolores Claiborne (1994)", "Casablanca (1942)", "How to Make an American Quilt (1995)"]
    # every title is one of the user's training items
    rules = sns.DrawFilter(sp.csr_matrix(np.ones((1, len(titles)))), titles)
    for text in ["Three Colors", "Water For Chocolate", "Imortal Beloved", "The Inconognito", "The Lost World",
                 "Incognita", "Matrix", "Net", "The Vampire", "The Mohicans", "Claybourne", "Casab", "Colors",
                 "Chocolat", "The classic American Quilt"]:
        assert rules.is_copy(0, text), text
    for text in ["The Red Violin", "Fishing net", "Titanic", "The Birds", "Red", "The American adventure film",
                 "A quiet drama about three sisters, the colors of grief and water for chocolate lovers"]:
        assert not rules.is_copy(0, text), text


def test_sample_builders_tag_each_sample_with_its_seed_and_the_copy_filter(data):
    builders = sns.sample_builders(data, "history", None, 0, sns.Decoding(0.7, 0.9, 5, samples=3, tries=2))
    assert [b.sample for b in builders] == [0, 1, 2] and [b.draw_seed for b in builders] == [5, 6, 7]
    assert builders[1].tag.endswith(f"|sample-t0.7-p0.9-s6-nocopy2-{sns.COPY_FILTER}")
    assert all(b.tries == 2 for b in builders)
    assert sns.decoding_of("greedy") == sns.Decoding(0.0, 1.0, 0, 1, 0)
    assert sns.sample_builders(data, "history", None, 0, sns.GREEDY)[0].tag.endswith("|greedy")   # as shipped before
    assert sns.PromptBuilder(data, context="history").draw_filter is None
    assert sns.SAMPLED.samples >= 4 and sns.SAMPLED.temperature > 0 and sns.SAMPLED.tries >= 2


def test_greedy_decoding_refuses_several_samples(capsys):
    from hnlm.cli import main
    assert main(["sns", "--temperature", "0", "--samples", "2", "--no-generate"]) != 0
    assert "--samples > 1 needs --temperature > 0" in capsys.readouterr().err
