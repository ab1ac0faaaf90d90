"""RLMRec-Con baseline: in-batch InfoNCE alignment of projected text embeddings; trains with the CF model."""

import numpy as np
import torch

from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset
from hnlm.data.interactions import Interactions
from hnlm.semantic import rlmrec


def test_unique_first():
    ids = torch.tensor([5, 3, 5, 9, 3])
    uniq, first = rlmrec.unique_first(ids)
    assert uniq.tolist() == [3, 5, 9] and first.tolist() == [1, 0, 3]


def test_info_nce_prefers_matching_rows():
    a = torch.eye(4)
    assert rlmrec.info_nce(a, a, 0.2) < rlmrec.info_nce(a, a.roll(1, 0), 0.2)


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
