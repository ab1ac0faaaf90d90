"""Sampler invariants: never a training positive, DNS = max of its candidates, PNS follows popularity,
the table hook counts its fallbacks."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hnlm.cf import samplers
from hnlm.cf.models import LightGCN
from hnlm.cf.samplers import (
    DENS,
    DNS,
    DNSMN,
    PNS,
    SAMPLERS,
    PositiveIndex,
    Sampler,
    SamplerContext,
    TableSampler,
    get_sampler,
)
from hnlm.data import load_dataset
from tests.cf_helpers import tiny_data


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k", seed=0)


def make_ctx(data, seed=0, model=None, epoch=0):
    gen = torch.Generator().manual_seed(seed)
    ctx = SamplerContext(PositiveIndex(data.train, "cpu"),
                         torch.from_numpy(data.train_popularity()).float(), gen, epoch=epoch)
    if model is not None:
        ctx.layers = model.layer_embeddings()
        ctx.user_emb, ctx.item_emb = model.combine(ctx.layers)
    return ctx


def train_pairs(data, n, seed=0):
    coo = data.train.tocoo()
    pick = np.random.default_rng(seed).choice(len(coo.row), size=n, replace=False)
    return torch.from_numpy(coo.row[pick].astype(np.int64)), torch.from_numpy(coo.col[pick].astype(np.int64))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_never_a_training_positive(ml100k, name):
    torch.manual_seed(0)
    model = LightGCN(ml100k.n_users, ml100k.n_items, 16, ml100k.train, layers=2)
    sampler = get_sampler(name)
    sampler.setup(model, ml100k)
    users, pos = train_pairs(ml100k, 4096)
    ctx = make_ctx(ml100k, model=model)
    negs = sampler.sample(users, pos, model, ctx)
    assert negs.items.shape == (4096,)
    dense = ml100k.train.toarray().astype(bool)
    assert not dense[users.numpy(), negs.items.numpy()].any()
    if negs.emb is not None:
        assert negs.emb.shape == (4096, 16)


def test_sorted_key_index_agrees_with_bitmap(ml100k, monkeypatch):
    users = torch.randint(0, ml100k.n_users, (2000,), generator=torch.Generator().manual_seed(1))
    items = torch.randint(0, ml100k.n_items, (2000, 7), generator=torch.Generator().manual_seed(2))
    dense = PositiveIndex(ml100k.train, "cpu")
    monkeypatch.setattr(PositiveIndex, "DENSE_LIMIT", 0)
    keyed = PositiveIndex(ml100k.train, "cpu")
    assert dense.dense and not keyed.dense
    truth = ml100k.train.toarray().astype(bool)[users.numpy()[:, None], items.numpy()]
    assert torch.equal(dense.contains(users, items), torch.from_numpy(truth))
    assert torch.equal(keyed.contains(users, items), torch.from_numpy(truth))


def test_nearly_full_row_gets_its_only_negative():
    # user 0 has every item but item 7: rejection keeps failing, the exact fallback must find 7.
    data = tiny_data(train={0: [i for i in range(50) if i != 7], 1: [1]}, valid={}, test={}, n_users=2,
                     n_items=50)
    ctx = make_ctx(data)
    users = torch.zeros(300, dtype=torch.long)
    items = ctx.positives.uniform(users, 3, ctx.generator)
    assert (items == 7).all()
    assert ctx.positives.counts["redrawn"] > 0


def test_dns_picks_the_best_candidate(ml100k):
    torch.manual_seed(0)
    model = LightGCN(ml100k.n_users, ml100k.n_items, 16, ml100k.train, layers=2)
    users, pos = train_pairs(ml100k, 1000)
    ctx_a, ctx_b = make_ctx(ml100k, seed=5, model=model), make_ctx(ml100k, seed=5, model=model)
    cands = ctx_a.positives.uniform(users, 16, ctx_a.generator)   # the same draws DNS will make
    chosen = get_sampler("dns", candidates=16).sample(users, pos, model, ctx_b).items
    with torch.no_grad():
        scores = (ctx_a.user_emb[users, None] * ctx_a.item_emb[cands]).sum(-1)
    expected = cands[torch.arange(len(users)), scores.argmax(1)]
    assert torch.equal(chosen, expected)
    # and it is harder than a uniform negative on average
    uniform = cands[:, 0]
    with torch.no_grad():
        def s(items):
            return (ctx_a.user_emb[users] * ctx_a.item_emb[items]).sum(-1).mean()
        assert s(chosen) > s(uniform)


def test_dns_mn_stays_in_top_n(ml100k):
    torch.manual_seed(0)
    model = LightGCN(ml100k.n_users, ml100k.n_items, 16, ml100k.train, layers=1)
    users, pos = train_pairs(ml100k, 1000)
    ctx_a, ctx_b = make_ctx(ml100k, seed=3, model=model), make_ctx(ml100k, seed=3, model=model)
    cands = ctx_a.positives.uniform(users, 10, ctx_a.generator)
    chosen = get_sampler("dns-mn", candidates=10, top=3).sample(users, pos, model, ctx_b).items
    with torch.no_grad():
        scores = (ctx_a.user_emb[users, None] * ctx_a.item_emb[cands]).sum(-1)
    top3 = cands.gather(1, scores.topk(3, dim=1).indices)
    assert (top3 == chosen[:, None]).any(1).all()
    assert not (cands.gather(1, scores.argmax(1, keepdim=True))[:, 0] == chosen).all()


def test_pns_follows_popularity():
    # popularity from users 1..; user 0 has no training items, so its negatives follow (pop + 1) ** beta.
    rng = np.random.default_rng(0)
    n_items = 20
    pops = np.arange(n_items) * 3
    rows = {u: [] for u in range(1, 61)}
    for i, p in enumerate(pops):
        for u in rng.choice(60, size=p, replace=False) + 1:
            rows[int(u)].append(i)
    data = tiny_data(train={0: [], **rows}, valid={}, test={}, n_users=61, n_items=n_items)
    ctx = make_ctx(data)
    n = 200_000
    negs = get_sampler("pns", beta=0.75).sample(torch.zeros(n, dtype=torch.long), None, None, ctx).items
    freq = np.bincount(negs.numpy(), minlength=n_items) / n
    expected = (pops + 1.0) ** 0.75
    expected /= expected.sum()
    assert np.abs(freq - expected).max() < 0.005
    assert np.corrcoef(freq, expected)[0, 1] > 0.999


def test_mixgcf_negative_is_a_mix_with_gradient(ml100k):
    torch.manual_seed(0)
    model = LightGCN(ml100k.n_users, ml100k.n_items, 8, ml100k.train, layers=2)
    users, pos = train_pairs(ml100k, 256)
    ctx = make_ctx(ml100k, model=model)
    negs = get_sampler("mixgcf", candidates=8).sample(users, pos, model, ctx)
    assert negs.emb.requires_grad
    with torch.no_grad():   # a synthetic mix: neither the positive's nor the chosen item's own embedding
        for own in (ctx.item_emb[pos], ctx.item_emb[negs.items]):
            assert ((negs.emb - own).norm(dim=1) > 1e-4).float().mean() > 0.99
    negs.emb.sum().backward()
    assert model.item_emb.weight.grad.abs().sum() > 0


def test_table_sampler_counts_fallbacks(ml100k):
    users = torch.tensor([0, 0, 1, 2])
    pos = torch.from_numpy(np.array([ml100k.train_items(0)[0], ml100k.train_items(0)[1],
                                     ml100k.train_items(1)[0], ml100k.train_items(2)[0]]))
    not_seen = int(np.setdiff1d(np.arange(ml100k.n_items), ml100k.train_items(0))[0])
    seen = int(ml100k.train_items(1)[3])
    # rows: (0, pos0) -> a valid negative; (1, pos) -> one of user 1's positives (must be replaced);
    # (0, pos1) and (2, pos) are missing.
    sampler = get_sampler("table", users=[0, 1], pos=[int(pos[0]), int(pos[2])], neg=[not_seen, seen],
                          n_items=ml100k.n_items, source="test")
    negs = sampler.sample(users, pos, None, make_ctx(ml100k))
    assert int(negs.items[0]) == not_seen
    dense = ml100k.train.toarray().astype(bool)
    assert not dense[users.numpy(), negs.items.numpy()].any()
    c = sampler.counts()["table_sampler"]
    assert (c["pairs"], c["from_table"], c["missing"], c["table_was_positive"]) == (4, 1, 2, 1)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("nope")


def test_ahns_picks_the_candidate_closest_to_its_target(ml100k):
    torch.manual_seed(0)
    model = LightGCN(ml100k.n_users, ml100k.n_items, 16, ml100k.train, layers=1)
    users, pos = train_pairs(ml100k, 500)
    ctx_a, ctx_b = make_ctx(ml100k, seed=9, model=model), make_ctx(ml100k, seed=9, model=model)
    cands = ctx_a.positives.uniform(users, 8, ctx_a.generator)
    chosen = get_sampler("ahns", candidates=8, alpha=1.0, beta=0.5, p=-2.0).sample(users, pos, model, ctx_b).items
    with torch.no_grad():
        u = ctx_a.user_emb[users]
        s_pos = (u * ctx_a.item_emb[pos]).sum(-1, keepdim=True)
        s_neg = (u[:, None] * ctx_a.item_emb[cands]).sum(-1)
        target = 0.5 / (s_pos + 1.0)          # beta * (s_pos + alpha) ** (p + 1) with p = -2
    expected = cands.gather(1, (s_neg - target).abs().argmin(1, keepdim=True))[:, 0]
    assert torch.equal(chosen, expected)


def test_only_training_positives_shape_the_draws():
    # user 0's non-training items are exactly its valid and test items: uniform draws must return them
    # (held-out items are neither excluded nor preferred: the index knows only the training matrix).
    data = tiny_data(train={0: [0, 1, 2, 3], 1: [4]}, valid={0: [4]}, test={0: [5]}, n_users=2, n_items=6)
    ctx = make_ctx(data)
    draws = ctx.positives.uniform(torch.zeros(4000, dtype=torch.long), 1, ctx.generator)[:, 0]
    counts = np.bincount(draws.numpy(), minlength=6)
    assert counts[:4].sum() == 0 and abs(counts[4] - counts[5]) < 300


def test_layer_scores_product_and_gather_agree(monkeypatch):
    # the two ways of layer_scores (one user x layer-table product read at the candidates, or gathered
    # candidate rows) must give the same scores, in the reference's [pairs, candidates, layers] layout
    g = torch.Generator().manual_seed(0)
    user_vecs = torch.randn(30, 8, generator=g)
    item_layers = [torch.randn(50, 8, generator=g) for _ in range(4)]
    users, cands = torch.randint(0, 30, (40,), generator=g), torch.randint(0, 50, (40, 7), generator=g)
    expected = torch.stack([(user_vecs[users, None] * item[cands]).sum(-1) for item in item_layers], dim=2)
    for ratio in (0, 10 ** 6):   # 0: always gather; 10 ** 6: always the product
        monkeypatch.setattr(samplers, "PRODUCT_VS_GATHER", ratio)
        torch.testing.assert_close(samplers.layer_scores(user_vecs, item_layers, users, cands), expected)


def test_positive_index_is_a_bitmap_up_to_the_dense_limit_and_starts_with_zero_counts(monkeypatch):
    data = tiny_data(train={0: [1], 1: [2], 2: [4]}, valid={}, test={}, n_users=3, n_items=5)   # 15 cells
    monkeypatch.setattr(PositiveIndex, "DENSE_LIMIT", 15)
    index = PositiveIndex(data.train, "cpu")
    assert index.dense and index.counts == {"draws": 0, "redrawn": 0, "exact_fallback": 0}
    monkeypatch.setattr(PositiveIndex, "DENSE_LIMIT", 14)
    assert not PositiveIndex(data.train, "cpu").dense


def test_sorted_key_index_at_its_first_and_last_keys_and_when_empty(monkeypatch):
    monkeypatch.setattr(PositiveIndex, "DENSE_LIMIT", 0)
    data = tiny_data(train={0: [1], 1: [2]}, valid={}, test={}, n_users=3, n_items=5)   # keys 1 and 7
    keyed = PositiveIndex(data.train, "cpu")
    found = keyed.contains(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([1, 2, 3, 4, 0]))   # keys 1, 7, 8, 14, 0
    assert found.tolist() == [True, True, False, False, False]
    empty = PositiveIndex(tiny_data(train={}, valid={}, test={}, n_users=2, n_items=3).train, "cpu")
    none = empty.contains(torch.tensor([0, 1]), torch.tensor([[0, 2], [1, 1]]))
    assert none.dtype == torch.bool and none.tolist() == [[False, False], [False, False]]


def test_exclude_redraws_only_the_positives_until_none_is_left():
    # user 0 owns items 0 and 1: round 1 redraws the two positives (to 1 and 3), round 2 the remaining one
    index = PositiveIndex(tiny_data(train={0: [0, 1]}, valid={}, test={}, n_users=1, n_items=4).train, "cpu")
    calls, answers = [], [torch.tensor([1, 3]), torch.tensor([2])]

    def redraw(n):
        calls.append(n)
        return answers[len(calls) - 1]

    out = index.exclude(torch.tensor([0]), torch.tensor([[0, 1, 2]]), redraw)
    assert out.tolist() == [[2, 3, 2]] and calls == [2, 1]
    assert index.counts == {"draws": 3, "redrawn": 3, "exact_fallback": 0}


def test_exact_fallback_is_uniform_over_the_row_deterministic_and_counted(monkeypatch):
    # no redraw rounds: every positive goes to the exact fallback. User 0's non-positives are 4 and 5,
    # user 1's are 3 and 5 (item 4 of user 1 and item 5 of user 2 must not leak into a neighbour's row).
    monkeypatch.setattr(PositiveIndex, "MAX_ROUNDS", 0)
    data = tiny_data(train={0: [0, 1, 2, 3], 1: [0, 1, 2, 4], 2: [5]}, valid={}, test={}, n_users=3, n_items=6)
    index = PositiveIndex(data.train, "cpu")
    users = torch.tensor([0] * 20 + [1] * 20)
    items = torch.zeros(40, 1, dtype=torch.long)
    first = index.exclude(users, items, None)
    assert set(first[:20, 0].tolist()) == {4, 5} and set(first[20:, 0].tolist()) == {3, 5}
    assert torch.equal(index.exclude(users, items, None), first)
    assert index.counts["exact_fallback"] == 80


def test_a_user_with_every_item_has_no_negative():
    data = tiny_data(train={0: [0, 1, 2]}, valid={}, test={}, n_users=1, n_items=3)
    ctx = make_ctx(data)
    with pytest.raises(ValueError, match="^user 0 has interacted with every item: no negative exists$"):
        ctx.positives.uniform(torch.tensor([0]), 1, ctx.generator)


def test_uniform_draws_reach_every_item_including_the_first():
    ctx = make_ctx(tiny_data(train={}, valid={}, test={}, n_users=1, n_items=3))
    draws = ctx.positives.uniform(torch.zeros(300, dtype=torch.long), 1, ctx.generator)
    assert np.bincount(draws.numpy().ravel(), minlength=3).min() > 0


def test_describe_lists_the_public_scalar_settings():
    class Custom(Sampler):
        name = "custom"

        def __init__(self):
            self.candidates, self.label, self.table, self._hidden = 3, "x", [1, 2], 4

    assert Custom().describe() == {"name": "custom", "candidates": 3, "label": "x"}


def test_constructor_defaults_and_option_bounds():
    assert (PNS().beta, DNS().candidates, DNSMN().candidates, DNSMN().top) == (0.75, 32, 32, 5)
    assert DENS().gates is None and DENS(warmup=0.5).warmup == 0.5
    assert (DNSMN(candidates=4, top=1).top, DNSMN(candidates=4, top=4).top) == (1, 4)
    for top in (0, 5):
        with pytest.raises(ValueError) as err:
            DNSMN(candidates=4, top=top)
        assert str(err.value) == "dns-mn needs 1 <= top <= candidates"


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(ValueError) as err:
        get_sampler("nope")
    assert str(err.value) == "unknown sampler 'nope': choose one of rns, pns, dns, dns-mn, mixgcf, dens, ahns, table"


def small_model_ctx(seed):
    data = tiny_data(train={0: [0, 1], 1: [2], 2: [1, 3, 4]}, valid={}, test={}, n_users=3, n_items=12)
    torch.manual_seed(0)
    model = LightGCN(3, 12, 4, data.train, layers=2)
    return data, model, make_ctx(data, seed=seed, model=model)


def test_rns_and_pns_draws_come_from_the_context_generator():
    data, _, ctx = small_model_ctx(seed=4)
    users = torch.tensor([0, 1, 2, 0])
    expected = PositiveIndex(data.train, "cpu").uniform(users, 1, torch.Generator().manual_seed(4))[:, 0]
    torch.manual_seed(123)   # the global RNG must play no part
    assert torch.equal(get_sampler("rns").sample(users, None, None, ctx).items, expected)
    # PNS for users without positives is exactly the multinomial of (popularity + 1) ** beta
    pop = tiny_data(train={1: [0, 1], 2: [0]}, valid={}, test={}, n_users=3, n_items=3)
    pctx = make_ctx(pop, seed=6)
    weights = (torch.tensor([2.0, 1.0, 0.0]) + 1.0) ** 0.5
    expected = torch.multinomial(weights, 50, replacement=True, generator=torch.Generator().manual_seed(6))
    negs = PNS(beta=0.5).sample(torch.zeros(50, dtype=torch.long), None, None, pctx).items
    assert torch.equal(negs, expected)


def test_dns_mn_picks_uniformly_among_the_top_n_with_the_context_generator():
    data, model, ctx = small_model_ctx(seed=2)
    users = torch.tensor([0, 1, 2, 0, 1, 2] * 10)
    gen = torch.Generator().manual_seed(2)
    cands = PositiveIndex(data.train, "cpu").uniform(users, 6, gen)
    with torch.no_grad():
        scores = (ctx.user_emb[users, None] * ctx.item_emb[cands]).sum(-1)
    pick = torch.randint(0, 3, (len(users), 1), generator=gen)
    expected = cands.gather(1, scores.topk(3, dim=1).indices.gather(1, pick))[:, 0]
    assert set(pick[:, 0].tolist()) == {0, 1, 2}
    assert torch.equal(DNSMN(candidates=6, top=3).sample(users, None, model, ctx).items, expected)


def test_dens_draws_its_candidates_from_the_context_generator():
    data, model, ctx = small_model_ctx(seed=5)
    torch.manual_seed(0)
    dens = DENS(candidates=4)
    dens.setup(model, data)
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3])
    cands = PositiveIndex(data.train, "cpu").uniform(users, 4, torch.Generator().manual_seed(5))
    assert torch.equal(dens.sample(users, pos, model, ctx).items, dens.select(users, pos, cands, ctx).items)


def test_table_sampler_counts_accumulate_over_batches_and_fill_from_the_context_generator():
    data = tiny_data(train={0: [0, 1], 1: [2]}, valid={}, test={}, n_users=2, n_items=5)
    sampler = TableSampler([0, 1], [0, 2], [3, 2], n_items=5)         # (1, 2) -> 2, a positive of user 1
    ctx = make_ctx(data, seed=8)
    users, pos = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2])
    fill = PositiveIndex(data.train, "cpu").uniform(users, 1, torch.Generator().manual_seed(8))[:, 0]
    assert sampler.sample(users, pos, None, ctx).items.tolist() == [3, *fill[1:].tolist()]
    sampler.sample(torch.tensor([1, 0]), torch.tensor([2, 0]), None, ctx)
    assert sampler.counts() == {"table_sampler": {"pairs": 5, "from_table": 2, "missing": 1, "table_was_positive": 2,
                                                  "source": "table", "fallback": "uniform non-positive draw"}}


def test_table_sampler_uses_the_first_row_given_for_a_pair():
    # 32 rows, 8 per (user, item 0) pair: the first row of each pair wins (a stable sort of the keys)
    data = tiny_data(train={u: [0] for u in range(4)}, valid={}, test={}, n_users=4, n_items=40)
    sampler = TableSampler([i % 4 for i in range(32)], [0] * 32, list(range(1, 33)), n_items=40)
    negs = sampler.sample(torch.arange(4), torch.zeros(4, dtype=torch.long), None, make_ctx(data))
    assert negs.items.tolist() == [1, 2, 3, 4]


def test_table_sampler_keys_do_not_overflow_with_int32_ids():
    # 70,000 * 40,000 does not fit in int32: the keys must be built in int64
    n_users, n_items = 70_001, 40_000
    ctx = SamplerContext(PositiveIndex(sp.csr_matrix((n_users, n_items), dtype=np.float32), "cpu"),
                         torch.zeros(n_items), torch.Generator().manual_seed(0))
    ids = np.array([70_000], dtype=np.int32)
    sampler = TableSampler(ids, np.array([5], dtype=np.int32), np.array([7], dtype=np.int32), n_items=n_items)
    assert sampler.sample(torch.tensor([70_000]), torch.tensor([5]), None, ctx).items.tolist() == [7]


def test_table_sampler_on_a_one_item_catalogue_falls_back_to_that_item():
    data = tiny_data(train={}, valid={}, test={}, n_users=2, n_items=1)
    sampler = TableSampler([], [], [], n_items=1)
    assert sampler.sample(torch.tensor([0, 1]), torch.tensor([0, 0]), None, make_ctx(data)).items.tolist() == [0, 0]
