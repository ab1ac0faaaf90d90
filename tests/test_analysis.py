"""Analysis helpers on hand-computed cases and on the real ml-100k split."""

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from hnlm.analysis import convergence, false_negatives, popularity, significance, sparsity
from hnlm.analysis.data_stats import dataset_row, top_items
from hnlm.data import load_dataset
from hnlm.study.compare import ablation_table, compare_table


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


def test_paired_test_reports_the_means_and_scipy_statistics():
    a, b = np.array([0.30, 0.35, 0.31, 0.40, 0.28]), np.array([0.29, 0.30, 0.32, 0.33, 0.27])
    out = significance.paired_test(a, b)
    assert out["mean_a"] == pytest.approx(0.328) and out["mean_b"] == pytest.approx(0.302)
    assert out["t_stat"] == pytest.approx(stats.ttest_rel(a, b).statistic)
    assert out["wilcoxon_stat"] == pytest.approx(stats.wilcoxon(a, b).statistic) and out["note"] is None
    nan_in_b = significance.paired_test([0.1, 0.2, 0.3, 0.5], [0.2, np.nan, 0.1, 0.4])
    assert nan_in_b["n"] == 3 and nan_in_b["mean_b"] == pytest.approx(0.7 / 3)


def test_paired_test_notes_say_why_a_p_value_is_missing_or_set():
    same = significance.paired_test([0.1, 0.2], [0.1, 0.2])
    assert (same["t_stat"], same["t_p"], same["wilcoxon_stat"], same["wilcoxon_p"]) == (0.0, 1.0, 0.0, 1.0)
    assert same["note"] == "identical samples: p = 1 by rule" and same["mean_diff"] == 0.0
    assert significance.paired_test([0.4, 0.5], [0.1, 0.2])["note"] == (
        "zero variance of the differences: t-test undefined (t_p NaN)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no pairs: NaN means, without numpy's empty-mean warning
        empty = significance.paired_test([], [])
        assert np.isnan(significance.paired_bootstrap(np.full((2, 2), np.nan), np.zeros((2, 2)))["mean_diff"])
    assert empty["n"] == 0 and np.isnan(empty["mean_a"]) and np.isnan(empty["mean_b"])
    assert np.isnan(empty["mean_diff"]) and np.isnan(empty["wilcoxon_stat"])
    assert empty["note"] == "0 pair(s): a paired test needs at least 2"
    with pytest.raises(ValueError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        significance.paired_test([1, 2], [1, 2, 3])


def test_boolean_per_user_hits_count_as_zero_and_one():
    hits, misses = np.array([[True, True, False], [True, False, True]]), np.zeros((2, 3), bool)
    assert significance.paired_bootstrap(hits, misses)["mean_diff"] == pytest.approx(4 / 6)
    assert significance.paired_test(hits[0], misses[0])["mean_diff"] == pytest.approx(2 / 3)
    assert significance.paired_test(misses[0], hits[1])["mean_diff"] == pytest.approx(-2 / 3)


def _bootstrap_by_loops(diff, samples, seed):
    """The crossed bootstrap written out: per sample, the drawn seeds and one draw of users used in every one."""
    rng = np.random.default_rng(seed)
    n_seeds, n_users = diff.shape
    seed_draws = rng.integers(0, n_seeds, size=(samples, n_seeds))
    user_draws = rng.integers(0, n_users, size=(samples, n_users), dtype=np.int32)
    means = np.array([np.mean([[diff[seed_draws[s, j], user_draws[s, k]] for k in range(n_users)]
                               for j in range(n_seeds)]) for s in range(samples)])
    below, above = (means <= 0).mean(), (means >= 0).mean()
    return np.percentile(means, [2.5, 97.5]), min(1.0, 2 * max(min(below, above), 1 / samples))


def _nested_bootstrap_sd(diff, samples, rng):
    """The scheme the crossed one replaced: users drawn anew inside every drawn seed."""
    n_seeds, n_users = diff.shape
    seeds = rng.integers(0, n_seeds, size=(samples, n_seeds))
    users = rng.integers(0, n_users, size=(samples, n_seeds, n_users))
    return diff[seeds[..., None], users].mean(axis=(1, 2)).std()


def test_crossed_bootstrap_error_matches_the_analytic_one_when_user_gains_persist():
    """Per-user gain = persistent user effect (variance 0.8, the same in every seed) + seed-specific noise (variance
    0.2), 943 users, 3 seeds. The mean's true standard error is sqrt((0.8 + 0.2 / 3) / 943). The crossed bootstrap's
    spread matches it within 10% (its only excess: the noise term, counted up to 3 times, 0.2 / 3 of 0.87); the
    nested scheme's falls about a third short."""
    rng = np.random.default_rng(7)
    users, seeds, persistent, noise = 943, 3, 0.8, 0.2
    analytic = np.sqrt((persistent + noise / seeds) / users)
    crossed, nested = [], []
    for _ in range(8):
        diff = rng.normal(0, np.sqrt(persistent), users) + rng.normal(0, np.sqrt(noise), (seeds, users))
        boot = significance.paired_bootstrap(diff, np.zeros_like(diff), samples=2000, seed=int(rng.integers(1e6)))
        crossed.append((boot["ci_high"] - boot["ci_low"]) / (2 * 1.96))
        nested.append(_nested_bootstrap_sd(diff, 2000, rng))
    assert np.mean(crossed) / analytic == pytest.approx(1.0, abs=0.10)
    assert np.mean(nested) / analytic < 0.75


def test_holm_adjusts_step_down_and_keeps_order_and_nans():
    adjusted = significance.holm([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (4 tests): 4 * 0.01, 3 * 0.03, max(2 * 0.04, 0.09), 0.5
    assert adjusted[[0, 1, 3, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and np.isnan(adjusted[2])
    assert list(significance.holm([0.2, 0.9])) == pytest.approx([0.4, 0.9])
    assert significance.holm([]).size == 0


def test_bootstrap_equals_the_loop_over_samples_seeds_and_users():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.2, 0.4, size=(3, 7))
    a = b + rng.normal(0.005, 0.02, size=b.shape)
    boot = significance.paired_bootstrap(a, b, samples=300, seed=5)
    (low, high), p = _bootstrap_by_loops(a - b, 300, 5)
    assert (boot["ci_low"], boot["ci_high"], boot["p"]) == pytest.approx((low, high, p))
    assert significance.paired_bootstrap(a, b) == significance.paired_bootstrap(a, b, seed=0)


def test_bootstrap_of_two_seeds_that_disagree_completely():
    """Every user gains 0 on seed 0 and 1 on seed 1: a resample's mean is the share of seed-1 draws, 0, 1/2 or 1
    with probabilities 1/4, 1/2, 1/4, so the interval is [0, 1] and p = 2 * P(mean <= 0) = 1/2."""
    a, b = np.array([[0.2, 0.3], [1.2, 1.3]]), np.array([[0.2, 0.3], [0.2, 0.3]])
    boot = significance.paired_bootstrap(a, b)
    assert (boot["ci_low"], boot["ci_high"]) == (0.0, 1.0) and boot["p"] == pytest.approx(0.5, abs=0.06)
    assert boot["mean_diff"] == pytest.approx(0.5) and boot["note"] is None
    assert significance.paired_bootstrap(b, b)["p"] == 1.0     # every resample exactly 0


def test_bootstrap_drops_users_with_a_nan_and_needs_two_of_each():
    a, b = np.array([[0.5, np.nan, 0.7], [0.6, 0.1, 0.9]]), np.full((2, 3), 0.5)
    boot = significance.paired_bootstrap(a, b)
    assert boot["users"] == 2 and boot["seeds"] == 2 and boot["mean_diff"] == pytest.approx(0.7 / 4)
    one_user = significance.paired_bootstrap(a[:, :1], b[:, :1])
    assert np.isnan(one_user["p"]) and one_user["note"] == "the bootstrap needs at least 2 seeds and 2 users"
    assert np.isnan(one_user["ci_low"]) and np.isnan(one_user["ci_high"])


def test_a_missing_value_given_as_none_is_dropped_like_nan():
    """Metric lists built by hand (a run without the metric gives None) are read as floats on both sides."""
    over_seeds = significance.paired_test([0.3, None, 0.5, 0.6], [0.2, 0.1, None, 0.45])
    assert over_seeds["n"] == 2 and over_seeds["mean_diff"] == pytest.approx(0.125)
    boot = significance.paired_bootstrap([[0.5, None, 0.7, 0.8], [0.6, 0.1, 0.9, 0.7]],
                                         [[0.5, 0.5, None, 0.6], [0.5, 0.5, 0.5, 0.5]])
    assert (boot["seeds"], boot["users"]) == (2, 2) and boot["mean_diff"] == pytest.approx(0.125)


def test_tables_keep_the_run_order_and_show_one_seed_without_spread():
    runs = pd.concat([_runs(), pd.DataFrame([{"method": "solo", "backbone": "mf", "seed": 0, "recall@20": 0.2}])])
    summary = significance.summarise(runs, ["recall@20"])
    assert summary["method"].tolist() == ["rns", "dns", "new", "solo"]
    table = significance.mean_std_table(runs, ["recall@20"], digits=2)
    assert table["recall@20"].tolist() == ["0.30 ± 0.01", "0.33 ± 0.01", "0.36 ± 0.01", "0.20 ± 0.00"]
    assert table["seeds"].tolist() == [3, 3, 3, 1] and list(table.columns) == ["method", "backbone", "recall@20",
                                                                               "seeds"]
    by_method = significance.summarise(runs.drop(columns="backbone"), ["recall@20"])
    assert list(by_method.columns) == ["method", "recall@20 mean", "recall@20 std", "seeds"]
    two_backbones = pd.concat([runs, runs.assign(backbone="mf", **{"recall@20": runs["recall@20"] + 0.1})])
    pooled = significance.mean_std_table(two_backbones, ["recall@20"], by=("method",))
    assert pooled["seeds"].tolist() == [6, 6, 6, 2] and list(pooled.columns) == ["method", "recall@20", "seeds"]
    with pytest.raises(ValueError, match="none of"):
        significance.best_method(runs, "recall@20", ["absent"])


def test_compare_pairs_runs_by_seed_and_guards_a_zero_baseline():
    runs = _runs()
    runs = runs[~((runs["method"] == "new") & (runs["seed"] == 2))]        # "new" lacks seed 2
    per_user = {(m, s): np.full(4, v) + np.arange(4) * 0.01 for m, s, v in
                runs[["method", "seed", "recall@20"]].itertuples(index=False)}
    cmp = significance.compare(runs, "recall@20", "new", "dns", per_user)
    assert (cmp["method"], cmp["baseline"], cmp["metric"]) == ("new", "dns", "recall@20")
    assert cmp["seeds"] == [0, 1] and cmp["over_seeds"]["n"] == 2
    assert cmp["mean"] == pytest.approx(0.355) and cmp["baseline_mean"] == pytest.approx(0.335)
    assert cmp["relative_gain_ci"] == pytest.approx([cmp["bootstrap"]["ci_low"] / 0.335,
                                                     cmp["bootstrap"]["ci_high"] / 0.335])
    zero = runs.assign(**{"recall@20": np.where(runs["method"] == "dns", 0.0, runs["recall@20"])})
    cmp0 = significance.compare(zero, "recall@20", "new", "dns", per_user)
    assert np.isnan(cmp0["relative_gain"]) and len(cmp0["relative_gain_ci"]) == 2
    assert np.isnan(cmp0["relative_gain_ci"]).all()
    alone = significance.compare(runs, "recall@20", "new", "absent")
    assert alone["seeds"] == [] and np.isnan(alone["mean"]) and np.isnan(alone["relative_gain"])


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


def test_chance_rate_counts_each_user_once_per_training_pair():
    """User 0: 2 training items, 1 held out of 4 items (chance 1/2, twice); user 1: 1 training item, 2 held
    out (chance 2/3, once)."""
    def matrix(rows):
        return sp.csr_matrix(np.array(rows, dtype=np.float32))

    data = SimpleNamespace(n_users=2, n_items=4, train=matrix([[1, 1, 0, 0], [1, 0, 0, 0]]),
                           valid=matrix([[0, 0, 1, 0], [0, 1, 0, 0]]), test=matrix([[0, 0, 0, 0], [0, 0, 0, 1]]))
    assert false_negatives.training_pairs_chance(data) == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)


def test_overall_shares_sum_epochs_and_seeds_per_backbone_and_method():
    by_epoch = pd.DataFrame({"backbone": ["mf", "mf", "mf", "lightgcn"], "method": ["dns", "rns", "dns", "dns"],
                             "seed": [0, 0, 1, 0], "negatives": [100, 100, 300, 50],
                             "false_negatives": [10, 2, 20, 5]})
    overall = false_negatives.overall_shares(by_epoch, chance=0.02)
    assert overall[["backbone", "method"]].values.tolist() == [["mf", "dns"], ["mf", "rns"], ["lightgcn", "dns"]]
    assert overall["share"].tolist() == pytest.approx([30 / 400, 0.02, 0.1])
    assert overall["vs_chance"].tolist() == pytest.approx([30 / 400 / 0.02, 1.0, 5.0])


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
    from hnlm.semantic.resources import SNS_BANK
    from hnlm.study.experiments import RunSpec, train_config
    from hnlm.study.pipeline import with_hnlmrec_banks

    def bank(seed):
        rng = np.random.default_rng(seed)
        return NegativeBank(rng.normal(size=(4, 8)).astype(np.float32), np.arange(4), np.arange(4), "test")

    data = load_dataset("ml-100k", seed=0)
    config = train_config("lightgcn", 0, {"epochs": 3})
    a = with_hnlmrec_banks(None, {"text": bank(0)}).provide(SNS_BANK, bank(5))
    b = with_hnlmrec_banks(None, {"text": bank(1)}).provide(SNS_BANK, bank(5))

    def key(method, res, **overrides):
        return RunSpec("lightgcn", variant(method, **overrides), 0).key(data, config, res)

    assert key("sns", a) == key("sns", b) != key("sns", a, alpha=0.1)
    assert key("hnlmrec", a) != key("hnlmrec", b)
    assert key("hnlmrec", a) == key("hnlmrec", with_hnlmrec_banks(None, {"text": bank(0)}))
    assert key("rns", a) == key("rns", b)
    assert RunSpec("lightgcn", variant("rns"), 0).key(data, train_config("lightgcn", 0, {"epochs": 4}), a) \
        != key("rns", a)



def test_ablation_table_pairs_each_method_with_its_own_ablations_only():
    """sns-dnsmn has two ablations in the list, dnsmn-guard's are absent and dns-mn has none: two rows per
    backbone, each the method against its ablation with the gain the removed idea brings."""
    methods = {"dns-mn": 0.38, "sns-dnsmn": 0.40, "sns-dnsmn-random": 0.39, "sns-dnsmn-shuffled": 0.36,
               "dnsmn-guard": 0.37}
    results = [{"backbone": b, "method": m, "seed": s, "tag": f"{b}-{m}-{s}",
                "test": {"recall@20": v + 0.001 * s}, "valid": {"recall@20": v},
                "per_user_test": {"users": [0, 1, 2], "recall@20": [v + 0.001 * s] * 3}}
               for b in ("lightgcn", "mf") for m, v in methods.items() for s in range(3)]
    runs = pd.DataFrame([{"backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
                          "recall@20": r["test"]["recall@20"], "valid recall@20": r["valid"]["recall@20"]}
                         for r in results])
    table = ablation_table(runs, results, "recall@20", list(methods))
    pairs = [["sns-dnsmn", "sns-dnsmn-random"], ["sns-dnsmn", "sns-dnsmn-shuffled"]]
    assert table[["backbone", "method", "baseline"]].values.tolist() == [[b, *p] for b in ("lightgcn", "mf")
                                                                         for p in pairs]   # backbone by backbone
    assert table["relative_gain"].tolist() == pytest.approx([0.01 / 0.391, 0.04 / 0.361] * 2)
    assert ablation_table(runs, results, "recall@20", ["dns-mn", "dnsmn-guard"]).empty


def _disagreeing_runs():
    """MF runs where validation recall@10 ranks dens first and validation recall@20 ranks dns-mn first (as on
    ml-100k's untuned MF: 0.2120 vs 0.2110 at @10, 0.3230 vs 0.3280 at @20), with per-user test vectors."""
    valid = {"dens": (0.2120, 0.3230), "dns-mn": (0.2110, 0.3280), "rns": (0.2000, 0.3100), "new": (0.2200, 0.3400)}
    rng = np.random.default_rng(0)
    results = []
    for method, (v10, v20) in valid.items():
        for seed in range(3):
            per_user = {m: list(base + rng.normal(0, 0.01, 4)) for m, base in (("recall@10", v10), ("recall@20", v20))}
            results.append({"backbone": "mf", "method": method, "seed": seed, "tag": f"mf-{method}-{seed}",
                            "per_user_test": {"users": [0, 1, 2, 3], **per_user}})
    runs = pd.DataFrame([{"backbone": "mf", "method": r["method"], "seed": r["seed"],
                          **{m: float(np.mean(r["per_user_test"][m])) for m in ("recall@10", "recall@20")},
                          "valid recall@10": valid[r["method"]][0], "valid recall@20": valid[r["method"]][1]}
                         for r in results])
    return runs, results


def test_baseline_is_chosen_on_the_selection_metric_even_when_the_table_leads_with_another():
    """Notebook 06 lists recall@10 first; choosing on the first metric picked DENS. The selection metric is a
    required argument, and on valid recall@20 the baseline is DNS(M,N) for every row of the table."""
    runs, results = _disagreeing_runs()
    classic = ["rns", "dens", "dns-mn"]
    with pytest.raises(TypeError, match="select_on"):
        compare_table(runs, results, ["recall@10", "recall@20"], ["new"], best_of=classic)
    table = compare_table(runs, results, ["recall@10", "recall@20"], ["new", "rns"], best_of=classic,
                          select_on="recall@20")
    assert set(table["baseline"]) == {"dns-mn"} and table["baseline_chosen_on_valid"].all()
    assert set(table["selected_on"]) == {"valid recall@20"}


def test_comparison_table_adds_holm_adjusted_p_per_baseline_and_metric():
    runs, results = _disagreeing_runs()
    table = compare_table(runs, results, ["recall@10", "recall@20"], ["new", "rns", "dens"], best_of=["dns-mn"],
                          baselines=["rns"], select_on="recall@20")
    for _, family in table.groupby(["metric", "baseline"]):
        assert family["bootstrap_p_holm"].tolist() == pytest.approx(list(significance.holm(family["bootstrap_p"])))
        assert (family["t_p_holm"] >= family["t_p"]).all()
    assert (table.groupby(["metric", "baseline"]).size() == [3, 2] * 2).all()   # rns is not compared with itself
