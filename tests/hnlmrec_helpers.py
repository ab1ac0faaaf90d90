"""Shared pieces of the HNLMRec tests."""

import numpy as np

from hnlm.semantic.hnlmrec.finetune import PairDataset
from hnlm.semantic.hnlmrec.queries import Teacher


def random_teacher(data, dim=8, seed=0):
    """Teacher vectors that do not matter to the test (the texts and data are real)."""
    rng = np.random.default_rng(seed)
    return Teacher(rng.standard_normal((data.n_users, dim)).astype(np.float32),
                   rng.standard_normal((data.n_items, dim)).astype(np.float32), {})


def random_pairs(texts, out_dim=384, cf_dim=8, seed=0):
    """A PairDataset of `texts` with random unit targets and interacted items and random CF vectors."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(texts)
    return PairDataset(texts, unit(rng.standard_normal((n, out_dim))), unit(rng.standard_normal((n, out_dim))),
                       rng.standard_normal((n, cf_dim)), rng.standard_normal((n, cf_dim)))
