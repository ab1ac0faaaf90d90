"""RLMRec-Con baseline: in-batch InfoNCE alignment of projected text embeddings; trains with the CF model."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hnlm.cf.extension import Batch, BatchEmb
from hnlm.cf.models import build_model
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset
from hnlm.data.interactions import Interactions
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.encoders import MiniLMEncoder
from hnlm.semantic import rlmrec
from hnlm.semantic.common import history_context, split_id_of
from hnlm.semantic.profiles import save_profiles
from hnlm.semantic.resources import rlmrec_text
from tests.cf_helpers import tiny_data


def test_unique_first():
    ids = torch.tensor([5, 3, 5, 9, 3])
    uniq, first = rlmrec.unique_first(ids)
    assert uniq.tolist() == [3, 5, 9] and first.tolist() == [1, 0, 3]


def test_info_nce_hand_computed():
    """Cross-entropy of cosine / tau logits with row i's target as the class: anchors (e1, e2), targets
    (e1, (e1 + e2) / sqrt2) given unnormalised, tau 0.5."""
    anchor = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    c, tau = 1 / math.sqrt(2), 0.5
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(0 / tau) + math.exp(c / tau)))
    assert float(rlmrec.info_nce(anchor, target, tau)) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_metadata_user_text_uses_training_titles_only():
    from hnlm.semantic.sns import title_of
    data = load_dataset("ml-100k", seed=0)
    users, items = rlmrec.metadata_texts(data)
    assert len(users) == data.n_users and len(items) == data.n_items
    for u in range(30):
        train_titles = {title_of(data, int(i)) for i in data.train_items(u)}
        for i in data.heldout_items(u):
            title = title_of(data, int(i))
            assert title in train_titles or title not in users[u], (u, title)


def test_projection_trains_with_the_cf_model():
    d = load_dataset("ml-100k", seed=0)
    n = 50
    small = Interactions(d.name, d.train[:n], d.valid[:n], d.test[:n], d.items, d.users.iloc[:n],
                         d.reviews[d.reviews["user"] < n], d.stats)
    rng = np.random.default_rng(0)
    ext = rlmrec.RLMRecExtension(rng.standard_normal((n, 12)), rng.standard_normal((d.n_items, 12)),
                                 rlmrec.RLMRecConfig(hidden=(8,)), source="random-test")
    result = train(small, TrainConfig(model="mf", dim=8, epochs=2, batch_size=1024, device="cpu"),
                   extension=ext, progress=False)
    torch.manual_seed(0)  # the same initialisation as setup() draws
    fresh = rlmrec.RLMRecExtension(rng.standard_normal((n, 12)), rng.standard_normal((d.n_items, 12)),
                                   rlmrec.RLMRecConfig(hidden=(8,)))
    fresh.setup(result["model"], small)
    assert any(not torch.allclose(a, b) for a, b in zip(fresh.proj.parameters(), ext.proj.parameters()))
    assert result["counts"]["rlmrec"]["mean_infonce"] > 0


def test_max_anchors_is_off_by_default_and_caps_the_infonce():
    from hnlm.cf.extension import Batch, BatchEmb
    from hnlm.cf.models import build_model
    d = load_dataset("ml-100k", seed=0)
    rng = np.random.default_rng(0)
    user_text, item_text = rng.standard_normal((d.n_users, 12)), rng.standard_normal((d.n_items, 12))
    g = torch.Generator().manual_seed(0)
    users, pos = torch.randint(0, d.n_users, (300,), generator=g), torch.randint(0, d.n_items, (300,), generator=g)
    emb = BatchEmb(torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g), torch.randn(300, 8))
    model = build_model("mf", d, 8, 1)
    losses = {}
    for cap in (0, 10_000, 16):
        ext = rlmrec.RLMRecExtension(user_text, item_text, rlmrec.RLMRecConfig(hidden=(8,), max_anchors=cap))
        ext.setup(model, d)
        calls = []
        real = rlmrec.info_nce
        rlmrec.info_nce = lambda a, t, tau: calls.append(len(a)) or real(a, t, tau)
        try:
            _, losses[cap] = ext.on_batch(Batch(users, pos, pos), emb)
        finally:
            rlmrec.info_nce = real
        expected = [len(users.unique()), len(pos.unique())] if cap != 16 else [16, 16]
        assert calls == expected
        assert ext.counts()["rlmrec"]["max_anchors"] == cap
    assert rlmrec.RLMRecConfig().max_anchors == 0                 # exact RLMRec-Con unless asked
    torch.testing.assert_close(losses[0], losses[10_000])          # a cap above the batch changes nothing
    assert not torch.isclose(losses[0], losses[16])


def test_text_embeddings_encode_the_chosen_texts_in_id_order():
    """3 users and 4 items; the real MiniLM (uncached) encodes metadata texts or saved profiles."""
    data = tiny_data({0: [0, 1], 1: [2], 2: [3, 1]}, {}, {}, 3, 4, name="rlmrec-text")
    encoder = MiniLMEncoder(cache=False)
    users, items = rlmrec.metadata_texts(data)
    got = rlmrec.text_embeddings(data, "metadata", encoder)
    assert np.array_equal(got[0], encoder.encode(users)) and np.array_equal(got[1], encoder.encode(items))

    def save(kind, ids):
        frame = pd.DataFrame({"id": ids, "ok": True, "summarization": [f"{kind} {i} profile" for i in ids]})
        save_profiles(frame, data.name, "test-llm", kind, split_id_of(data))
    save("item", [0, 1, 2, 3])
    save("user", [0, 2])
    with pytest.raises(MissingInputError, match=r"lack users \[1\] / items \[\]"):
        rlmrec.text_embeddings(data, "profiles", encoder, "test-llm")
    save("user", [1])
    got = rlmrec.text_embeddings(data, "profiles", encoder, "test-llm")
    assert np.array_equal(got[0], encoder.encode([f"user {u} profile" for u in range(3)]))
    assert np.array_equal(got[1], encoder.encode([f"item {i} profile" for i in range(4)]))
    with pytest.raises(UserFacingError, match="profiles-llm"):
        rlmrec.text_embeddings(data, "profiles", encoder)
    with pytest.raises(ValueError, match="metadata"):
        rlmrec.text_embeddings(data, "titles", encoder)


def test_info_nce_normalises_each_row():
    """Anchors (3, 4), (0, 1) are rows (0.6, 0.8), e2 once normalised; targets e1, 2 e2 are e1, e2; tau 1."""
    anchor = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected = (-math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))
                - math.log(math.exp(1) / (math.exp(0) + math.exp(1)))) / 2
    assert float(rlmrec.info_nce(anchor, target, 1.0)) == pytest.approx(expected, rel=1e-6)


def extension(n_users=3, n_items=4, text_dim=5, **config):
    rng = np.random.default_rng(0)
    return rlmrec.RLMRecExtension(rng.standard_normal((n_users, text_dim)), rng.standard_normal((n_items, text_dim)),
                                  rlmrec.RLMRecConfig(**config))


TINY = tiny_data({0: [0, 1], 1: [2], 2: [3, 1]}, {}, {}, 3, 4, name="rlmrec-tiny")


def test_defaults_refusals_and_only_the_projection_is_saved():
    ext = extension(hidden=())
    assert ext.source == "profiles" and ext.seed == 0 and ext.proj is None
    assert ext.user_text.dtype == torch.float32
    with pytest.raises(ValueError, match="^user and item text embeddings must have the same dimension$"):
        rlmrec.RLMRecExtension(np.zeros((3, 5)), np.zeros((4, 6)))
    model = build_model("mf", TINY, 4, 1)
    with pytest.raises(ValueError, match="^text embeddings for 2 users / 4 items, dataset has 3 / 4$"):
        extension(n_users=2).setup(model, TINY)
    with pytest.raises(ValueError, match="^text embeddings for 3 users / 5 items, dataset has 3 / 4$"):
        extension(n_items=5).setup(model, TINY)
    ext.setup(model, TINY)
    assert set(ext.state_dict()) == {"proj.0.weight", "proj.0.bias"}  # the text tables are not saved


def test_projection_is_linear_layers_with_leaky_relu_between():
    ext = extension(text_dim=12, hidden=(6, 5))
    ext.setup(build_model("mf", TINY, 4, 1), TINY)
    assert [type(m) for m in ext.proj] == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in ext.proj[::2]] == [(12, 6), (6, 5), (5, 4)]


def test_loss_is_the_weighted_infonce_of_first_occurrences_and_counts_average_it():
    ext = extension(weight=0.5, tau=0.3, hidden=(3,))
    ext.setup(build_model("mf", TINY, 4, 1), TINY)
    g = torch.Generator().manual_seed(0)
    emb = BatchEmb(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g))
    users, pos = torch.tensor([2, 0, 2]), torch.tensor([1, 1, 3])  # users 0, 2 first at 1, 0; items 1, 3 at 0, 2
    out, loss = ext.on_batch(Batch(users, pos, pos), emb)
    first = (rlmrec.info_nce(emb.user[[1, 0]], ext.proj(ext.user_text[[0, 2]]), 0.3)
             + rlmrec.info_nce(emb.pos[[0, 2]], ext.proj(ext.item_text[[1, 3]]), 0.3)).detach()
    assert out is emb
    torch.testing.assert_close(loss, 0.5 * first)
    settings = {"text_source": "profiles", "weight": 0.5, "tau": 0.3, "hidden": [3], "text_dim": 5, "max_anchors": 0}
    assert ext.counts() == {"rlmrec": {**settings, "mean_infonce": pytest.approx(float(first))}}
    _, loss2 = ext.on_batch(Batch(users[:2], pos[:2], pos[:2]), BatchEmb(emb.user[:2], emb.pos[:2], emb.neg[:2]))
    second = float(loss2) / 0.5
    assert ext.counts() == {"rlmrec": {**settings, "mean_infonce": pytest.approx((float(first) + second) / 2)}}


def test_one_anchor_leaves_infonce_nothing_to_contrast():
    ext = extension(max_anchors=1, hidden=())
    ext.setup(build_model("mf", TINY, 4, 1), TINY)
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3])
    _, loss = ext.on_batch(Batch(users, pos, pos), BatchEmb(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)))
    assert float(loss) == 0.0  # one anchor, one candidate: cross-entropy 0 for users and items


def test_subsample_draws_from_its_own_generator_seeded_once():
    ext = rlmrec.RLMRecExtension(np.zeros((3, 2)), np.zeros((3, 2)), rlmrec.RLMRecConfig(max_anchors=3), seed=4)
    ids, first = torch.arange(10) * 2, torch.arange(10) + 100
    small = ext._subsample(ids[:3], first[:3])                # no more than the cap: kept, nothing drawn
    assert torch.equal(small[0], ids[:3]) and torch.equal(small[1], first[:3])
    torch.manual_seed(99)                                     # the global generator plays no part
    draws = [ext._subsample(ids, first) for _ in range(2)]
    g = torch.Generator().manual_seed(4)
    for got in draws:
        keep = torch.randperm(10, generator=g)[:3].sort().values
        assert torch.equal(got[0], ids[keep]) and torch.equal(got[1], first[keep])


def test_metadata_user_text_draws_its_titles_with_seed_zero_and_the_user():
    data = tiny_data({0: list(range(10)), 1: [2, 4]}, {}, {}, 2, 10, name="rlmrec-meta")
    users, _ = rlmrec.metadata_texts(data)
    assert users == [history_context(data, u, np.random.default_rng([0, u])) for u in range(2)]
    assert users[1] == "liked 2; 4."


def test_missing_profiles_name_the_first_five_users_and_items():
    data = tiny_data({u: [u] for u in range(7)}, {}, {}, 7, 7, name="rlmrec-lacking")
    for kind in ("user", "item"):
        frame = pd.DataFrame({"id": [6], "ok": True, "summarization": [f"{kind} 6 profile"]})
        save_profiles(frame, data.name, "test-llm", kind, split_id_of(data))
    with pytest.raises(MissingInputError, match=r"lack users \[0, 1, 2, 3, 4\] / items \[0, 1, 2, 3, 4\] \(first"):
        rlmrec.text_embeddings(data, "profiles", MiniLMEncoder(cache=False), "test-llm")


def test_every_rlmrec_setting_reaches_the_extension():
    """rlmrec-con's build passes each RLMRecConfig field of its settings on (derived, not copied by hand:
    a new field cannot be listed by `hnlm methods` and dropped at training)."""
    from hnlm.methods import get_method

    method = get_method("rlmrec-con")
    def other(value):
        return (7, 3) if isinstance(value, tuple) else value * 2 + 1

    changed = {f.name: other(f.default) for f in dataclasses.fields(rlmrec.RLMRecConfig)}
    settings = method.make_settings(**changed)
    text = np.zeros((3, 4), np.float32)
    _, ext = method.build(None, settings, {rlmrec_text("profiles"): (text, text)}, 0)
    assert dataclasses.asdict(ext.config) == changed != dataclasses.asdict(rlmrec.RLMRecConfig())

