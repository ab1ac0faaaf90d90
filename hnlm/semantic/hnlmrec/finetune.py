"""HNLMRec fine-tuning with the Hugging Face Trainer (so `accelerate launch` and multi-GPU work as is).

Checkpoints hold only what trains (the LoRA adapter in peft format, the head, the soft-prompt
projections) plus the Trainer's optimiser/scheduler/RNG state, so a run resumes from its last checkpoint.
A checkpoint is written to `<output>/.staging/checkpoint-N` and renamed into place when complete, so a run
killed while saving never leaves a `checkpoint-N` that a resume would load; an incomplete one left by an
older version is set aside as `incomplete-checkpoint-N` and the resume starts from the last complete one.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hnlm.errors import UserFacingError
from hnlm.semantic.hnlmrec.config import FinetuneConfig  # noqa: F401  (its settings, also importable from here)
from hnlm.semantic.hnlmrec.model import TRAINABLE_FILE, QueryEncoder, contrastive_loss

STAGING_DIR = ".staging"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class PairDataset(Dataset):
    """Rows: query text, target p, interacted-item embedding n, teacher user/item vectors."""

    def __init__(self, texts, p: np.ndarray, n: np.ndarray, cf_user: np.ndarray, cf_item: np.ndarray):
        self.texts = list(texts)
        self.p, self.n = np.asarray(p, np.float32), np.asarray(n, np.float32)
        self.cf_user, self.cf_item = np.asarray(cf_user, np.float32), np.asarray(cf_item, np.float32)

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return {"text": self.texts[i], "p": self.p[i], "n": self.n[i],
                "cf_user": self.cf_user[i], "cf_item": self.cf_item[i]}


class Collator:
    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: list[dict]) -> dict:
        # right padding: causal attention keeps real tokens blind to pads and positions start at 0, so a
        # query's vector does not depend on the batch it is in (left padding would shift positions)
        enc = self.tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True, padding_side="right",
                             truncation=True, max_length=self.max_length)
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        for key in ("p", "n", "cf_user", "cf_item"):
            out[key] = torch.from_numpy(np.stack([r[key] for r in rows]))
        return out


class HNLMRecTrainer(Trainer):
    """Trainer with the HNLMRec contrastive loss, a head learning rate and adapter-only checkpoints."""

    tau: float = 0.05
    objective: str = "infonce"
    head_lr: float = 1e-3

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        q = model(inputs["input_ids"], inputs["attention_mask"], inputs["cf_user"], inputs["cf_item"])
        loss = contrastive_loss(q, inputs["p"], inputs["n"], self.tau, self.objective)
        return (loss, {"q": q}) if return_outputs else loss

    def create_optimizer(self, model=None):
        """AdamW with two groups: LoRA at `learning_rate`, head + soft projections at `head_lr` (the
        scheduler scales both alike)."""
        if self.optimizer is None:
            encoder = self.model if model is None else model
            heads = encoder.head_parameters()
            head_ids = {id(p) for p in heads}
            lora = [p for p in encoder.parameters() if p.requires_grad and id(p) not in head_ids]
            self.optimizer = torch.optim.AdamW([{"params": lora, "lr": self.args.learning_rate},
                                                {"params": heads, "lr": self.head_lr}],
                                               lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        return self.optimizer

    _staging: bool = False
    resumed_from_step: int | None = None  # the step a resume started from (None: started from scratch)

    def _save(self, output_dir=None, state_dict=None):
        self.accelerator.unwrap_model(self.model).save(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        (model or self.model).load_trainable(resume_from_checkpoint)

    # ------------------------------------------------------------ atomic checkpoints, announced resumes

    def _get_output_dir(self, trial) -> str:
        out = super()._get_output_dir(trial)
        return str(Path(out) / STAGING_DIR) if self._staging else out

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = run_dir / STAGING_DIR / name, run_dir / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # left by a run killed while saving
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state into the staged folder
        if self.args.should_save:
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)  # atomic on one filesystem
            if not any(staged.parent.iterdir()):
                staged.parent.rmdir()
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint=None, **kwargs):
        """As Trainer.train; `resume_from_checkpoint=True` resumes from the last *complete* checkpoint
        (incomplete ones are set aside with a message) or starts over when there is none, and says which."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(Path(self.args.output_dir),
                                                              set_aside=self.args.should_save)
            if resume_from_checkpoint is None:
                _say(f"no complete checkpoint in {self.args.output_dir}: training from step 0")
        if resume_from_checkpoint:
            if not checkpoint_complete(Path(resume_from_checkpoint)):
                raise UserFacingError(f"checkpoint {resume_from_checkpoint} is incomplete (no {TRAINABLE_FILE} or "
                                      f"trainer_state.json); resume from another one or start over")
            self.resumed_from_step = checkpoint_step(Path(resume_from_checkpoint))
            _say(f"resuming from {resume_from_checkpoint} (step {self.resumed_from_step})")
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)


def _say(message: str) -> None:
    print(f"hnlmrec fine-tuning: {message}", file=sys.stderr, flush=True)


def checkpoint_step(folder: Path) -> int:
    return int(json.loads((folder / "trainer_state.json").read_text())["global_step"])


def checkpoint_complete(folder: Path) -> bool:
    """Whether a checkpoint holds the trainable weights and a readable trainer state (written last)."""
    try:
        checkpoint_step(folder)
    except (OSError, ValueError, KeyError):
        return False
    return (folder / TRAINABLE_FILE).is_file()


def last_complete_checkpoint(output_dir: Path, set_aside: bool = True) -> str | None:
    """The highest complete `checkpoint-N` in `output_dir`. Incomplete ones are skipped with a message and,
    with `set_aside` (the saving process only), renamed to `incomplete-checkpoint-N`: kept, and out of the
    way of the Trainer's rotation (which counts every `checkpoint-*`)."""
    if not output_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir()
                   if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name)))
    for _, folder in reversed(found):
        if checkpoint_complete(folder):
            return str(folder)
        aside = folder.with_name(f"incomplete-{folder.name}")
        if set_aside:
            if aside.exists():
                shutil.rmtree(aside)
            folder.rename(aside)
            _say(f"{folder} is incomplete (the run stopped while writing it): skipped, kept as {aside.name}")
    return None


class SkipNonFiniteSteps(TrainerCallback):
    """Drops an update whose gradients hold NaN/inf (as AMP's GradScaler does), so one bad batch cannot turn
    every weight into NaN (seen on an H200 in bf16: text signal, max_length 224, step 5 of 240). Torch
    optimisers skip parameters without a gradient; the skipped global steps are kept in `skipped`."""

    def __init__(self):
        self.skipped: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            for p in model.parameters():
                p.grad = None
            self.skipped.append(state.global_step + 1)


def load_base(config: FinetuneConfig, device: str | None = None):
    """(lm, tokenizer) through the LLM layer; 4-bit QLoRA only on CUDA."""
    from hnlm.llm.models import load_causal_lm, resolve_device
    device = resolve_device(device)
    if config.load_in_4bit and not device.startswith("cuda"):
        raise UserFacingError("4-bit QLoRA needs a CUDA GPU (bitsandbytes); run without --4bit on CPU")
    lm, tok = load_causal_lm(config.llm, device=device, load_in_4bit=config.load_in_4bit)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return lm, tok


def training_args(config: FinetuneConfig, output_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, num_train_epochs=config.epochs,
        max_steps=config.max_steps, learning_rate=config.lr, warmup_steps=config.warmup_ratio,
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=2, report_to="none", remove_unused_columns=False,
        seed=config.seed, data_seed=config.seed, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available())


def make_trainer(encoder: QueryEncoder, tokenizer, dataset: PairDataset, config: FinetuneConfig,
                 output_dir: str) -> HNLMRecTrainer:
    """The Trainer; with pooling "mean-centred" the centring mean is fitted first (on the first
    `centring_queries` queries of `dataset`, with the adapter as it is) unless the encoder has one."""
    collator = Collator(tokenizer, config.max_length)
    if config.pooling == "mean-centred" and not bool(encoder.centred):
        rows = [dataset[i] for i in range(min(config.centring_queries, len(dataset)))]
        encoder.fit_centring(collator(rows[s:s + config.batch_size]) for s in range(0, len(rows), config.batch_size))
    trainer = HNLMRecTrainer(model=encoder, args=training_args(config, output_dir), train_dataset=dataset,
                             data_collator=collator, callbacks=[SkipNonFiniteSteps()])
    trainer.tau, trainer.objective, trainer.head_lr = config.tau, config.objective, config.head_lr
    return trainer


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine over the distinct pairs of rows of x (1.0: all collinear; near 1, the vectors barely
    differ: a collapsed encoder)."""
    x = np.asarray(x, np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    n = len(x)
    if n < 2:
        raise ValueError("mean_pairwise_cosine needs at least two vectors")
    total = x.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def finetune_quality(q: np.ndarray, item_emb: np.ndarray, targets: np.ndarray, candidates: np.ndarray) -> dict:
    """Fine-tuning quality on pairs held out of fine-tuning: emitted vectors q [n, d], catalogue item
    embeddings [N, d], the teacher's hard negative of each pair (targets [n]) and distractor items of each
    pair (candidates [n, C], the target not among them).

    rank: 1 + the number of distractors scored above the target by cos(q, item); chance is (C + 2) / 2.
    Also the mean pairwise cosine of the emitted vectors and, for reference, of their targets."""
    q = np.asarray(q, np.float64)
    emb = np.asarray(item_emb, np.float64)
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    target_score = np.einsum("nd,nd->n", q, emb[targets])
    distractor_score = np.einsum("nd,ncd->nc", q, emb[candidates])
    rank = 1 + (distractor_score > target_score[:, None]).sum(1)
    c = candidates.shape[1]
    return {"pairs": int(len(q)), "candidates": int(c + 1),
            "target_rank_mean": float(rank.mean()), "target_rank_chance": (c + 2) / 2,
            "target_mrr": float((1.0 / rank).mean()), "target_mrr_chance": float(np.mean(1.0 / np.arange(1, c + 2))),
            "target_top10_share": float((rank <= 10).mean()), "target_top10_chance": min(10, c + 1) / (c + 1),
            "emitted_mean_pairwise_cosine": mean_pairwise_cosine(q),
            "target_mean_pairwise_cosine": mean_pairwise_cosine(emb[targets])}
