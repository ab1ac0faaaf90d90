"""k-core, splits, real MovieLens counts, caching and the training-only views."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hnlm.cli import main
from hnlm.data import load_dataset
from hnlm.data.prepare import filter_interactions, kcore, reindex
from hnlm.data.sources import RawData
from hnlm.data.split import split_interactions, split_sizes
from hnlm.errors import DataFormatError, EmptyDatasetError


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


DAY0 = 946684800  # 2000-01-01 00:00 UTC


def raw(rows):
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).assign(review="")
    return RawData(inter, pd.DataFrame({"item": []}), pd.DataFrame({"user": []}))


def test_filters_apply_in_order_with_inclusive_start_exclusive_end_and_latest_duplicate():
    rows = [("u1", "a", 4.0, DAY0), ("u1", "a", 5.0, DAY0 + 50), ("u1", "b", 4.0, DAY0 + 10),
            ("u1", "c", 3.0, DAY0 + 20), ("u2", "a", 4.0, DAY0 + 5), ("u2", "b", 5.0, DAY0 - 1),
            ("u2", "b", 4.0, DAY0 + 100), ("u3", "a", 5.0, DAY0 + 2 * 86400), ("u3", "b", 5.0, DAY0 + 2 * 86400 - 1)]
    inter, steps = filter_interactions(raw(rows), 4, "2000-01-01", "2000-01-03", 2)
    assert [(s["step"], s["interactions"], s["users"], s["items"]) for s in steps] == [
        ("loaded", 9, 3, 3), ("rating >= 4", 8, 3, 2), ("date in [2000-01-01, 2000-01-03)", 6, 3, 2),
        ("duplicates collapsed", 5, 3, 2), ("2-core", 4, 2, 2)]
    assert steps[3]["collapsed"] == 1
    # sorted by time; the repeated (u1, a) keeps its later rating; u3 (one item left) falls out of the 2-core
    assert list(zip(inter["user"], inter["item"], inter["rating"])) == [
        ("u2", "a", 4.0), ("u1", "b", 4.0), ("u1", "a", 5.0), ("u2", "b", 4.0)]
    assert inter.index.tolist() == [0, 1, 2, 3] and list(inter.columns) == ["user", "item", "rating", "timestamp",
                                                                            "review"]
    only_end, steps = filter_interactions(raw(rows), None, None, "2000-01-01", None)
    assert list(zip(only_end["user"], only_end["item"])) == [("u2", "b")] and len(steps) == 3


def test_a_repeated_pair_keeps_its_latest_row_and_file_order_breaks_time_ties():
    rng = np.random.default_rng(0)
    rows = list(zip(rng.integers(0, 5, 60).astype(str), rng.integers(0, 5, 60).astype(str), np.arange(60.0),
                    rng.integers(0, 3, 60)))
    latest = {}
    for user, item, rating, stamp in rows:
        if (user, item) not in latest or stamp >= latest[user, item][1]:
            latest[user, item] = (rating, stamp)
    inter, _ = filter_interactions(raw(rows), None, None, None, None)
    assert dict(zip(zip(inter["user"], inter["item"]), inter["rating"])) == {k: r for k, (r, _) in latest.items()}


def test_data_without_ratings_or_times_loads_and_refuses_filters_it_cannot_support():
    id_only = raw([("u1", "a", np.nan, 0), ("u1", "b", np.nan, 0), ("u2", "a", np.nan, 0)])
    inter, steps = filter_interactions(id_only, None, None, None, 0)
    assert len(inter) == 3 and [s["step"] for s in steps] == ["loaded", "duplicates collapsed"]
    with pytest.raises(DataFormatError, match="no ratings"):
        filter_interactions(id_only, 3, None, None, None)
    with pytest.raises(DataFormatError, match="no timestamps"):
        filter_interactions(id_only, None, None, "2001-01-01", None)
    with pytest.raises(EmptyDatasetError, match="2 items; 2-core: 0 interactions"):
        filter_interactions(id_only, None, None, None, 2)


def test_reindex_maps_sorted_ids_and_builds_side_tables():
    inter = pd.DataFrame({"user": ["u2", "u10", "u2"], "item": ["b", "a", "a"], "rating": [1.0, 2.0, 3.0]})
    items = pd.DataFrame({"item": ["a", "a", "z", "b"], "title": ["A", "A again", "Z", None]})
    out, item_table, user_table = reindex(inter, items, pd.DataFrame({"user": []}))
    assert out["user"].tolist() == [1, 0, 1] and out["item"].tolist() == [1, 0, 0]   # "u10" < "u2"
    assert out["rating"].tolist() == [1.0, 2.0, 3.0] and inter["user"].tolist() == ["u2", "u10", "u2"]
    assert item_table.to_dict("list") == {"original_id": ["a", "b"], "title": ["A", ""]}
    assert user_table.to_dict("list") == {"original_id": ["u10", "u2"]}
    _, _, no_side = reindex(inter, items, pd.DataFrame({"age": [30]}))
    assert no_side.to_dict("list") == {"original_id": ["u10", "u2"]}
    _, _, with_age = reindex(inter, items, pd.DataFrame({"user": ["u2", "u10"], "age": [30, 40]}))
    assert with_age.to_dict("list") == {"original_id": ["u10", "u2"], "age": ["40", "30"]}


def test_split_sizes_round_each_heldout_share_and_keep_small_users_in_train():
    assert [split_sizes(n, (0.8, 0.1, 0.1)) for n in (1, 2, 3, 10, 15, 25)] == [
        (1, 0, 0), (2, 0, 0), (1, 1, 1), (8, 1, 1), (11, 2, 2), (21, 2, 2)]   # round(2.5) = 2: to even
    assert split_sizes(20, (0.7, 0.2, 0.1)) == (14, 4, 2)


def test_temporal_split_breaks_time_ties_by_item_and_reports_its_counts():
    items = [9, 3, 5, 1, 7, 0, 2, 8, 4, 6]
    inter = pd.DataFrame({"user": [0] * 10 + [1, 1], "item": items + [4, 2], "timestamp": [7] * 10 + [1, 2]})
    part, counts = split_interactions(inter, seed=4, mode="temporal")
    assert dict(zip(items, part[:10].tolist())) == {**{i: 0 for i in range(8)}, 8: 1, 9: 2}
    assert part[10:].tolist() == [0, 0]
    assert counts == {"split_mode": "temporal", "split_seed": 4, "split_ratios": [0.8, 0.1, 0.1],
                      "users_train_only": 1, "train": 10, "valid": 1, "test": 1}
    assert np.issubdtype(part.dtype, np.integer)
    wide = split_interactions(inter, mode="temporal", ratios=(0.6, 0.3, 0.1))[1]
    assert (wide["train"], wide["valid"], wide["test"]) == (8, 3, 1)
    default, _ = split_interactions(inter)
    assert (default == split_interactions(inter, seed=0, mode="random")[0]).all()
    with pytest.raises(ValueError, match="split mode"):
        split_interactions(inter, mode="by-user")


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


def test_cli_stats_prints_paper_table(capsys):
    assert main(["data", "stats", "ml-100k"]) == 0
    assert "| ml-100k | 943 | 1,682 | 100,000 | 6.3047% |" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    """One real `python -m hnlm` process (exit status and stderr as a shell sees them); the lenient case runs
    the same main() in this process, where any exception but the one-line error would fail the test."""
    broken = tmp_path / "Toys.json"
    broken.write_text('{"reviewerID": "A", "asin": "B", "overall": 5, "unixReviewTime": 1}\n{oops\n')
    proc = subprocess.run([sys.executable, "-m", "hnlm", "data", "stats", "toys", "--reviews", str(broken)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{broken}:2" in proc.stderr and "Traceback" not in proc.stderr
    # lenient skips the line; the single remaining interaction cannot survive 10-core: counts per step
    assert main(["data", "stats", "toys", "--reviews", str(broken), "--lenient"]) == 2
    assert "10-core: 0 interactions" in capsys.readouterr().err
