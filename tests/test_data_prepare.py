"""k-core, splits, real MovieLens counts, caching and the training-only views."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hnlm.data import load_dataset
from hnlm.data.prepare import kcore
from hnlm.data.split import split_interactions


def random_interactions(seed=0, n_users=60, n_items=40, n=900):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user": rng.integers(0, n_users, n), "item": rng.integers(0, n_items, n),
                          "timestamp": rng.integers(0, 10**6, n)})
    return frame.drop_duplicates(["user", "item"]).reset_index(drop=True)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_kcore_reaches_fixed_point(k):
    inter = random_interactions()
    core = kcore(inter, k)
    assert (core["user"].value_counts() >= k).all()
    assert (core["item"].value_counts() >= k).all()
    assert len(kcore(core, k)) == len(core)  # a fixed point (maximality: brute force in test_properties.py)


def test_kcore_iterates():
    # item c has 2 users, but user 3 only survives with c -> removing user 3 drops c below 2
    inter = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": ["a", "b", "a", "b", "c"]})
    inter = pd.concat([inter, pd.DataFrame({"user": [1], "item": ["c"]})], ignore_index=True)
    core = kcore(inter, 2)
    assert set(core["item"]) == {"a", "b"} and set(core["user"]) == {1, 2}


@pytest.mark.parametrize("mode", ["random", "temporal"])
def test_split_properties(mode):
    inter = random_interactions(n_users=80)
    inter["user"] = pd.factorize(inter["user"])[0]
    part, counts = split_interactions(inter, seed=3, mode=mode)
    assert len(part) == len(inter) and set(np.unique(part)) <= {0, 1, 2}
    assert counts["train"] + counts["valid"] + counts["test"] == len(inter)
    per_user = pd.DataFrame({"user": inter["user"], "part": part})
    assert (per_user.groupby("user")["part"].apply(lambda p: (p == 0).sum()) >= 1).all()
    sizes = per_user.groupby("user").size()
    assert counts["users_train_only"] == int((sizes < 3).sum())
    again, _ = split_interactions(inter, seed=3, mode=mode)
    assert (again == part).all()
    if mode == "temporal":
        frame = inter.assign(part=part)
        for _, rows in frame.groupby("user"):
            if (rows["part"] > 0).any():
                assert rows.loc[rows["part"] == 0, "timestamp"].max() <= rows.loc[rows["part"] > 0, "timestamp"].min()


def test_split_seed_changes_random_split():
    inter = random_interactions()
    inter["user"] = pd.factorize(inter["user"])[0]
    a, _ = split_interactions(inter, seed=0)
    b, _ = split_interactions(inter, seed=1)
    assert (a != b).any()


def test_ml100k_counts_and_split():
    data = load_dataset("ml-100k", seed=0)
    assert (data.n_users, data.n_items) == (943, 1682)
    train, valid, test = data.train, data.valid, data.test
    assert train.nnz + valid.nnz + test.nnz == 100_000
    assert train.multiply(valid).nnz == 0 and train.multiply(test).nnz == 0 and valid.multiply(test).nnz == 0
    assert (np.diff(train.indptr) > 0).all(), "every user has training interactions"
    assert abs(valid.nnz / 100_000 - 0.1) < 0.01 and abs(test.nnz / 100_000 - 0.1) < 0.01
    assert data.items.loc[0, "title"] == "Toy Story" and data.items.loc[0, "year"] == "1995"
    assert "Animation" in data.items.loc[0, "categories"]
    assert set(data.users.columns) >= {"original_id", "age", "gender", "occupation"}


def test_ml100k_cache_roundtrip_and_determinism():
    first = load_dataset("ml-100k", seed=7)
    cached = load_dataset("ml-100k", seed=7)
    fresh = load_dataset("ml-100k", seed=7, cache=False)
    for part in ("train", "valid", "test"):
        assert (getattr(cached, part) != getattr(first, part)).nnz == 0
        assert (getattr(fresh, part) != getattr(first, part)).nnz == 0


def test_ml1m_counts_and_stable_ids():
    data = load_dataset("ml-1m", seed=0)
    assert (data.n_users, data.n_items) == (6040, 3706)
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 1_000_209
    # ids are "Title (Year)" strings mapped to integers in sorted order: stable across runs
    ids = data.items["original_id"].tolist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert data.items.loc[ids.index("Toy Story (1995)"), "title"] == "Toy Story"


def test_training_views_hide_heldout():
    data = load_dataset("ml-100k", seed=0)
    for user in range(0, 943, 97):
        train = set(data.train_items(user))
        held = set(data.heldout_items(user))
        assert train and held and not train & held


def test_cli_stats_prints_paper_table():
    out = subprocess.run([sys.executable, "-m", "hnlm", "data", "stats", "ml-100k"], capture_output=True,
                         text=True, check=True).stdout
    assert "| ml-100k | 943 | 1,682 | 100,000 | 6.3047% |" in out


def test_cli_reports_bad_input_without_traceback(tmp_path):
    broken = tmp_path / "Toys.json"
    broken.write_text('{"reviewerID": "A", "asin": "B", "overall": 5, "unixReviewTime": 1}\n{oops\n')
    proc = subprocess.run([sys.executable, "-m", "hnlm", "data", "stats", "toys", "--reviews", str(broken)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{broken}:2" in proc.stderr and "Traceback" not in proc.stderr
    lenient = subprocess.run([sys.executable, "-m", "hnlm", "data", "stats", "toys", "--reviews", str(broken),
                              "--lenient"], capture_output=True, text=True)
    # lenient skips the line; the single remaining interaction cannot survive 10-core: counts per step
    assert lenient.returncode == 2 and "10-core: 0 interactions" in lenient.stderr
