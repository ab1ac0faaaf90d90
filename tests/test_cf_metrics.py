"""Full-ranking metrics against hand-computed cases."""

import math
import warnings

import pytest

from hnlm.cf.evaluate import evaluate, metric_summary, require_targets
from hnlm.errors import DegenerateDatasetError
from tests.cf_helpers import fixed_scores_model, tiny_data

L2 = math.log2


@pytest.fixture
def case():
    # user 0: train {0}, valid {2}, test {1, 3}; user 1: test {5} only; user 2: no test items.
    data = tiny_data(train={0: [0], 1: [0], 2: [1]}, valid={0: [2], 2: [0]}, test={0: [1, 3], 1: [5]},
                     n_users=3, n_items=6)
    model = fixed_scores_model([[10, 5, 4, 3, 2, 1],
                                [9, 1, 2, 0, 3, 2.5],   # ranking after masking item 0: 4, 5, 2, 1, 3
                                [1, 1, 1, 1, 1, 1]])
    return data, model


def test_valid_ranking_masks_train_only(case):
    data, model = case
    # valid: user 0 ranks 1, 2, 3 (2 is its valid item, at rank 2); user 2 ranks everything but item 1,
    # valid item 0 ties with the others (ties resolved by topk; only its count matters here).
    res = evaluate(model, data, "valid", ks=(2, 3))
    assert res["n_users"] == 2
    assert res["users"] == [0, 2]
    assert res["per_user"]["recall@2"][0] == pytest.approx(1.0)
    assert res["per_user"]["ndcg@2"][0] == pytest.approx(1 / L2(3))


def test_test_metrics_hand_computed(case):
    data, model = case
    res = evaluate(model, data, "test", ks=(2, 3))
    # user 2 has no test item: excluded from the averages.
    assert res["users"] == [0, 1]
    # user 0: train 0 and valid 2 masked -> ranking 1, 3, 4, 5; both test items in the top 2.
    # user 1: train 0 masked -> ranking 4, 5, 2, ...; its single test item 5 at rank 2.
    per = res["per_user"]
    assert per["recall@2"].tolist() == pytest.approx([1.0, 1.0])
    assert per["ndcg@2"].tolist() == pytest.approx([1.0, (1 / L2(3)) / 1.0])
    assert per["precision@2"].tolist() == pytest.approx([1.0, 0.5])
    assert per["hit@2"].tolist() == pytest.approx([1.0, 1.0])
    # K = 3 with fewer test items than K: IDCG over min(|test|, K) items.
    assert per["ndcg@3"].tolist() == pytest.approx([1.0, 1 / L2(3)])
    assert per["precision@3"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert res["recall@2"] == pytest.approx(1.0)
    assert res["ndcg@2"] == pytest.approx((1 + 1 / L2(3)) / 2)


def test_partial_hits_and_ndcg_discount():
    # one user, test {1, 3}, ranking 1, 2, 3, 4, 5 (item 0 is train)
    data = tiny_data(train={0: [0]}, valid={}, test={0: [1, 3]}, n_users=1, n_items=6)
    model = fixed_scores_model([[10, 5, 4, 3, 2, 1]])
    res = evaluate(model, data, "test", ks=(1, 2, 3))
    idcg2 = 1 + 1 / L2(3)
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["ndcg@2"] == pytest.approx(1 / idcg2)
    assert res["recall@3"] == pytest.approx(1.0)
    assert res["ndcg@3"] == pytest.approx((1 + 1 / L2(4)) / idcg2)
    assert res["hit@1"] == 1.0 and res["precision@3"] == pytest.approx(2 / 3)


def test_list_statistics():
    # popularity (train counts): item 0: 2, item 1: 1, others 0. Head = ceil(20% of 6 items) = items 0 and 1.
    data = tiny_data(train={0: [0], 1: [0, 1]}, valid={}, test={0: [2], 1: [3]}, n_users=2, n_items=6)
    model = fixed_scores_model([[0, 9, 8, 7, 1, 0], [0, 0, 1, 9, 8, 0]])
    res = evaluate(model, data, "test", ks=(2,))
    # top-2: user 0 -> 1, 2; user 1 -> 3, 4 (train items masked); item 1 is the one head item listed
    assert res["coverage@2"] == pytest.approx(4 / 6)
    assert res["mean_popularity@2"] == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert res["longtail_share@2"] == pytest.approx(3 / 4)


def test_split_name_checked(case):
    data, model = case
    with pytest.raises(ValueError, match="split must be 'valid' or 'test', not 'train'"):
        evaluate(model, data, "train")


def test_a_user_without_hits_scores_zero_and_the_summary_drops_per_user_data(case):
    data, model = case
    res = evaluate(model, data, "valid", ks=(1,))
    # valid: user 0 ranks item 1 first (its valid item 2 is second); user 2's top item ties, so only K = 1 misses
    assert res["per_user"]["hit@1"][0] == 0.0 and res["per_user"]["recall@1"][0] == 0.0
    assert res["per_user"]["ndcg@1"][0] == 0.0 and res["split"] == "valid"
    summary = metric_summary(res)
    assert "per_user" not in summary and "users" not in summary
    assert summary["split"] == "valid" and summary["n_users"] == 2 and summary["hit@1"] == res["hit@1"]


def test_split_without_targets_keeps_every_key_as_nan():
    # nobody has a valid item: the ranking metrics exist (NaN) with a users count of 0, not missing keys
    data = tiny_data(train={0: [0], 1: [1]}, valid={}, test={0: [2]}, n_users=2, n_items=4)
    model = fixed_scores_model([[4, 3, 2, 1], [1, 2, 3, 4]])
    res = evaluate(model, data, "valid", ks=(2,))
    assert res["n_users"] == 0 and res["users"] == []
    for name in ("recall@2", "ndcg@2", "hit@2", "precision@2", "mean_popularity@2", "longtail_share@2"):
        assert math.isnan(res[name]), name
        assert len(res["per_user"].get(name, [])) == 0
    assert set(res["per_user"]) == {"recall@2", "ndcg@2", "hit@2", "precision@2"}
    assert res["coverage@2"] == 0.0


def test_split_without_targets_emits_no_runtime_warning():
    data = tiny_data(train={0: [0], 1: [1]}, valid={}, test={0: [2]}, n_users=2, n_items=4)
    model = fixed_scores_model([[4, 3, 2, 1], [1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "Mean of empty slice" from averaging zero users
        res = evaluate(model, data, "valid", ks=(2,))
    assert math.isnan(res["recall@2"])


def test_k_beyond_the_item_count_ranks_every_item():
    # 4 items, K = 5: the list holds all 4 (train item 0 last); test item 2 at rank 2
    data = tiny_data(train={0: [0]}, valid={}, test={0: [2]}, n_users=1, n_items=4)
    model = fixed_scores_model([[4, 3, 2, 1]])
    res = evaluate(model, data, "test", ks=(5,))
    assert res["recall@5"] == 1.0 and res["hit@5"] == 1.0
    assert res["ndcg@5"] == pytest.approx(1 / L2(3))
    assert res["precision@5"] == pytest.approx(1 / 5)
    assert res["coverage@5"] == 1.0


def test_require_targets_refuses_an_empty_split_and_accepts_one_item_each():
    require_targets(tiny_data(train={0: [0]}, valid={0: [1]}, test={0: [2]}, n_users=1, n_items=3))
    empty_valid = tiny_data(train={0: [0]}, valid={}, test={0: [2]}, n_users=1, n_items=3)
    with pytest.raises(DegenerateDatasetError, match=r"^dataset 'tiny': no user has an item in split 'valid'"):
        require_targets(empty_valid)
