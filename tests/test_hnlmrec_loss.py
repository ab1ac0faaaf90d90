"""The fine-tuning objective and quality measure, on tiny fixed tensors: the paper's objective is content
with collinear outputs, InfoNCE over the batch's targets separates them; the measure sees the difference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hnlm.semantic.hnlmrec.finetune import finetune_quality, mean_pairwise_cosine
from hnlm.semantic.hnlmrec.model import SAME_TARGET_COS, contrastive_loss, pool_last

B, D, H = 8, 16, 32


def batch():
    """Targets p and interacted items n sharing a common direction (as MiniLM item embeddings do), and
    encoder inputs that are one large shared vector plus a small per-query part (as pooled LLM states)."""
    g = torch.Generator().manual_seed(0)
    common = F.normalize(torch.randn(D, generator=g), dim=0)
    p = F.normalize(common + 0.8 * F.normalize(torch.randn(B, D, generator=g), dim=1), dim=1)
    n = F.normalize(common + 0.8 * F.normalize(torch.randn(B, D, generator=g), dim=1), dim=1)
    x = 3 * torch.randn(H, generator=g) + 0.3 * torch.randn(B, H, generator=g)
    return x, p, n


def train_linear_encoder(objective, steps=80):
    x, p, n = batch()
    torch.manual_seed(1)
    head = torch.nn.Linear(H, D)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = contrastive_loss(F.normalize(head(x), dim=1), p, n, 0.05, objective)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.normalize(head(x), dim=1), p, n


def test_paper_objective_leaves_outputs_collinear_and_infonce_separates_them():
    q_paper, p, n = train_linear_encoder("paper")
    q_nce, _, _ = train_linear_encoder("infonce")
    assert mean_pairwise_cosine(p.numpy()) < 0.7
    # the paper's loss is already low (about 0.05) while the outputs are one vector
    assert float(contrastive_loss(q_paper, p, n, 0.05, "paper")) < 0.1
    assert mean_pairwise_cosine(q_paper.numpy()) > 0.95
    assert mean_pairwise_cosine(q_nce.numpy()) < 0.5
    # each separated output is closest to its own target
    assert (torch.argmax(q_nce @ p.T, dim=1) == torch.arange(B)).all()
    # InfoNCE sees the collapse: at the collinear outputs it is far above its value at the separated ones
    assert float(contrastive_loss(q_paper, p, n, 0.05, "infonce")) > \
        10 * float(contrastive_loss(q_nce, p, n, 0.05, "infonce"))


def test_infonce_ignores_another_query_with_the_same_target():
    _, p, n = batch()
    p = p.clone()
    p[1] = p[0]
    q = p.clone()
    q[1] = q[0]  # two queries sharing one target: their outputs may coincide without penalty
    alone = contrastive_loss(q[[0, 2, 3]], p[[0, 2, 3]], n[[0, 2, 3]], 0.05)
    assert float(contrastive_loss(q, p, n, 0.05)) < float(alone) + 0.5
    with pytest.raises(ValueError, match="objective"):
        contrastive_loss(q, p, n, 0.05, "other")


def log_sum_exp(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def softplus(x):
    return math.log1p(math.exp(x))


def test_both_objectives_by_hand():
    """Cosines q.p = [[1, .6], [0, .8]] and q.n = [[0, -1], [1, 0]], tau 0.5; inputs need not be unit length."""
    q = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    n = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    infonce = ((log_sum_exp(2, 1.2, 0, -2) - 2) + (log_sum_exp(0, 1.6, 2, 0) - 1.6)) / 2
    assert float(contrastive_loss(q, p, n, 0.5)) == pytest.approx(infonce, rel=1e-6)
    # paper: softplus(-(cos(q_i, p_i) - cos(q_i, n_j)) / tau) over all i, j
    paper = (softplus(-2) + softplus(-4) + softplus(0.4) + softplus(-1.6)) / 4
    assert float(contrastive_loss(q, p, n, 0.5, "paper")) == pytest.approx(paper, rel=1e-6)
    assert float(contrastive_loss(q, p, n)) == float(contrastive_loss(q, p, n, 0.05, "infonce"))


def test_infonce_masks_the_same_target_of_another_query_by_hand():
    q, p, n = torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # row 0: [1, masked, 0, 0] / .5; row 1: [masked, 0, 1, 1] / .5, its positive is column 1
    expected = ((log_sum_exp(2, 0, 0) - 2) + log_sum_exp(0, 2, 2)) / 2
    assert float(contrastive_loss(q, p, n, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_last_token_pooling_skips_padding_on_either_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(pool_last(hidden, right), torch.stack([hidden[0, 1], hidden[1, 3]]))
    torch.testing.assert_close(pool_last(hidden, left), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert pool_last(hidden.to(torch.bfloat16), right).dtype == torch.float32


def test_quality_measure_separates_a_collapsed_encoder_from_a_good_one():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((200, D))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    targets = rng.choice(200, size=30, replace=False)
    candidates = np.stack([rng.choice(np.setdiff1d(np.arange(200), [t]), 19, replace=False) for t in targets])
    good = items[targets] + 0.3 * rng.standard_normal((30, D))
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    collapsed = np.ones((30, D)) + 0.03 * items[targets]
    collapsed /= np.linalg.norm(collapsed, axis=1, keepdims=True)
    g = finetune_quality(good, items, targets, candidates)
    c = finetune_quality(collapsed, items, targets, candidates)
    assert g["candidates"] == 20 and g["target_rank_chance"] == 10.5
    assert g["target_rank_mean"] < 2 < c["target_rank_mean"]
    assert g["emitted_mean_pairwise_cosine"] < 0.2 and c["emitted_mean_pairwise_cosine"] > 0.99
    assert abs(g["target_mean_pairwise_cosine"]) < 0.2
    assert mean_pairwise_cosine(np.eye(3)) == 0.0


def test_infonce_keeps_a_target_at_exactly_the_same_target_cosine_as_a_negative():
    """Targets e1 and (c, s) with c = SAME_TARGET_COS in float32: not above it, so not masked; tau 0.5."""
    c = torch.tensor(SAME_TARGET_COS, dtype=torch.float32)
    s = torch.sqrt(1 - c * c)
    p = torch.stack([torch.tensor([1.0, 0.0]), torch.stack([c, s])])
    q, n = torch.eye(2), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    c, s = float(c), float(s)
    expected = ((log_sum_exp(2, 2 * c, 0, 0) - 2) + (log_sum_exp(0, 2 * s, 2, 2) - 2 * s)) / 2
    assert float(contrastive_loss(q, p, n, 0.5)) == pytest.approx(expected, rel=1e-5)
