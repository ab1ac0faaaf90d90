"""Module 3 (semantic alignment) on the real CF trainer: the adapter trains, mixing follows the formula,
missing negatives are counted and skipped, any embedding dimension works."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hnlm.cf.extension import Batch, BatchEmb
from hnlm.cf.models import build_model
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import load_dataset
from hnlm.data.interactions import Interactions
from hnlm.errors import UserFacingError
from hnlm.llm.encoders import MiniLMEncoder
from hnlm.semantic.alignment import (
    AlignmentConfig,
    AlignmentExtension,
    alignment_config,
    alignment_for,
    cf_dim,
    make_mlp,
    replace_neg,
)
from hnlm.semantic.bank import BankIndex, NegativeBank
from tests.cf_helpers import tiny_data

N_USERS = 60
STUDY_WEIGHT = 1e-3  # the contrastive weight the study uses (hnlm.study.profiles): small, so checked tightly


@pytest.fixture(scope="module")
def small():
    """The first 60 users of ML-100K (all items): small enough for a few quick epochs."""
    d = load_dataset("ml-100k", seed=0)
    return Interactions(d.name, d.train[:N_USERS], d.valid[:N_USERS], d.test[:N_USERS], d.items,
                        d.users.iloc[:N_USERS], d.reviews[d.reviews["user"] < N_USERS], d.stats)


def bank_for(data, users, dim, seed=0):
    """One negative per listed user, keyed by that user's first training pair."""
    rng = np.random.default_rng(seed)
    items = [int(data.train_items(u)[0]) for u in users]
    return NegativeBank(rng.standard_normal((len(users), dim)).astype(np.float32), users, items, "test")


def catalogue(data, dim, seed=1):
    """Stand-in catalogue text space of the bank's dimension (these tests check mechanics, not semantics;
    the real MiniLM catalogue is used by the `hnlm train --sampler sns` runs)."""
    return np.random.default_rng(seed).standard_normal((data.n_items, dim)).astype(np.float32)


@pytest.mark.parametrize("mode", ["anchor", "joint"])
def test_adapter_trains_and_missing_pairs_are_counted(small, mode):
    bank = bank_for(small, list(range(0, N_USERS, 2)), dim=24)  # half of the users have a negative
    items = catalogue(small, 24) if mode == "anchor" else None
    config = AlignmentConfig(lookup="user", hidden=(16,), train=mode)
    ext = AlignmentExtension(bank, config, items)
    cfg = TrainConfig(model="mf", dim=16, epochs=2, batch_size=1024, patience=5, device="cpu")
    torch.manual_seed(0)
    model = build_model("mf", small, 16, 1)
    ext.setup(model, small)
    before = [p.detach().clone() for p in ext.adapter.parameters()]
    ext2 = AlignmentExtension(bank, config, items)
    result = train(small, cfg, extension=ext2, progress=False)
    after = list(ext2.adapter.parameters())
    assert len(before) == len(after)
    assert any(not torch.allclose(a, b) for a, b in zip(before, after)), "adapter weights never changed"
    c = result["counts"]["alignment"]
    assert c["train"] == mode
    assert c["pairs"] == 2 * small.train.nnz
    assert c["missing"] > 0 and c["with_negative"] > 0
    assert c["missing"] + c["with_negative"] == c["pairs"]
    assert c["exact_pair"] + c["user_reuse"] == c["with_negative"]


def test_anchor_mode_needs_the_catalogue_in_the_bank_space(small):
    bank = bank_for(small, [0, 1], dim=24)
    with pytest.raises(ValueError, match="catalogue"):
        AlignmentExtension(bank, AlignmentConfig())
    with pytest.raises(ValueError, match="catalogue"):
        AlignmentExtension(bank, AlignmentConfig(), catalogue(small, 12))


@pytest.mark.parametrize("mode", ["anchor", "joint"])
def test_mixing_formula_and_skip_rule(small, mode):
    dim_text = 896  # e.g. a fine-tuned LLM's hidden size: the adapter is not tied to MiniLM
    bank = bank_for(small, [0, 1], dim=dim_text)
    cfg = AlignmentConfig(alpha=0.25, weight=STUDY_WEIGHT, tau=0.2, lookup="pair", hidden=(), train=mode,
                          anchor_weight=0.5)
    items = catalogue(small, dim_text) if mode == "anchor" else None
    ext = AlignmentExtension(bank, cfg, items)
    model = build_model("mf", small, 8, 1)
    ext.setup(model, small)
    users = torch.tensor([0, 1, 2])
    pos = torch.tensor([int(bank.items[0]), int(bank.items[1]), int(small.train_items(2)[0])])
    emb = BatchEmb(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8))
    new, loss = ext.on_batch(Batch(users, pos, torch.tensor([5, 6, 7])), emb)
    h = ext.adapter(torch.from_numpy(bank.emb[:2]))
    anchor = 0.0
    if mode == "anchor":  # detached, rescaled to the ID negative's norm; the adapter learns from anchors
        h = torch.nn.functional.normalize(h.detach(), dim=-1) * emb.neg[:2].norm(dim=-1, keepdim=True)
        t = ext.adapter(torch.from_numpy(items[pos.numpy()]))
        anchor = 0.5 * (1 - torch.nn.functional.cosine_similarity(t, emb.pos, dim=-1)).mean()
    torch.testing.assert_close(new.neg[:2], 0.25 * h + 0.75 * emb.neg[:2])
    torch.testing.assert_close(new.neg[2], emb.neg[2])  # user 2 has no negative: untouched
    cos_uh = torch.nn.functional.cosine_similarity(emb.user[:2], h, dim=-1)
    cos_up = torch.nn.functional.cosine_similarity(emb.user[:2], emb.pos[:2], dim=-1)
    contrastive = torch.nn.functional.softplus((cos_uh - cos_up) / 0.2).mean()
    torch.testing.assert_close(loss, STUDY_WEIGHT * contrastive + anchor, rtol=1e-6, atol=1e-7)
    assert ext.counts()["alignment"]["missing"] == 1
    # A batch without any negative adds no loss term.
    _, none = ext.on_batch(Batch(users[2:], pos[2:], torch.tensor([7])),
                           BatchEmb(emb.user[2:], emb.pos[2:], emb.neg[2:]))
    assert none is None


def test_anchor_mode_keeps_bpr_gradients_out_of_the_adapter(small):
    """The failure this mode fixes: trained through BPR, the adapter makes negatives trivially easy."""
    bank = bank_for(small, [0, 1], dim=24)
    ext = AlignmentExtension(bank, AlignmentConfig(lookup="pair", hidden=(16,)), catalogue(small, 24))
    ext.setup(build_model("mf", small, 8, 1), small)
    users, pos = torch.tensor([0, 1]), torch.tensor([int(bank.items[0]), int(bank.items[1])])
    emb = BatchEmb(torch.randn(2, 8, requires_grad=True), torch.randn(2, 8), torch.randn(2, 8))
    new, _ = ext.on_batch(Batch(users, pos, torch.tensor([5, 6])), emb)
    (emb.user * new.neg).sum().backward()  # a BPR-like score on the mixed negative
    assert all(p.grad is None for p in ext.adapter.parameters())


@pytest.mark.parametrize("mode", ["anchor", "joint"])
def test_repeated_rows_match_the_per_pair_computation(small, mode):
    """The adapter runs once per distinct bank row / positive item; loss, mixed negatives and gradients
    equal the per-pair formula (every pair has a negative here: the unmasked path)."""
    bank = bank_for(small, list(range(N_USERS)), dim=24)
    items = catalogue(small, 24) if mode == "anchor" else None
    cfg = AlignmentConfig(alpha=0.3, weight=STUDY_WEIGHT, lookup="user", hidden=(16,), train=mode, anchor_weight=0.7)
    ext = AlignmentExtension(bank, cfg, items)
    ext.setup(build_model("mf", small, 8, 1), small)
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, N_USERS, (200,), generator=g)
    pos = torch.randint(0, 20, (200,), generator=g)          # positives repeat
    table_u, table_i = torch.randn(N_USERS, 8, generator=g), torch.randn(small.n_items, 8, generator=g)

    def run(reference):
        u = table_u.clone().requires_grad_()
        i = table_i.clone().requires_grad_()
        emb = BatchEmb(u[users], i[pos], i[pos + 100])
        ext._rng = np.random.default_rng(0)
        ext.zero_grad()
        if not reference:
            new, loss = ext.on_batch(Batch(users, pos, pos + 100), emb)
        else:
            rows, _ = ext.index.lookup(users.numpy(), pos.numpy(), "user", np.random.default_rng(0))
            h = ext.adapter(ext.table[torch.from_numpy(rows)])
            extra = 0.0
            if mode == "anchor":
                h = torch.nn.functional.normalize(h.detach(), dim=-1) * emb.neg.detach().norm(dim=-1, keepdim=True)
                t = ext.adapter(ext.item_text[pos])
                extra = 0.7 * (1 - torch.nn.functional.cosine_similarity(t, emb.pos.detach(), dim=-1)).mean()
            cos = torch.nn.functional.cosine_similarity
            loss = STUDY_WEIGHT * torch.nn.functional.softplus(
                (cos(emb.user, h, dim=-1) - cos(emb.user, emb.pos, dim=-1)) / cfg.tau).mean() + extra
            new = BatchEmb(emb.user, emb.pos, 0.3 * h + 0.7 * emb.neg)
        (loss + (new.user * new.neg).sum()).backward()
        return loss.detach(), new.neg.detach(), u.grad, i.grad, [p.grad.clone() for p in ext.adapter.parameters()]

    fast, ref = run(False), run(True)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-6, atol=1e-7)  # the loss: its contrastive part is ~1e-3
    for a, b in zip(fast[1:4], ref[1:4]):
        torch.testing.assert_close(a, b)
    for a, b in zip(fast[4], ref[4]):
        torch.testing.assert_close(a, b)


def test_alignment_config_takes_module_3_fields_from_a_method_settings():
    @dataclasses.dataclass
    class Settings(AlignmentConfig):
        candidates: int = 8
    settings = Settings(alpha=0.3, weight=0.5, tau=0.1, hidden=(4,), lookup="pair", train="joint",
                        anchor_weight=2.0, candidates=16)
    assert alignment_config(settings) == AlignmentConfig(0.3, 0.5, 0.1, (4,), "pair", "joint", 2.0)
    assert type(alignment_config(settings)) is AlignmentConfig


def test_alignment_for_anchors_only_the_anchor_adapter_in_the_catalogue_space(small):
    bank = bank_for(small, [0, 1], dim=24)
    joint = AlignmentConfig(alpha=0.3, train="joint")
    ext = alignment_for(small, bank, joint, seed=7)
    assert ext.bank is bank and ext.config is joint and ext.seed == 7 and not hasattr(ext, "item_text")
    with pytest.raises(UserFacingError, match="bank test has dimension 24, not the catalogue text space \\(384\\)"):
        alignment_for(small, bank, AlignmentConfig(train="anchor"), seed=7)


def test_anchor_catalogue_is_the_minilm_text_of_every_item():
    data = tiny_data({0: [0, 1], 1: [2]}, {}, {}, 2, 3, name="catalogue")
    bank = NegativeBank(np.zeros((1, 384), np.float32), [0], [0], "test")
    ext = alignment_for(data, bank, AlignmentConfig(), seed=0)
    expected = MiniLMEncoder(cache=False).encode([data.item_text(i) for i in range(3)])
    assert ext.item_text.shape == (3, 384) and np.allclose(ext.item_text.numpy(), expected, atol=1e-6)


def test_make_mlp_puts_a_relu_between_linear_layers_only():
    mlp = make_mlp([5, 4, 3, 2])
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in mlp[::2]] == [(5, 4), (4, 3), (3, 2)]
    assert [type(m) for m in make_mlp([5, 2])] == [nn.Linear]


class Propagating(nn.Module):
    """A CF model without a size attribute: its size is read from one propagation."""

    def propagate(self):
        return torch.zeros(3, 9), torch.zeros(4, 9)


def test_cf_dim_reads_each_size_attribute_else_one_propagation(small):
    for name in ("embedding_dim", "dim", "emb_dim"):
        assert cf_dim(SimpleNamespace(**{name: 7})) == 7, name  # no propagate(): the attribute is enough
    assert cf_dim(Propagating()) == 9
    assert cf_dim(build_model("mf", small, 8, 1)) == 8


def test_refusals_name_the_setting_at_fault(small):
    bank = bank_for(small, [0, 1], dim=24)
    with pytest.raises(ValueError, match=r"^unknown lookup rule 'near'; choose from \('pair', 'user', 'rotate'\)$"):
        AlignmentExtension(bank, AlignmentConfig(lookup="near", train="joint"))
    with pytest.raises(ValueError, match="^unknown adapter training 'frozen'; choose anchor or joint$"):
        AlignmentExtension(bank, AlignmentConfig(train="frozen"))
    with pytest.raises(ValueError, match=r"^anchor alignment needs the catalogue's text embeddings in the bank's "
                                         r"space \(dim 24\)$"):
        AlignmentExtension(bank, AlignmentConfig())
    empty = NegativeBank(np.zeros((0, 24), np.float32), [], [], "test")
    with pytest.raises(ValueError, match=r"^the negative bank is empty: generate negatives first \(hnlm sns \.\.\.\)$"):
        AlignmentExtension(empty, AlignmentConfig(train="joint")).setup(build_model("mf", small, 8, 1), small)
    one = AlignmentExtension(bank_for(small, [0], dim=24), AlignmentConfig(train="joint"))
    one.setup(build_model("mf", small, 8, 1), small)  # a single negative is enough
    assert one.adapter is not None


def test_defaults_and_only_the_adapter_is_saved(small):
    bank = bank_for(small, [0, 1], dim=24)
    ext = AlignmentExtension(bank, AlignmentConfig(hidden=()), catalogue(small, 24).astype(np.float64))
    assert ext.seed == 0 and ext.adapter is None
    assert ext.item_text.dtype == torch.float32 and ext.table.dtype == torch.float32
    ext.setup(build_model("mf", small, 8, 1), small)
    assert set(ext.state_dict()) == {"adapter.0.weight", "adapter.0.bias"}  # no bank, no catalogue


def test_user_rule_draws_the_user_s_negatives_with_the_extension_s_seed(small):
    """User 0 has ten negatives and none for the batch's positives: each pair draws one of the ten."""
    rng = np.random.default_rng(0)
    bank = NegativeBank(rng.standard_normal((10, 4)).astype(np.float32), [0] * 10, list(range(10)), "test")
    ext = AlignmentExtension(bank, AlignmentConfig(alpha=0.5, lookup="user", hidden=(), train="joint"), seed=5)
    ext.setup(build_model("mf", small, 4, 1), small)
    users, pos = torch.zeros(30, dtype=torch.long), torch.full((30,), 20)
    emb = BatchEmb(torch.randn(30, 4), torch.randn(30, 4), torch.randn(30, 4))
    new, _ = ext.on_batch(Batch(users, pos, pos), emb)
    rows, exact = BankIndex(bank, small.n_items).lookup(users.numpy(), pos.numpy(), "user", np.random.default_rng(5))
    assert not exact.any() and len(set(rows.tolist())) > 1
    torch.testing.assert_close(new.neg, 0.5 * ext.adapter(torch.from_numpy(bank.emb[rows])) + 0.5 * emb.neg)


def test_counts_record_the_settings_and_the_mean_user_negative_cosine(small):
    """Identity adapter, so h is the bank row: user (3, 4) vs row (1, 0) has cosine 0.6, user (1, 1) vs row
    (0, 2) has cosine 1 / sqrt 2; a third pair has no negative."""
    bank = NegativeBank(np.array([[1.0, 0.0], [0.0, 2.0]], np.float32), [0, 1], [3, 4], "test", {"budget": 5})
    cfg = AlignmentConfig(alpha=0.1, weight=0.2, tau=0.3, hidden=(), lookup="pair", train="joint", anchor_weight=4.0)
    ext = AlignmentExtension(bank, cfg)
    ext.setup(build_model("mf", small, 2, 1), small)
    with torch.no_grad():
        ext.adapter[0].weight.copy_(torch.eye(2))
        ext.adapter[0].bias.zero_()
    neg = torch.zeros(2, 2)
    ext.on_batch(Batch(torch.tensor([0, 2]), torch.tensor([3, 3]), torch.tensor([5, 5])),
                 BatchEmb(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.ones(2, 2), neg))
    settings = {"source": "test", "bank_rows": 2, "bank_samples": 1, "samples_used": [0], "bank_dim": 2,
                "alpha": 0.1, "weight": 0.2, "tau": 0.3,
                "hidden": [], "lookup": "pair", "train": "joint", "anchor_weight": 4.0,
                "missing_rule": "pair keeps its ID negative, no contrastive term", "bank_budget": 5}
    first = ext.counts()["alignment"]
    assert first.pop("mean_cos_user_aligned") == pytest.approx(0.6)
    assert first == {"pairs": 2, "with_negative": 1, "exact_pair": 1, "user_reuse": 0, "missing": 1, **settings}
    ext.on_batch(Batch(torch.tensor([1]), torch.tensor([4]), torch.tensor([5])),
                 BatchEmb(torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), torch.zeros(1, 2)))
    assert ext.counts() == {"alignment": {"pairs": 3, "with_negative": 2, "exact_pair": 2, "user_reuse": 0,
                                          "missing": 1, **settings,
                                          "mean_cos_user_aligned": pytest.approx((0.6 + 0.5 ** 0.5) / 2)}}


def test_replace_neg_swaps_the_negative_of_a_dataclass_bundle_too():
    @dataclasses.dataclass
    class Emb:
        user: int
        pos: int
        neg: int
    emb = Emb(1, 2, 3)
    assert replace_neg(emb, 4) == Emb(1, 2, 4) and emb.neg == 3
    assert replace_neg(BatchEmb(1, 2, 3), 4) == BatchEmb(1, 2, 4)
