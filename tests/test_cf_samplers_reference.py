"""MixGCF, DENS and AHNS against their reference code, on tiny fixed inputs.

Each `reference_*` function below is a plain-torch transcription of the released code, written on the
reference's layout ([n, L+1, d] stacked layer embeddings, K = 1, pool = mean):
- MixGCF: github.com/huangtinglin/MixGCF, modules/LightGCN.py, `negative_sampling` + `create_bpr_loss`;
- DENS: github.com/Riwei-HEU/DENS, DENS/modules/LightGCN.py, `dise_negative_sampling` + `create_bpr_loss`;
- AHNS: github.com/Riwei-HEU/AHNS, modules/LightGCN.py, `adaptive_negative_sampling`.
They share nothing with hnlm.cf.samplers; our samplers must choose the same negatives and give the same
synthetic embeddings and loss values.
"""

import pytest
import torch

from hnlm.cf.losses import bpr
from hnlm.cf.samplers import AHNS, DENS, MixGCF, PositiveIndex, SamplerContext, SamplerOptionError
from tests.cf_helpers import tiny_data

N_USERS, N_ITEMS, LAYERS, DIM = 4, 12, 3, 5          # LAYERS = L + 1 embedding tables (layer 0 included)
TRAIN = {0: [0, 1], 1: [2, 3, 4], 2: [5], 3: [6, 7]}
USERS = torch.tensor([0, 1, 2, 3, 0, 1])
POS = torch.tensor([1, 2, 5, 7, 0, 4])
CANDS = torch.tensor([[2, 3, 8, 9, 11], [0, 5, 8, 10, 11], [0, 3, 4, 9, 10],
                      [1, 2, 9, 10, 11], [3, 4, 5, 10, 11], [1, 6, 7, 8, 9]])   # training non-positives


def fixed_layers(scale=1.0, seed=0):
    """Per-layer (user, item) tables as leaves that require grad, and the same tensors stacked [n, L+1, d]."""
    g = torch.Generator().manual_seed(seed)
    user = (torch.randn(N_USERS, LAYERS, DIM, generator=g) * scale).requires_grad_()
    item = (torch.randn(N_ITEMS, LAYERS, DIM, generator=g) * scale).requires_grad_()
    return user, item


def make_ctx(user, item, epoch=0, seed=0):
    data = tiny_data(train=TRAIN, valid={}, test={}, n_users=N_USERS, n_items=N_ITEMS)
    layers = [(user[:, k], item[:, k]) for k in range(LAYERS)]
    return SamplerContext(PositiveIndex(data.train, "cpu"), torch.ones(N_ITEMS), torch.Generator().manual_seed(seed),
                          epoch=epoch, user_emb=user.mean(1), item_emb=item.mean(1), layers=layers)


def test_candidates_are_non_positives():
    assert not any(int(c) in TRAIN[int(u)] for u, row in zip(USERS, CANDS) for c in row)
    assert all(int(p) in TRAIN[int(u)] for u, p in zip(USERS, POS))


# ---- MixGCF -------------------------------------------------------------------------------------------

def reference_mixgcf(user_gcn_emb, item_gcn_emb, user, neg_candidates, pos_item, seed):
    batch_size = user.shape[0]
    s_e, p_e = user_gcn_emb[user], item_gcn_emb[pos_item]
    s_e = s_e.mean(dim=1).unsqueeze(dim=1)                                   # pool = mean
    n_e = item_gcn_emb[neg_candidates]
    n_e_ = seed * p_e.unsqueeze(dim=1) + (1 - seed) * n_e                    # positive mixing
    scores = (s_e.unsqueeze(dim=1) * n_e_).sum(dim=-1)                       # hop mixing
    indices = torch.max(scores, dim=1)[1].detach()
    neg_items_emb_ = n_e_.permute([0, 2, 1, 3])
    neg = neg_items_emb_[[[i] for i in range(batch_size)], range(neg_items_emb_.shape[1]), indices, :]
    return indices, neg.mean(dim=1)                                          # create_bpr_loss pools neg


def test_mixgcf_matches_reference():
    user, item = fixed_layers()
    seed = torch.rand(len(USERS), 1, LAYERS, 1, generator=torch.Generator().manual_seed(3))
    indices, ref_emb = reference_mixgcf(user, item, USERS, CANDS, POS, seed)
    assert len({tuple(indices[:, k].tolist()) for k in range(LAYERS)}) > 1, "inputs must pick per layer"
    negs = MixGCF.synthesise(USERS, POS, CANDS, seed[:, 0], make_ctx(user, item))
    assert torch.equal(negs.items, CANDS.gather(1, indices[:, :1])[:, 0])
    torch.testing.assert_close(negs.emb, ref_emb)
    # neither the positive's embedding nor the plain candidate's: a mix of both, per layer
    assert not torch.allclose(negs.emb, item.mean(1)[POS], atol=1e-3)
    assert not torch.allclose(negs.emb, item.mean(1)[negs.items], atol=1e-3)
    # pooled-user scoring (pool = mean) differs from scoring with each layer's user embedding here
    per_layer = (user[USERS].unsqueeze(1) * item[CANDS]).sum(-1).argmax(1)
    assert not torch.equal(per_layer, indices)
    # the gradient reaches the positive and the chosen candidates
    negs.emb.sum().backward()
    assert item.grad[POS].abs().sum() > 0 and item.grad[negs.items].abs().sum() > 0


def test_mixgcf_sample_draws_candidates_then_mixing_weights():
    user, item = fixed_layers()
    ctx_a, ctx_b = make_ctx(user, item, seed=7), make_ctx(user, item, seed=7)
    cands = ctx_a.positives.uniform(USERS, 4, ctx_a.generator)
    seed = torch.rand((len(USERS), LAYERS, 1), generator=ctx_a.generator).unsqueeze(1)
    indices, ref_emb = reference_mixgcf(user, item, USERS, cands, POS, seed)
    negs = MixGCF(candidates=4).sample(USERS, POS, None, ctx_b)
    assert torch.equal(negs.items, cands.gather(1, indices[:, :1])[:, 0])
    torch.testing.assert_close(negs.emb, ref_emb)


# ---- DENS ---------------------------------------------------------------------------------------------

def reference_dens(gates, cur_epoch, warmup, gamma, user_gcn_emb, item_gcn_emb, user, neg_candidates, pos_item):
    item_gate, user_gate, pos_gate, neg_gate = gates["item"], gates["user"], gates["pos"], gates["neg"]
    batch_size = user.shape[0]
    # dise_negative_sampling
    s_e, p_e = user_gcn_emb[user], item_gcn_emb[pos_item]
    n_e = item_gcn_emb[neg_candidates]
    gate_p = torch.sigmoid(item_gate(p_e) + user_gate(s_e))
    gated_p_e = p_e * gate_p
    gate_n = torch.sigmoid(neg_gate(n_e) + pos_gate(gated_p_e).unsqueeze(1))
    gated_n_e = n_e * gate_n
    n_e_sel = (1 - min(1, cur_epoch / warmup)) * n_e - gated_n_e
    scores = (s_e.unsqueeze(dim=1) * n_e_sel).sum(dim=-1)
    indices = torch.max(scores, dim=1)[1].detach()
    neg_items_emb_ = n_e.permute([0, 2, 1, 3])
    neg = neg_items_emb_[[[i] for i in range(batch_size)], range(neg_items_emb_.shape[1]), indices, :]
    # create_bpr_loss with K = 1, pool = mean
    user_gcn, pos_gcn_embs, neg_gcn_embs = s_e, p_e, neg.unsqueeze(1)
    u_e, pos_e, neg_e = user_gcn.mean(1), pos_gcn_embs.mean(1), neg_gcn_embs.mean(2)
    pos_scores = torch.sum(u_e * pos_e, axis=1)
    neg_scores = torch.sum(u_e.unsqueeze(dim=1) * neg_e, axis=-1)
    mf_loss = torch.mean(torch.log(1 + torch.exp(neg_scores - pos_scores.unsqueeze(dim=1)).sum(dim=1)))
    gate_pos = torch.sigmoid(item_gate(pos_gcn_embs) + user_gate(user_gcn))
    gated_pos_e_r = pos_gcn_embs * gate_pos
    gated_pos_e_ir = pos_gcn_embs - gated_pos_e_r
    gate_neg = torch.sigmoid(neg_gate(neg_gcn_embs) + pos_gate(gated_pos_e_r).unsqueeze(1))
    gated_neg_e_r = neg_gcn_embs * gate_neg
    gated_neg_e_ir = neg_gcn_embs - gated_neg_e_r
    pr, nr = gated_pos_e_r.mean(1), gated_neg_e_r.mean(2)
    pir, nir = gated_pos_e_ir.mean(1), gated_neg_e_ir.mean(2)
    s_pr, s_nr = torch.sum(u_e * pr, axis=1), torch.sum(u_e.unsqueeze(dim=1) * nr, axis=-1)
    s_pir, s_nir = torch.sum(u_e * pir, axis=1), torch.sum(u_e.unsqueeze(dim=1) * nir, axis=-1)
    mf_loss = mf_loss + gamma * (torch.mean(torch.log(1 + torch.exp(s_pir - s_pr)))
                                 + torch.mean(torch.log(1 + torch.exp(s_nr - s_nir).sum(dim=1)))
                                 + torch.mean(torch.log(1 + torch.exp(s_nr - s_pr.unsqueeze(dim=1)).sum(dim=1)))
                                 + torch.mean(torch.log(1 + torch.exp(s_pir.unsqueeze(dim=1) - s_nir).sum(dim=1)))) / 4
    return indices, neg.mean(1), mf_loss


class _Dim:
    embedding_dim = DIM


def make_dens(**opts):
    torch.manual_seed(0)
    sampler = DENS(**opts)
    sampler.setup(_Dim(), None)
    return sampler


@pytest.mark.parametrize("epoch", [0, 40, 150])
def test_dens_matches_reference(epoch):
    user, item = fixed_layers(scale=2.0)
    sampler = make_dens(warmup=100, gamma=0.3)
    indices, ref_emb, ref_loss = reference_dens(sampler.gates, epoch, 100, 0.3, user, item, USERS, CANDS, POS)
    ctx = make_ctx(user, item, epoch=epoch)
    negs = sampler.select(USERS, POS, CANDS, ctx)
    assert torch.equal(negs.items, CANDS.gather(1, indices[:, :1])[:, 0])
    torch.testing.assert_close(negs.emb, ref_emb)
    ours = bpr((ctx.user_emb[USERS] * item.mean(1)[POS]).sum(-1), (ctx.user_emb[USERS] * negs.emb).sum(-1))
    torch.testing.assert_close(ours + negs.loss, ref_loss)
    negs.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sampler.gates.parameters())


def test_dens_inputs_discriminate():
    # the fixed inputs are chosen so that a wrong layer index, warm-up schedule or pooling would show
    user, item = fixed_layers(scale=2.0)
    sampler = make_dens()
    picks = [reference_dens(sampler.gates, e, 100, 0.3, user, item, USERS, CANDS, POS)[0] for e in (0, 40, 150)]
    assert not torch.equal(picks[0], picks[2]) and not torch.equal(picks[1], picks[2])
    assert len({tuple(picks[0][:, k].tolist()) for k in range(LAYERS)}) > 1


def test_dens_without_gate_term():
    user, item = fixed_layers()
    negs = make_dens(gamma=0.0).select(USERS, POS, CANDS, make_ctx(user, item))
    assert negs.loss is None


def test_dens_refuses_zero_warmup():
    with pytest.raises(SamplerOptionError, match="warmup"):
        DENS(warmup=0)


# ---- AHNS ---------------------------------------------------------------------------------------------

def reference_ahns(user_gcn_emb, item_gcn_emb, user, neg_candidates, pos_item, alpha, beta, p):
    s_e, p_e = user_gcn_emb[user], item_gcn_emb[pos_item]
    n_e = item_gcn_emb[neg_candidates]
    s_e, p_e, n_e = s_e.mean(dim=1), p_e.mean(dim=1), n_e.mean(dim=2)
    p_scores = (s_e * p_e).sum(dim=-1).unsqueeze(dim=1)
    n_scores = (s_e.unsqueeze(dim=1) * n_e).sum(dim=-1)
    scores = torch.abs(n_scores - beta * (p_scores + alpha).pow(p + 1))
    indices = torch.min(scores, dim=1)[1].detach()
    return torch.gather(neg_candidates, dim=1, index=indices.unsqueeze(-1)).squeeze()


@pytest.mark.parametrize("alpha, beta, p", [(1.0, 0.1, -2), (0.5, 1.0, -3), (2.0, 0.5, -1)])
def test_ahns_matches_reference(alpha, beta, p):
    user, item = fixed_layers(scale=1.5)
    with torch.no_grad():
        assert ((user.mean(1)[USERS] * item.mean(1)[POS]).sum(-1) + alpha < 0).any(), "want a negative base"
    expected = reference_ahns(user, item, USERS, CANDS, POS, alpha, beta, p)
    chosen = AHNS(alpha=alpha, beta=beta, p=p).select(USERS, POS, CANDS, make_ctx(user, item)).items
    assert torch.equal(chosen, expected)


def test_ahns_refuses_fractional_power():
    with pytest.raises(SamplerOptionError, match="integer"):
        AHNS(p=-1.5)


def test_defaults_are_the_references():
    assert MixGCF().candidates == 64
    assert (DENS().candidates, DENS().warmup, DENS().gamma) == (6, 100, 0.3)
    a = AHNS()
    assert (a.candidates, a.alpha, a.beta, a.p) == (32, 1.0, 0.1, -2)


class _RecordingDENS(DENS):
    def setup(self, model, data):
        super().setup(model, data)
        self.initial = {k: v.clone() for k, v in self.gates.state_dict().items()}


@pytest.mark.parametrize("gamma", [0.3, 0.0])
def test_dens_gates_train_with_the_model(gamma):
    # through the real trainer: the gates are in the optimiser and move only through the gated loss
    from hnlm.cf.trainer import TrainConfig, train
    rows = {u: [(u + k) % N_ITEMS for k in range(4)] for u in range(N_USERS)}
    data = tiny_data(train=rows, valid={u: [(u + 5) % N_ITEMS] for u in range(N_USERS)},
                     test={u: [(u + 6) % N_ITEMS] for u in range(N_USERS)}, n_users=N_USERS, n_items=N_ITEMS)
    sampler = _RecordingDENS(gamma=gamma)
    result = train(data, TrainConfig(model="lightgcn", dim=DIM, layers=2, epochs=3, batch_size=8, device="cpu",
                                     ks=[5], metric="recall@5"), sampler=sampler, progress=False)
    assert result["sampler"] == {"name": "dens", "candidates": 6, "warmup": 100.0, "gamma": gamma}
    assert result["n_params"] == (N_USERS + N_ITEMS) * DIM + 4 * (DIM * DIM + DIM)
    moved = [not torch.equal(sampler.initial[k], v) for k, v in sampler.gates.state_dict().items()]
    assert all(moved) if gamma > 0 else not any(moved)
