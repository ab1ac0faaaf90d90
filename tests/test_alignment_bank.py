"""Negative banks: (user, item) lookup rules and the two ablations (random same-norm, shuffled users)."""

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hnlm.semantic.bank import BankIndex, NegativeBank, RotatingIndex, user_derangement


def make_bank(n_users=6, per_user=3, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.tile(np.arange(per_user), n_users) * 10 + users  # distinct items per user
    emb = rng.standard_normal((len(users), dim)).astype(np.float32) * rng.uniform(0.5, 3, (len(users), 1))
    return NegativeBank(emb, users, items, source="test")


def test_pair_and_user_lookup():
    bank = make_bank()
    index = BankIndex(bank, n_items=100)
    rng = np.random.default_rng(0)
    users = np.array([0, 1, 2, 7])
    items = np.array([0, 11, 99, 0])  # exact, exact, unknown pair of a known user, unknown user
    rows, exact = index.lookup(users, items, "pair", rng)
    assert rows[0] == 0 and rows[1] == 4 and rows[2] == -1 and rows[3] == -1
    assert exact.tolist() == [True, True, False, False]
    rows, exact = index.lookup(users, items, "user", rng)
    assert rows[:2].tolist() == [0, 4]
    assert bank.users[rows[2]] == 2 and not exact[2]  # reused one of user 2's negatives
    assert rows[3] == -1  # a user without negatives stays missing: never a made-up vector


def test_random_ablation_keeps_norms_and_changes_directions():
    bank = make_bank()
    rand = bank.randomized(seed=1)
    np.testing.assert_allclose(np.linalg.norm(rand.emb, axis=1), np.linalg.norm(bank.emb, axis=1), rtol=1e-5)
    cos = np.sum(rand.emb * bank.emb, 1) / np.linalg.norm(rand.emb, axis=1) / np.linalg.norm(bank.emb, axis=1)
    assert np.abs(cos).max() < 0.99
    assert (rand.users == bank.users).all() and (rand.items == bank.items).all()


def test_shuffled_ablation_moves_every_vector_to_another_user():
    bank = make_bank()
    shuf = bank.shuffled(seed=2)
    # Same multiset of vectors, same keys, but no row keeps a vector generated for its own user.
    owner = {tuple(np.round(v, 5)): u for v, u in zip(bank.emb, bank.users)}
    new_owner = np.array([owner[tuple(np.round(v, 5))] for v in shuf.emb])
    assert (new_owner != shuf.users).all()
    assert shuf.meta["rows_left_with_own_user"] == 0
    np.testing.assert_allclose(np.sort(shuf.emb, axis=0), np.sort(bank.emb, axis=0))


def test_rotate_cycles_through_a_users_negatives_across_epochs():
    bank = make_bank(per_user=3)
    index = BankIndex(bank, n_items=100)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(2):  # two epochs, user 1 looked up twice per batch, user 7 unknown
        rows, exact = index.lookup(np.array([1, 7, 1]), np.array([1, 0, 11]), "rotate", rng)
        seen += [rows[0], rows[2]]
        assert rows[1] == -1 and not exact[1]
        assert exact.tolist()[::2] == [bool(rows[0] == 3), bool(rows[2] == 4)]
    assert seen == [3, 4, 5, 3]  # user 1's rows in turn, wrapping after K = 3
    assert all(bank.users[r] == 1 for r in seen)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=30), st.integers(0, 1000))
def test_user_derangement_is_a_permutation(users, seed):
    """Several offending rows swapped at once used to duplicate rows (two users [1, 1] -> not a permutation)."""
    users = np.asarray(users)
    perm, kept = user_derangement(users, seed)
    assert sorted(perm.tolist()) == list(range(len(users)))
    assert kept == int((users[perm] == users).sum())
    if np.bincount(users).max() * 2 <= len(users):      # a derangement exists: none may be left
        assert kept == 0


def sampled_bank(k=3):
    """make_bank's pairs, each with k sampled negatives (rows in sample blocks)."""
    base = make_bank()
    n = len(base)
    emb = np.concatenate([base.emb + s for s in range(k)])
    return NegativeBank(emb, np.tile(base.users, k), np.tile(base.items, k), "test",
                        samples=np.repeat(np.arange(k), n))


def test_rotation_visits_all_k_samples_in_order_across_epochs():
    bank = sampled_bank(k=3)
    index = RotatingIndex(bank, n_items=100)
    rng = np.random.default_rng(0)
    users, items = np.array([0, 1, 4]), np.array([0, 11, 24])   # exact pairs
    seen = []
    for epoch in range(6):
        for rule in ("pair", "user"):
            rows, exact = index.lookup(users, items, rule, rng, epoch)
            assert (rows >= 0).all() and exact.all()
            assert (bank.samples[rows] == epoch % 3).all()   # epoch e: sample e mod K
            assert (bank.users[rows] == users).all() and (bank.items[rows] == items).all()
        seen.append(rows)
    assert {int(r) for rows in seen[:3] for r in rows[:1]} == set(np.flatnonzero((bank.users == 0) & (bank.items == 0)))
    rows, exact = index.lookup(np.array([2]), np.array([99]), "user", rng, 4)  # a pair without its own negative
    assert bank.users[rows[0]] == 2 and bank.samples[rows[0]] == 1 and not exact[0]


def test_sampled_bank_file_keeps_the_samples_and_one_sample_files_are_unchanged(tmp_path):
    bank = sampled_bank(k=2)
    back = NegativeBank.load(bank.save(tmp_path / "b.npz"), "test")
    assert back.n_samples == 2 and (back.samples == bank.samples).all()
    assert (NegativeBank.load(io.BytesIO(bank.file_bytes(compact=True)), "t").samples == bank.samples).all()
    one = make_bank()
    with np.load(one.save(tmp_path / "one.npz")) as z:
        assert sorted(z.files) == ["emb", "items", "users"]
    assert (bank.randomized(1).samples == bank.samples).all() and (bank.shuffled(1).samples == bank.samples).all()
