"""Small real datasets for the CF tests (built with the data layer's Interactions class)."""

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from hnlm.cf.models import MF
from hnlm.data.interactions import Interactions


def csr(rows, n_users, n_items):
    """CSR from {user: [items]}."""
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))
    m.sort_indices()
    return m


def tiny_data(train, valid, test, n_users, n_items, name="tiny"):
    items = pd.DataFrame({"original_id": [str(i) for i in range(n_items)]})
    users = pd.DataFrame({"original_id": [str(u) for u in range(n_users)]})
    reviews = pd.DataFrame({"user": [], "item": [], "review": [], "split": []})
    return Interactions(name, csr(train, n_users, n_items), csr(valid, n_users, n_items),
                        csr(test, n_users, n_items), items, users, reviews)


def fixed_scores_model(scores):
    """A real MF whose item embeddings are the identity, so user u's scores are scores[u]."""
    n_users, n_items = len(scores), len(scores[0])
    model = MF(n_users, n_items, n_items)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor(scores, dtype=torch.float32))
        model.item_emb.weight.copy_(torch.eye(n_items))
    return model
