"""Analysis helpers on hand-computed cases and on the real ml-100k split."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from hnlm.analysis import convergence, false_negatives, popularity, significance, sparsity
from hnlm.analysis.data_stats import dataset_row, top_items
from hnlm.data import load_dataset


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k", seed=0)


# ----------------------------------------------------------------------------------- significance

def test_paired_test_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.30, 0.02, 20)
    b = a - rng.normal(0.01, 0.01, 20)
    out = significance.paired_test(a, b)
    assert out["n"] == 20
    assert out["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert out["mean_diff"] == pytest.approx((a - b).mean())
    assert out["t_p"] < 0.05


def test_paired_test_edge_cases():
    same = significance.paired_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["t_p"] == 1.0 and same["wilcoxon_p"] == 1.0 and "identical" in same["note"]
    one = significance.paired_test([0.1], [0.2])
    assert one["n"] == 1 and np.isnan(one["t_p"]) and np.isnan(one["wilcoxon_p"]) and one["note"]
    nan = significance.paired_test([0.1, np.nan, 0.3, 0.5], [0.2, 0.2, 0.1, 0.4])
    assert nan["n"] == 3 and nan["note"] is None
    with pytest.raises(ValueError):
        significance.paired_test([1, 2], [1, 2, 3])


@pytest.mark.parametrize("n", [2, 3])
def test_constant_difference_gives_no_t_test_p_value(n):
    """One method ahead by the same amount on every seed: the differences have no variance, so there is no
    t statistic; p = 0 from two or three numbers would be a false certainty. Wilcoxon's exact p is 2 / 2**n."""
    b = np.array([0.1, 0.2, 0.3][:n])
    out = significance.paired_test(b + 0.1, b)
    assert np.isnan(out["t_stat"]) and np.isnan(out["t_p"]) and "zero variance" in out["note"]
    assert out["wilcoxon_p"] == pytest.approx(2 / 2 ** n) and out["mean_diff"] == pytest.approx(0.1)


def _runs():
    rows = []
    for seed, (r, d, s) in enumerate([(0.30, 0.33, 0.35), (0.31, 0.34, 0.36), (0.29, 0.32, 0.37)]):
        rows += [{"method": "rns", "backbone": "lightgcn", "seed": seed, "recall@20": r},
                 {"method": "dns", "backbone": "lightgcn", "seed": seed, "recall@20": d},
                 {"method": "new", "backbone": "lightgcn", "seed": seed, "recall@20": s}]
    return pd.DataFrame(rows)


def test_summary_table_and_comparison():
    runs = _runs()
    summary = significance.summarise(runs, ["recall@20"])
    dns = summary[summary["method"] == "dns"].iloc[0]
    assert dns["recall@20 mean"] == pytest.approx(0.33) and dns["seeds"] == 3
    assert dns["recall@20 std"] == pytest.approx(np.std([0.33, 0.34, 0.32], ddof=1))
    table = significance.mean_std_table(runs, ["recall@20"])
    assert table.loc[table["method"] == "rns", "recall@20"].item() == "0.3000 ± 0.0100"
    assert significance.best_method(runs, "recall@20", ["rns", "dns"]) == "dns"
    per_user = {(m, s): np.full(5, v) + np.arange(5) * 0.01 for m, s, v in
                runs[["method", "seed", "recall@20"]].itertuples(index=False)}
    cmp = significance.compare(runs, "recall@20", "new", "dns", per_user)
    assert cmp["relative_gain"] == pytest.approx((0.36 - 0.33) / 0.33)
    assert cmp["over_seeds"]["n"] == 3 and cmp["bootstrap"]["users"] == 5 and cmp["bootstrap"]["seeds"] == 3
    assert cmp["bootstrap"]["mean_diff"] == pytest.approx(0.03)
    low, high = cmp["relative_gain_ci"]
    assert low <= cmp["relative_gain"] <= high


def test_bootstrap_counts_seed_variance_that_a_per_user_test_hides():
    """Seeds that disagree (+0.1, -0.1, +0.1 for every user): averaged over seeds every user gains 0.033, which a
    per-user test would call certain; resampling seeds too gives an interval that holds 0 and a large p."""
    signs = np.array([1.0, -1.0, 1.0])[:, None]
    a, b = 0.3 + 0.1 * signs * np.ones((3, 50)), np.full((3, 50), 0.3)
    boot = significance.paired_bootstrap(a, b)
    assert boot["mean_diff"] == pytest.approx(0.1 / 3)
    assert boot["ci_low"] < 0 < boot["ci_high"] and boot["p"] > 0.2
    assert significance.paired_test(a.mean(0), b.mean(0))["note"]       # zero variance over users: no honest t


def test_bootstrap_of_a_consistent_gain():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.4, size=(5, 200))
    a = b + 0.02 + rng.normal(0, 0.01, size=b.shape)
    boot = significance.paired_bootstrap(a, b)
    assert boot["ci_low"] > 0.015 and boot["ci_high"] < 0.025 and boot["p"] == pytest.approx(2 / 2000)
    assert boot["ci_low"] < boot["mean_diff"] < boot["ci_high"]
    one = significance.paired_bootstrap(a[:1], b[:1])
    assert np.isnan(one["p"]) and one["note"]


# ------------------------------------------------------------------------------------- popularity

def test_gini_and_head_mask():
    assert popularity.gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert popularity.gini([0, 0, 0, 10]) == pytest.approx(0.75)  # (n-1)/n for one non-zero entry
    assert popularity.gini([]) == 0.0
    mask = popularity.head_mask([1, 9, 3, 9, 0, 2, 7, 4, 5, 6], 0.2)
    assert mask.sum() == 2 and mask[1] and mask[3]


@pytest.mark.parametrize("n, share, n_head", [(1, 0.2, 1), (2, 0.2, 1), (6, 0.2, 2), (10, 0.2, 2),
                                               (1682, 0.2, 337), (100, 0.07, 7)])
def test_head_is_the_ceil_of_the_share(n, share, n_head):
    """ceil(share * n) items, with no extra item from float noise (0.07 * 100 = 7.000000000000001)."""
    pop = np.arange(n)[::-1]  # item 0 most popular
    mask = popularity.head_mask(pop, share)
    assert mask.sum() == n_head and mask[:n_head].all()


def test_head_ties_go_to_the_lower_item_id():
    assert popularity.head_mask([3, 5, 5, 5, 1], 0.4).tolist() == [False, True, True, False, False]
    with pytest.raises(ValueError):
        popularity.head_mask([1, 2], 1.5)


def test_ranking_metrics_hand_computed():
    truth = sp.csr_matrix(np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]))
    topk = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    out = popularity.ranking_metrics(topk, truth, ks=(1, 3))
    assert out["recall@1"][0] == pytest.approx(0.5)
    assert out["recall@3"][0] == pytest.approx(1.0)
    assert out["ndcg@3"][0] == pytest.approx((1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert out["recall@3"][1] == 0.0 and out["ndcg@3"][1] == 0.0
    assert np.isnan(out["recall@3"][2])  # no test items: excluded from means


def test_recommend_masks_seen_items_and_list_stats(ml100k):
    pop = ml100k.train_popularity().astype(np.float32)
    users, lists = popularity.recommend(lambda u: np.tile(pop, (len(u), 1)), ml100k, k=20)
    assert len(users) == (np.diff(ml100k.test.indptr) > 0).sum()
    seen = (ml100k.train + ml100k.valid)[users]
    assert not np.asarray(seen[np.repeat(np.arange(len(users)), 20), lists.ravel()]).any()
    head = popularity.head_mask(ml100k.train_popularity())
    st = popularity.list_stats(lists, ml100k.train_popularity(), head)
    assert 0 < st["coverage"] < 0.2 and st["tail_share"] < 0.05 and st["gini"] > 0.8
    assert st["mean_popularity"] > ml100k.train_popularity().mean()
    per_user = popularity.ranking_metrics(lists, ml100k.test[users], ks=(20,))
    ht = popularity.head_tail_metrics(lists, ml100k.test[users], head, ks=(20,))
    # A most-popular list hits the head far better than the tail; all users are in some subset.
    assert ht["head_recall@20"] > ht["tail_recall@20"]
    assert ht["head_users"] + ht["tail_users"] >= len(users)
    assert 0.0 < np.nanmean(per_user["recall@20"]) < 1.0
    # Restricting to every item reproduces the unrestricted metric.
    all_items = popularity.head_tail_metrics(lists, ml100k.test[users], np.ones_like(head), ks=(20,))
    assert all_items["head_recall@20"] == pytest.approx(np.nanmean(per_user["recall@20"]))


# --------------------------------------------------------------------------------------- sparsity

def test_user_groups_on_ml100k(ml100k):
    lengths = sparsity.history_lengths(ml100k)
    groups, labels = sparsity.user_groups(lengths, 4)
    assert len(labels) == 4 and groups.min() == 0 and groups.max() == 3
    sizes = np.bincount(groups)
    assert sizes.sum() == ml100k.n_users and sizes.min() > 0.2 * ml100k.n_users
    # groups are ordered by history length
    assert all(lengths[groups == g].max() <= lengths[groups == g + 1].min() for g in range(3))
    users = np.arange(ml100k.n_users)
    frame = sparsity.metrics_by_group({"len": lengths.astype(float)}, users, groups, labels)
    assert frame["users"].sum() == ml100k.n_users
    assert frame["len"].is_monotonic_increasing


# --------------------------------------------------------------------------------- false negatives

def test_negative_shares_match_brute_force(ml100k):
    rng = np.random.default_rng(0)
    users = rng.integers(0, ml100k.n_users, 3000)
    negs = rng.integers(0, ml100k.n_items, 3000)
    # plant a few known held-out positives and train positives
    users[:5] = [0, 1, 2, 3, 4]
    negs[:5] = [ml100k.heldout_items(u)[0] for u in range(5)]
    out = false_negatives.negative_shares(ml100k, users, negs)
    heldout = sum(n in set(ml100k.heldout_items(u)) for u, n in zip(users, negs))
    train = sum(n in set(ml100k.train_items(u)) for u, n in zip(users, negs))
    assert out["false_negatives"] == heldout >= 5
    assert out["train_positives"] == train
    assert out["false_negative_share"] == pytest.approx(heldout / 3000)
    base = false_negatives.random_baseline_share(ml100k, users)
    assert 0 < base < 0.05


def test_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert false_negatives.cosine(a, b) == pytest.approx([0.0, 1.0])


# ------------------------------------------------------------------------------------ convergence

def test_convergence_summary():
    assert convergence.epochs_to_reach([0.1, 0.2, 0.29, 0.3], 0.95) == 3
    assert convergence.epochs_to_reach([]) is None
    curves = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4, "seed": 0, "epoch": [1, 2, 3, 4] * 2,
                           "recall@20": [0.1, 0.3, 0.3, 0.2, 0.1, 0.1, 0.2, 0.4]})
    out = convergence.convergence_summary(curves, "recall@20").set_index("method")
    assert out.loc["a", "best_epoch"] == 2 and out.loc["b", "best_epoch"] == 4
    assert out.loc["a", "epochs_to_95pct"] == 2 and out.loc["b", "best"] == pytest.approx(0.4)


# -------------------------------------------------------------------------------------- data stats

def test_dataset_row_ml100k(ml100k):
    row = dataset_row(ml100k)
    assert (row["users"], row["items"], row["interactions"]) == (943, 1682, 100000)
    assert row["train"] + row["valid"] + row["test"] == row["interactions"]
    assert 0.5 < row["head_interaction_share"] < 1 and 0 < row["popularity_gini"] < 1
    tops = top_items(ml100k, 3)
    assert tops["train_interactions"].is_monotonic_decreasing
    assert tops["text"].str.len().min() > 0


def test_cf_runs_share_a_cache_entry_exactly_when_their_own_inputs_match():
    """A run's key holds the digest of what its method trains with, so 05 and 06 reuse 04's SNS runs
    although their resources also carry HNLMRec banks, and a changed HNLMRec bank reruns only HNLMRec."""
    from hnlm.data import load_dataset
    from hnlm.methods import variant
    from hnlm.semantic.bank import NegativeBank
    from hnlm.study.experiments import RunSpec, train_config
    from hnlm.study.pipeline import with_hnlmrec_banks

    def bank(seed):
        rng = np.random.default_rng(seed)
        return NegativeBank(rng.normal(size=(4, 8)).astype(np.float32), np.arange(4), np.arange(4), "test")

    data = load_dataset("ml-100k", seed=0)
    config = train_config("lightgcn", 0, {"epochs": 3})
    a = with_hnlmrec_banks(None, {"text": bank(0)}).provide("sns_bank", bank(5))
    b = with_hnlmrec_banks(None, {"text": bank(1)}).provide("sns_bank", bank(5))

    def key(method, res, **overrides):
        return RunSpec("lightgcn", variant(method, **overrides), 0).key(data, config, res)

    assert key("sns", a) == key("sns", b) != key("sns", a, alpha=0.1)
    assert key("hnlmrec", a) != key("hnlmrec", b)
    assert key("hnlmrec", a) == key("hnlmrec", with_hnlmrec_banks(None, {"text": bank(0)}))
    assert key("rns", a) == key("rns", b)
    assert RunSpec("lightgcn", variant("rns"), 0).key(data, train_config("lightgcn", 0, {"epochs": 4}), a) \
        != key("rns", a)

