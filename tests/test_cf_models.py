"""LightGCN propagation and its gradient equal a dense reference on a tiny graph."""

import warnings

import numpy as np
import pytest
import torch

from hnlm.cf.models import MF, LightGCN, build_model, normalized_adjacency, to_torch_csr
from tests.cf_helpers import tiny_data


def graph():
    return tiny_data(train={0: [0, 1], 1: [1, 2, 3], 2: [3], 3: []}, valid={}, test={}, n_users=4, n_items=5)


def dense_reference(data, x, layers):
    r = data.train.toarray()
    n_u, n_i = r.shape
    a = np.zeros((n_u + n_i, n_u + n_i), np.float32)
    a[:n_u, n_u:], a[n_u:, :n_u] = r, r.T
    deg = a.sum(1)
    inv = np.where(deg > 0, np.maximum(deg, 1) ** -0.5, 0.0)   # user 3 and item 4 are isolated
    a_hat = torch.tensor(inv[:, None] * a * inv[None, :], dtype=torch.float32)
    outs, e = [x], x
    for _ in range(layers):
        e = a_hat @ e
        outs.append(e)
    return torch.stack(outs).mean(0)


def test_lightgcn_matches_dense_reference():
    data = graph()
    torch.manual_seed(0)
    model = LightGCN(4, 5, 3, data.train, layers=3)
    user, item = model.propagate()
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().clone().requires_grad_(True)
    ref = dense_reference(data, x, 3)
    assert torch.allclose(torch.cat([user, item]), ref, atol=1e-6)
    # gradients through the custom sparse product equal the dense ones
    w = torch.randn_like(ref)
    (torch.cat([user, item]) * w).sum().backward()
    (ref * w).sum().backward()
    grad = torch.cat([model.user_emb.weight.grad, model.item_emb.weight.grad])
    assert torch.allclose(grad, x.grad, atol=1e-6)
    assert len(model.layer_embeddings()) == 4
    assert torch.allclose(model.score(torch.tensor([1])), (user[1:2] @ item.T), atol=1e-6)


def test_mf_score_and_l2():
    torch.manual_seed(0)
    model = MF(3, 4, 2)
    u, i = model.propagate()
    assert torch.allclose(model.score(torch.tensor([0, 2])), u[[0, 2]] @ i.T)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 3])
    expected = (u[users].pow(2).sum() + i[pos].pow(2).sum() + i[neg].pow(2).sum()) / 2
    assert torch.allclose(model.l2(users, pos, neg), expected)


def test_losses_by_hand():
    from hnlm.cf.losses import bpr, hinge, info_nce
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    assert torch.isclose(bpr(pos, neg), -(torch.log(torch.sigmoid(torch.tensor(1.0)))
                                          + torch.log(torch.sigmoid(torch.tensor(-0.5)))) / 2)
    # margin 0.3: max(0, 0.3 - 1) = 0 and max(0, 0.3 + 0.5) = 0.8
    assert torch.isclose(hinge(pos, neg, 0.3), torch.tensor(0.4))
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # in-batch: logits = cos / tau = identity / 0.5 -> cross-entropy of [2, 0] against class 0
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert torch.isclose(info_nce(a, a, tau=0.5), expected)
    negs = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    assert torch.isclose(info_nce(a, a, negs, tau=0.5), expected)


def test_several_runs_propagate_at_once_as_each_alone():
    data = graph()
    torch.manual_seed(1)
    model = LightGCN(4, 5, 3, data.train, layers=2)
    users, items = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    together = model.combine(model.layers_from(users, items))
    for run in range(2):
        alone = model.combine(model.layers_from(users[run], items[run]))
        assert torch.allclose(together[0][run], alone[0], atol=1e-6)
        assert torch.allclose(together[1][run], alone[1], atol=1e-6)


def test_models_by_name_share_a_graph_and_keep_it_on_their_device():
    data = graph()
    mf, gcn = build_model("mf", data, 3, 2), build_model("lightgcn", data, 3, 2)
    assert type(mf) is MF and (gcn.n_layers, gcn.embedding_dim, gcn.n_users, gcn.n_items) == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="unknown CF model 'ngcf'"):
        build_model("ngcf", data, 3, 2)
    other = LightGCN(4, 5, 3, data.train)
    other.share_graph(gcn)
    assert other.adj is gcn.adj and other._adj_cpu is gcn._adj_cpu and other.n_layers == 3
    before = gcn.adj
    gcn.to(torch.device("cpu"))
    assert gcn.adj is not before and gcn.adj.device == gcn.user_emb.weight.device
    assert torch.equal(gcn.adj.to_dense(), before.to_dense())


def test_the_graph_filters_only_torch_sparse_warnings():
    with pytest.warns(UserWarning, match="still shown") as record:
        LightGCN(4, 5, 3, graph().train)
        warnings.warn("Sparse CSR tensor support is in beta state.", UserWarning)   # torch's wording
        warnings.warn("Sparse invariant checks are implicitly disabled.", UserWarning)
        warnings.warn("still shown", UserWarning)
    assert [str(w.message) for w in record] == ["still shown"]


def test_torch_csr_keeps_int64_indices_and_float32_values():
    m = normalized_adjacency(graph().train)
    t = to_torch_csr(m, "cpu")
    dtypes = (t.crow_indices().dtype, t.col_indices().dtype, t.values().dtype)
    assert dtypes == (torch.int64, torch.int64, torch.float32)
    assert t.col_indices().tolist() == m.indices.tolist() and np.allclose(t.to_dense().numpy(), m.toarray())


def test_lightgcn_applies_functions_with_the_callers_arguments():
    # recurse=False (by keyword or position) leaves the embedding submodules alone; the graph follows anyway
    model = LightGCN(4, 5, 3, graph().train)
    before = model.user_emb.weight.detach().clone()
    model.to_empty(device="cpu", recurse=False)
    model._apply(torch.zeros_like, False)
    assert torch.equal(model.user_emb.weight, before) and model.adj.device == before.device
    model._apply(torch.zeros_like)
    assert not model.user_emb.weight.any()
