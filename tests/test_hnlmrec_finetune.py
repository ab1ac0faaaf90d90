"""HNLMRec fine-tuning on the real smollm2-135m: loss falls, only LoRA/heads train, save/reload, and a fresh
model resumed from a checkpoint equals the uninterrupted run."""

import numpy as np
import pytest
import torch

from hnlm.semantic.hnlmrec.finetune import FinetuneConfig, load_base, make_trainer
from hnlm.semantic.hnlmrec.infer import emit
from hnlm.semantic.hnlmrec.model import QueryEncoder, contrastive_loss
from tests.hnlmrec_helpers import random_pairs

pytestmark = pytest.mark.slow

TEXTS = ["User likes: Toy Story; Babe. Watched: Aladdin. Collaborative signal: top 3%.",
         "User likes: Heat; Fargo. Watched: Casino. Collaborative signal: top 10%.",
         "User likes: Alien; Aliens. Watched: Contact. Collaborative signal: top 1%.",
         "User likes: Emma; Persuasion. Watched: Sense and Sensibility. Collaborative signal: top 7%."]


def config(tmp_path, steps):
    return FinetuneConfig(llm="smollm2-135m", cf_signal="soft", max_steps=steps, batch_size=4, lr=2e-3,
                          warmup_ratio=0.0, max_length=40, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                          save_steps=4, seed=0)


def dataset():
    return random_pairs(TEXTS)


def batch_of(trainer, ds):
    return trainer.data_collator([ds[i] for i in range(len(ds))])


@torch.no_grad()
def embed(enc, batch):
    enc.eval()
    return enc(batch["input_ids"], batch["attention_mask"], batch["cf_user"], batch["cf_item"])


def test_finetune_reduces_loss_trains_only_adapter_reloads_and_resumes(tmp_path):
    cfg = config(tmp_path, steps=5)  # checkpoint at step 4 (save_steps), then one more step
    lm, tok = load_base(cfg)
    enc = QueryEncoder(lm, cfg.encoder_config(cf_dim=8, out_dim=384))
    ds = dataset()
    trainer = make_trainer(enc, tok, ds, cfg, str(tmp_path / "ckpt"))
    batch = batch_of(trainer, ds)
    before = {k: v.detach().clone() for k, v in enc.named_parameters()}
    loss0 = float(contrastive_loss(embed(enc, batch), batch["p"], batch["n"], cfg.tau))
    trainer.train()
    loss1 = float(contrastive_loss(embed(enc, batch), batch["p"], batch["n"], cfg.tau))
    assert loss1 < loss0 - 0.1, (loss0, loss1)

    after = dict(enc.named_parameters())
    lora = [k for k in before if "lora_" in k]
    base = [k for k in before if k.startswith("lm.") and "lora_" not in k]
    assert lora and base
    assert all(not after[k].requires_grad for k in base)
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert sum(not torch.equal(before[k], after[k]) for k in lora) > len(lora) // 2
    assert not torch.equal(before["soft_user.weight"], after["soft_user.weight"])

    q = embed(enc, batch)
    enc.save(tmp_path / "final")
    lm2, _ = load_base(cfg)
    reloaded = QueryEncoder.from_saved(lm2, tmp_path / "final")
    torch.testing.assert_close(embed(reloaded, batch), q, atol=1e-4, rtol=0)

    # the embedding pass (batched, resumable) emits the same vectors as the training-time forward
    partial = tmp_path / "partial.npz"
    first = emit(reloaded, tok, TEXTS[:2], ds.cf_user[:2], ds.cf_item[:2], batch_size=2, max_length=40,
                 partial=partial, save_every=1)
    assert int(np.load(partial)["done"]) == 2
    out = emit(reloaded, tok, TEXTS, ds.cf_user, ds.cf_item, batch_size=2, max_length=40, partial=partial)
    np.testing.assert_allclose(out[:2], first, atol=1e-6)
    # other batch shapes round differently in bf16 (seen: up to 1.1e-3 absolute): compare directions
    ref = q.numpy()
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.999, cos
    np.testing.assert_allclose(out, ref, atol=5e-3)

    # resume: a fresh model (new base LM, new encoder, nothing trained in memory) continued from the step-4
    # checkpoint on disk ends where the uninterrupted 5-step run ended
    checkpoint = tmp_path / "ckpt" / "checkpoint-4"
    assert (checkpoint / "hnlmrec_trainable.pt").exists()
    lm3, _ = load_base(cfg)
    fresh = QueryEncoder(lm3, cfg.encoder_config(cf_dim=8, out_dim=384))
    resumed = make_trainer(fresh, tok, ds, cfg, str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 5
    assert len([r for r in resumed.state.log_history if "loss" in r]) == 5  # 4 restored + 1 new
    torch.testing.assert_close(embed(fresh, batch), q, atol=1e-4, rtol=0)


def test_an_update_with_nonfinite_gradients_is_dropped():
    from types import SimpleNamespace

    import torch

    from hnlm.semantic.hnlmrec.finetune import SkipNonFiniteSteps
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[1.0, float("nan"), 0.0]])).sum().backward()
    skip = SkipNonFiniteSteps()
    skip.on_pre_optimizer_step(None, SimpleNamespace(global_step=4), None, model=model)
    opt.step()
    assert skip.skipped == [5]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model(torch.ones(1, 3)).sum().backward()  # a finite step still updates
    skip.on_pre_optimizer_step(None, SimpleNamespace(global_step=5), None, model=model)
    opt.step()
    assert skip.skipped == [5] and not torch.equal(before[0], model.weight)
