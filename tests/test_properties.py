"""Properties that are the specification, checked on random small cases (hypothesis) against brute force:
full-ranking metrics, the k-core, the per-user split, and the pairwise / contrastive losses by hand."""

import itertools
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hnlm.analysis.popularity import head_mask, ranking_metrics
from hnlm.cf import losses
from hnlm.cf.evaluate import evaluate
from hnlm.data.prepare import kcore
from hnlm.data.split import split_interactions
from tests.cf_helpers import fixed_scores_model, tiny_data

SMALL = settings(max_examples=40)  # no deadline, no example database: tests/conftest.py

NONE, TRAIN, VALID, TEST = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------ metrics

@st.composite
def ranking_cases(draw):
    """Each (user, item) cell is unobserved, train, valid or test; scores are distinct per user (no ties)."""
    n_users, n_items = draw(st.integers(1, 5)), draw(st.integers(2, 8))
    cell = st.sampled_from([NONE, NONE, TRAIN, VALID, TEST])
    cells = draw(st.lists(st.lists(cell, min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users))
    scores = [list(draw(st.permutations(range(n_items)))) for _ in range(n_users)]
    ks = sorted(draw(st.sets(st.integers(1, n_items), min_size=1, max_size=3)))
    split = draw(st.sampled_from(["valid", "test"]))
    return cells, scores, ks, split


def case_data(cells):
    def rows(kind):
        return {u: [i for i, c in enumerate(row) if c == kind] for u, row in enumerate(cells)}
    return tiny_data(rows(TRAIN), rows(VALID), rows(TEST), n_users=len(cells), n_items=len(cells[0]))


def brute_force(cells, scores, ks, split):
    """Per-user (users with >= 1 target only) recall@K = hits / |targets| and NDCG@K with the ideal DCG over
    min(|targets|, K) places, ranking every item the user has not seen (train, and valid when testing)."""
    target, seen = (TEST, {TRAIN, VALID}) if split == "test" else (VALID, {TRAIN})
    out = {"users": [], **{f"{m}@{k}": [] for m in ("recall", "ndcg") for k in ks}, "rankings": []}
    for u, row in enumerate(cells):
        truth = {i for i, c in enumerate(row) if c == target}
        if not truth:
            continue
        ranking = sorted((i for i, c in enumerate(row) if c not in seen), key=lambda i: -scores[u][i])
        out["users"].append(u)
        out["rankings"].append(ranking)
        for k in ks:
            hits = [i in truth for i in ranking[:k]]
            dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
            out[f"recall@{k}"].append(sum(hits) / len(truth))
            out[f"ndcg@{k}"].append(dcg / idcg)
    return out


@SMALL
@given(ranking_cases())
def test_evaluate_equals_brute_force(case):
    cells, scores, ks, split = case
    res = evaluate(fixed_scores_model(scores), case_data(cells), split, ks=ks)
    ref = brute_force(cells, scores, ks, split)
    assert res["users"] == ref["users"] and res["n_users"] == len(ref["users"])
    for k in ks:
        for metric in ("recall", "ndcg"):
            name = f"{metric}@{k}"
            if not ref["users"]:  # nobody to average over: the metric is there, NaN
                assert math.isnan(res[name]) and len(res["per_user"][name]) == 0, name
                continue
            np.testing.assert_allclose(res["per_user"][name], ref[name], atol=1e-6, err_msg=name)
            assert res[name] == pytest.approx(np.mean(ref[name]), abs=1e-6), name
            assert all(0.0 <= v <= 1.0 + 1e-6 for v in res["per_user"][name]), name
    for small, large in itertools.pairwise(ks):  # recall and hit can only grow with K (NDCG can fall)
        assert (res["per_user"][f"recall@{large}"] >= res["per_user"][f"recall@{small}"] - 1e-7).all()
        assert (res["per_user"][f"hit@{large}"] >= res["per_user"][f"hit@{small}"]).all()


@SMALL
@given(ranking_cases())
def test_ranking_metrics_of_lists_equal_brute_force(case):
    """The analysis layer's metrics on given lists agree with the same reference (NaN for users without
    targets, who are left out of the means)."""
    cells, scores, ks, split = case
    ref = brute_force(cells, scores, ks, split)
    if not ref["users"]:
        return
    depth = min(len(r) for r in ref["rankings"])
    ks = [k for k in ks if k <= depth]
    if not ks:
        return
    lists = np.array([r[:depth] for r in ref["rankings"]])
    data = case_data(cells)
    out = ranking_metrics(lists, getattr(data, split)[ref["users"]], ks=ks)
    for k in ks:
        for metric in ("recall", "ndcg"):
            np.testing.assert_allclose(out[f"{metric}@{k}"], ref[f"{metric}@{k}"], atol=1e-9)


@SMALL
@given(ranking_cases())
def test_evaluator_long_tail_share_uses_the_one_head_definition(case):
    cells, scores, ks, split = case
    data = case_data(cells)
    res = evaluate(fixed_scores_model(scores), data, split, ks=ks)
    ref = brute_force(cells, scores, ks, split)
    head = head_mask(data.train_popularity())
    for k in ks:
        if ref["users"] and all(len(r) >= k for r in ref["rankings"]):  # top-k holds no masked (tied) item
            tail = [not head[i] for r in ref["rankings"] for i in r[:k]]
            assert res[f"longtail_share@{k}"] == pytest.approx(np.mean(tail))


# -------------------------------------------------------------------------------------------- k-core

@st.composite
def small_graphs(draw):
    """Up to 5 users x 4 items, each pair present with probability ~1/2 (dense enough for cores to form)."""
    n_users, n_items = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    present = draw(st.lists(st.booleans(), min_size=n_users * n_items, max_size=n_users * n_items))
    edges = [pair for pair, keep in zip(itertools.product(range(n_users), range(n_items)), present) if keep]
    return edges or [(0, 0)], draw(st.integers(1, 4))


def subsets(values):
    return itertools.chain.from_iterable(itertools.combinations(values, r) for r in range(len(values) + 1))


def brute_force_kcore(edges, k):
    """The largest vertex sets (users, items) whose induced subgraph gives every member degree >= k: the union
    of all such sets (itself such a set), found by trying every pair of subsets."""
    keep_users, keep_items = set(), set()
    for us in map(set, subsets(sorted({u for u, _ in edges}))):
        for its in map(set, subsets(sorted({i for _, i in edges}))):
            sub = [(u, i) for u, i in edges if u in us and i in its]
            du, di = Counter(u for u, _ in sub), Counter(i for _, i in sub)
            if all(du[u] >= k for u in us) and all(di[i] >= k for i in its):
                keep_users |= us
                keep_items |= its
    return {(u, i) for u, i in edges if u in keep_users and i in keep_items}


@settings(max_examples=60)
@given(small_graphs())
def test_kcore_is_the_maximal_subgraph_of_degree_k(graph):
    edges, k = graph
    frame = pd.DataFrame(edges, columns=["user", "item"])
    core = kcore(frame, k)
    kept = set(zip(core["user"], core["item"]))
    assert (core["user"].value_counts() >= k).all() and (core["item"].value_counts() >= k).all()
    assert kept == brute_force_kcore(edges, k)


def test_kcore_keeps_a_complete_block_and_drops_its_pendant():
    # a 3 x 3 complete block is its own 3-core; the pendant user 9 (2 edges) goes, the block stays whole
    block = [(u, i) for u in range(3) for i in range(3)]
    core = kcore(pd.DataFrame(block + [(9, 0), (9, 1)], columns=["user", "item"]), 3)
    assert set(zip(core["user"], core["item"])) == set(block)


# -------------------------------------------------------------------------------------------- splits

@st.composite
def interaction_tables(draw):
    """Users 0..n-1 with 1-25 distinct items each; few distinct timestamps, so ties occur."""
    rows = []
    for user in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 25))
        items = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n, unique=True))
        stamps = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
        rows += [(user, i, t) for i, t in zip(items, stamps)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def part_by_pair(inter, part):
    return dict(zip(zip(inter["user"], inter["item"]), part.tolist()))


@SMALL
@given(interaction_tables(), st.integers(0, 2**31 - 1), st.sampled_from(["random", "temporal"]),
       st.randoms(use_true_random=False))
def test_split_partitions_each_user_8_1_1(inter, seed, mode, shuffler):
    part, counts = split_interactions(inter, seed=seed, mode=mode)
    # cover and disjoint: every interaction is in exactly one of train/valid/test
    assert len(part) == len(inter) and set(np.unique(part)) <= {0, 1, 2}
    assert (counts["train"], counts["valid"], counts["test"]) == tuple(int((part == p).sum()) for p in range(3))
    for user, rows in inter.assign(part=part).groupby("user"):
        n = len(rows)
        n_train, n_valid, n_test = (int((rows["part"] == p).sum()) for p in range(3))
        if n < 3:
            assert n_train == n
            continue
        assert n_train >= 1
        for held in (n_valid, n_test):  # 10% each, rounded to the nearest count, at least one
            assert held == 1 if 0.1 * n < 0.5 else abs(held - 0.1 * n) <= 0.5, (n, held)
        if mode == "temporal":
            stamps = [rows.loc[rows["part"] == p, "timestamp"] for p in range(3)]
            assert stamps[0].max() <= stamps[1].min() and stamps[1].max() <= stamps[2].min()
    assert counts["users_train_only"] == int((inter.groupby("user").size() < 3).sum())
    # deterministic per seed, whatever the row order of the input
    again, _ = split_interactions(inter, seed=seed, mode=mode)
    np.testing.assert_array_equal(again, part)
    order = list(range(len(inter)))
    shuffler.shuffle(order)
    shuffled = inter.iloc[order].reset_index(drop=True)
    assert part_by_pair(shuffled, split_interactions(shuffled, seed=seed, mode=mode)[0]) == part_by_pair(inter, part)


# -------------------------------------------------------------------------------------------- losses

def softplus(x):
    return math.log1p(math.exp(x))


def test_bpr_hand_computed():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # -mean log sigmoid(pos - neg) = mean softplus(neg - pos)
    expected = (softplus(-2.0) + softplus(1.0)) / 2
    assert float(losses.bpr(pos, neg)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.pairwise_loss("bpr", pos, neg)) == pytest.approx(expected, rel=1e-6)


def test_hinge_hand_computed_with_margin():
    pos, neg = torch.tensor([1.0, 0.2]), torch.tensor([0.5, 0.4])
    # max(0, m - pos + neg): m = 0.3 -> 0 and 0.5; m = 1.0 -> 0.5 and 1.2
    assert float(losses.hinge(pos, neg)) == pytest.approx(0.25, rel=1e-6)
    assert float(losses.pairwise_loss("hinge", pos, neg)) == pytest.approx(0.25, rel=1e-6)
    assert float(losses.pairwise_loss("hinge", pos, neg, margin=1.0)) == pytest.approx(0.85, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        losses.pairwise_loss("mse", pos, neg)


def test_info_nce_hand_computed():
    """Cosine / tau logits; in-batch: row i's positive is positive[i], the other rows are its negatives."""
    anchor = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[1.0, 0.0], [3.0, 3.0]])      # cosines: [[1, 1/sqrt2], [0, 1/sqrt2]]
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(c / 0.5)))
    row1 = -math.log(math.exp(c / 0.5) / (math.exp(0.0) + math.exp(c / 0.5)))
    assert float(losses.info_nce(anchor, positive, tau=0.5)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # explicit negatives [B, N, d]: anchor 0 against its own two negatives only
    negatives = torch.tensor([[[0.0, 5.0], [-1.0, 0.0]]])
    logits = [1 / 0.5, 0.0, -1 / 0.5]
    expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert float(losses.info_nce(anchor[:1], positive[:1], negatives, tau=0.5)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_normalises_each_row_at_the_default_temperature():
    """Rows that are not unit length and not axis-aligned, so normalising along the wrong axis shows;
    cosines: anchor 0 vs positives [1/sqrt2, 1], anchor 1 vs positives [0, 1/sqrt2]; tau = 0.2."""
    anchor, positive = torch.tensor([[1.0, 1.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    row0 = -5 * c + math.log(math.exp(5 * c) + math.exp(5))
    row1 = -5 * c + math.log(1 + math.exp(5 * c))
    assert float(losses.info_nce(anchor, positive)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # anchor 0 against its own negatives (3, 4) and (1, 0): cosines 1.4 / sqrt2 and 1 / sqrt2
    negatives = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    logits = [c / 0.5, 1.4 * c / 0.5, c / 0.5]
    expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert float(losses.info_nce(anchor[:1], positive[:1], negatives, tau=0.5)) == pytest.approx(expected, rel=1e-6)
