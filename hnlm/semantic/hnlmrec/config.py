"""Every setting of an HNLMRec run (fine-tuning, CF teacher, mining, embedding pass), importable without the
training stack: `hnlm finetune` builds its options from these defaults while its parser stays light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from hnlm.cf.config import TrainConfig
from hnlm.semantic.hnlmrec.queries import MiningConfig


@dataclass
class EncoderConfig:
    out_dim: int = 384                 # text encoder (MiniLM) dimension
    cf_signal: str = "text"            # "text", "soft" or "none"
    cf_dim: int = 0                    # teacher CF embedding size (soft prompt only)
    soft_tokens: int = 1               # virtual tokens per CF vector (user, item)
    pooling: str = "mean-centred"      # "mean-centred", "last" or "mean" (see the module doc)
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "EncoderConfig":
        d = dict(d)
        d["lora_targets"] = tuple(d["lora_targets"])
        d.setdefault("pooling", "mean")  # encoders saved before pooling was a setting pooled uncentred means
        return cls(**d)


@dataclass
class FinetuneConfig:
    llm: str = "qwen2.5-0.5b"
    cf_signal: str = "text"            # "text" (as the released code) or "soft"
    budget: str = "per-user:1"         # training pairs used for fine-tuning (sns.Budget spec)
    epochs: float = 1.0
    # > 0 overrides epochs. 80 steps x 8 = 640 of the 943 per-user pairs: at the ~7-11 s/step measured for
    # LoRA on qwen2.5-0.5b (8 x 128 tokens, 2 idle cores) this keeps teacher + fine-tune + embedding pass
    # under 20 minutes on ml-100k; -1 = full epochs.
    max_steps: int = 80
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4                   # LoRA; the paper's 2e-5 is for 5 epochs of an 8B model
    head_lr: float = 1e-3              # head + soft-prompt projections: new layers start from random weights
    warmup_ratio: float = 0.05
    max_length: int = 224              # tokens; longer queries lose the middle of their user part (queries.py)
    tau: float = 0.05
    objective: str = "infonce"         # "infonce" (other queries' targets as negatives) or "paper" (model.py)
    pooling: str = "mean-centred"      # "mean-centred", "last" or "mean" (model.py)
    centring_queries: int = 256        # fine-tuning queries the centring mean is fitted on
    quality_pairs: int = 64            # training pairs held out of fine-tuning to measure it (finetune_quality)
    lora_r: int = 32
    lora_alpha: int = 32               # = r (scale 1); no measurement favoured another value
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    soft_tokens: int = 1
    load_in_4bit: bool = False         # QLoRA (bitsandbytes, CUDA only)
    gradient_checkpointing: bool = False
    save_steps: int = 25
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def encoder_config(self, cf_dim: int, out_dim: int) -> EncoderConfig:
        return EncoderConfig(out_dim=out_dim, cf_signal=self.cf_signal, cf_dim=cf_dim,
                             soft_tokens=self.soft_tokens, pooling=self.pooling, lora_r=self.lora_r,
                             lora_alpha=self.lora_alpha,
                             lora_dropout=self.lora_dropout, lora_targets=tuple(self.lora_targets))


@dataclass
class TeacherConfig:
    """The CF teacher whose mined hard negatives are the fine-tuning targets; unset values are TrainConfig's."""

    model: str = TrainConfig.model
    epochs: int | None = 20    # fixed: evaluated once at the end, never selected on validation; None: converged
    # (early stopping on valid recall@20 with the lr-scaled protocol, best epoch kept: hnlm.cf.frozen)
    lr: float = TrainConfig.lr
    dim: int = TrainConfig.dim
    seed: int = TrainConfig.seed
    batch_size: int = TrainConfig.batch_size   # larger batches make a teacher on ml-1m affordable in fast runs


@dataclass
class RunConfig:
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    context: str = "history"           # user context: "history" (training titles) or "profile" (module 1)
    profiles_llm: str | None = None
    infer_budget: str = "per-user:1"   # query pairs that get an emitted embedding
    infer_users: int | None = None     # embed only the pairs of the first N users (fast runs); None: all
    infer_batch: int = 16
    pair_seed: int = 0
