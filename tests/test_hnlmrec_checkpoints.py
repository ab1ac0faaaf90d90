"""Fine-tuning checkpoints are written atomically; a resume skips an incomplete one and says where it starts."""

import shutil

import pytest

from hnlm.semantic.hnlmrec.finetune import FinetuneConfig, load_base, make_trainer
from hnlm.semantic.hnlmrec.model import TRAINABLE_FILE, QueryEncoder
from tests.hnlmrec_helpers import random_pairs

pytestmark = pytest.mark.slow

TEXTS = ["User likes: Toy Story; Babe.", "User likes: Heat; Fargo.", "User likes: Alien; Aliens.",
         "User likes: Emma; Persuasion."]


def config(steps):
    return FinetuneConfig(llm="smollm2-135m", cf_signal="text", max_steps=steps, batch_size=4, lr=2e-3,
                          warmup_ratio=0.0, max_length=24, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          save_steps=1, seed=0)


def dataset():
    return random_pairs(TEXTS)


def test_killed_checkpoint_is_skipped_and_resume_says_its_step(tmp_path, capsys):
    lm, tok = load_base(config(2))
    enc = QueryEncoder(lm, config(2).encoder_config(cf_dim=8, out_dim=384))
    out = tmp_path / "ckpt"
    make_trainer(enc, tok, dataset(), config(2), str(out)).train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # nothing staged is left

    # a kill -9 while checkpoint-3 was written in place (older versions): weights there, trainer state not yet
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    # and one while the current version was staging checkpoint-3
    shutil.copytree(out / "checkpoint-2", out / ".staging" / "checkpoint-3")
    (out / ".staging" / "checkpoint-3" / TRAINABLE_FILE).write_bytes(b"half")
    capsys.readouterr()

    resumed = make_trainer(enc, tok, dataset(), config(3), str(out))
    resumed.train(resume_from_checkpoint=True)
    err = capsys.readouterr().err
    assert "checkpoint-3 is incomplete" in err and "kept as incomplete-checkpoint-3" in err
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in err
    assert resumed.resumed_from_step == 2 and resumed.state.global_step == 3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-3", "incomplete-checkpoint-3"]
    assert (out / "checkpoint-3" / "trainer_state.json").exists()
    assert (out / "checkpoint-3" / TRAINABLE_FILE).stat().st_size > 100


def test_resume_without_a_complete_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "ckpt"
    (out / "checkpoint-1").mkdir(parents=True)  # killed before anything was written
    lm, tok = load_base(config(1))
    enc = QueryEncoder(lm, config(1).encoder_config(cf_dim=8, out_dim=384))
    trainer = make_trainer(enc, tok, dataset(), config(1), str(out))
    trainer.train(resume_from_checkpoint=True)
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "training from step 0" in err
    assert trainer.resumed_from_step is None and trainer.state.global_step == 1
    assert (out / "checkpoint-1" / "trainer_state.json").exists()
