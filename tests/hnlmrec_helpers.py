"""Shared pieces of the HNLMRec tests."""

import numpy as np

from hnlm.semantic.hnlmrec.queries import Teacher


def random_teacher(data, dim=8, seed=0):
    """Teacher vectors that do not matter to the test (the texts and data are real)."""
    rng = np.random.default_rng(seed)
    return Teacher(rng.standard_normal((data.n_users, dim)).astype(np.float32),
                   rng.standard_normal((data.n_items, dim)).astype(np.float32), {})
