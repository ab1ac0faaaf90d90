"""RLMRec-Con baseline: in-batch InfoNCE alignment of projected text embeddings; trains with the CF model."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset
from hnlm.data.interactions import Interactions
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.encoders import MiniLMEncoder
from hnlm.semantic import rlmrec
from hnlm.semantic.common import split_id_of
from hnlm.semantic.profiles import save_profiles
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
