"""The HNLMRec query encoder: a LoRA-adapted causal LM, mean-pooled, projected into the text-encoder space.

    q = normalize(head(pool_hidden(LM(prompt [+ soft CF tokens]), mask)))

Choices (documented in bench/README.md):
- Pooling is `hnlm.llm.pooling.pool_hidden` (mean over non-pad tokens) of the backbone's last hidden
  state, in fine-tuning and inference alike (the released code pooled differently in the two).
- The head is one linear layer (with bias) from the LLM's hidden size to the text encoder's dimension
  (MiniLM, 384). Targets p and in-batch negatives n_j are MiniLM item embeddings, so q lives in the same
  space as module 2's SNS bank and feeds module 3's adapter unchanged. The bias absorbs the common
  direction that makes raw pooled states nearly collinear, so no separate centring is needed.
- Soft prompt (cf_signal="soft"): the teacher CF user and item embeddings are L2-normalised, each mapped
  by its own linear layer to `soft_tokens` vectors in the LLM input-embedding space, rescaled to the mean
  token-embedding norm, and prepended to the prompt.
- The LM runs in its loaded dtype (hnlm.llm.models.default_dtype); LoRA, head and soft projection train in fp32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hnlm.llm.pooling import pool_hidden

TRAINABLE_FILE = "hnlmrec_trainable.pt"
CONFIG_FILE = "hnlmrec_config.json"


@dataclass
class EncoderConfig:
    out_dim: int = 384                 # text encoder (MiniLM) dimension
    cf_signal: str = "text"            # "text", "soft" or "none"
    cf_dim: int = 0                    # teacher CF embedding size (soft prompt only)
    soft_tokens: int = 1               # virtual tokens per CF vector (user, item)
    lora_r: int = 32
    lora_alpha: int = 64
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
        return cls(**d)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """-mean_ij log sigmoid((cos(q_i, p_i) - cos(q_i, n_j)) / tau) over in-batch interacted items n_j."""
    q, p, n = (F.normalize(x.float(), dim=-1) for x in (q, p, n))
    pos = (q * p).sum(-1, keepdim=True)
    neg = q @ n.T
    return -F.logsigmoid((pos - neg) / tau).mean()


def backbone_of(lm):
    """The transformer body (no LM head): the vocabulary projection is never needed here."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix)


class QueryEncoder(nn.Module):
    """LoRA LM + pooling + head (+ soft CF prompt). `forward` returns L2-normalised q [B, out_dim]."""

    def __init__(self, lm, config: EncoderConfig, adapter_dir: str | Path | None = None):
        super().__init__()
        from peft import LoraConfig, PeftModel, get_peft_model
        self.config = config
        if adapter_dir is not None:
            self.lm = PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=True)
        else:
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=list(config.lora_targets), bias="none")
            self.lm = get_peft_model(lm, lora)
        for name, p in self.lm.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()  # bf16 would swallow small updates
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, config.out_dim)
        self.soft_user = self.soft_item = None
        if config.cf_signal == "soft":
            if config.cf_dim <= 0:
                raise ValueError("cf_signal='soft' needs cf_dim (the teacher's embedding size)")
            k = config.soft_tokens
            self.soft_user = nn.Linear(config.cf_dim, k * hidden)
            self.soft_item = nn.Linear(config.cf_dim, k * hidden)
            table = self.lm.get_input_embeddings().weight
            self.register_buffer("emb_norm", table.float().norm(dim=-1).mean().detach(), persistent=False)
        elif config.cf_signal not in ("text", "none"):
            raise ValueError(f"unknown cf_signal {config.cf_signal!r}: text, soft or none")
        # the new modules live where the LM does: a reloaded encoder (transfer, emit) never meets a Trainer
        # that would move it, and a 4-bit LM must not be moved as a whole
        device = self.lm.get_input_embeddings().weight.device
        for module in (self.head, self.soft_user, self.soft_item):
            if module is not None:
                module.to(device)

    def soft_tokens(self, cf_user: torch.Tensor, cf_item: torch.Tensor) -> torch.Tensor:
        k, hidden = self.config.soft_tokens, self.head.in_features
        parts = []
        for proj, vec in ((self.soft_user, cf_user), (self.soft_item, cf_item)):
            out = proj(F.normalize(vec.float(), dim=-1)).view(len(vec), k, hidden)
            parts.append(F.normalize(out, dim=-1) * self.emb_norm)
        return torch.cat(parts, dim=1)

    def forward(self, input_ids, attention_mask, cf_user=None, cf_item=None) -> torch.Tensor:
        embed = self.lm.get_input_embeddings()
        x = embed(input_ids)
        mask = attention_mask
        if self.soft_user is not None:
            soft = self.soft_tokens(cf_user, cf_item).to(x.dtype)
            x = torch.cat([soft, x], dim=1)
            mask = torch.cat([mask.new_ones(len(mask), soft.shape[1]), mask], dim=1)
        out = backbone_of(self.lm)(inputs_embeds=x, attention_mask=mask, use_cache=False)
        pooled = pool_hidden(out.last_hidden_state, mask)
        return F.normalize(self.head(pooled.float()), dim=-1)

    # ------------------------------------------------------------ trainable state (adapter + heads)

    def trainable_state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()
                if not k.startswith("lm.") or "lora_" in k}

    def save(self, folder: str | Path) -> None:
        """LoRA adapter (peft format, in adapter/) + head/soft projections + config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(folder / "adapter"))
        torch.save({k: v for k, v in self.trainable_state().items() if not k.startswith("lm.")},
                   folder / TRAINABLE_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=1))

    def load_trainable(self, folder: str | Path) -> None:
        """Restore head/soft projections and LoRA weights saved by `save` (resume or reload)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        folder = Path(folder)
        missing = self.load_state_dict(torch.load(folder / TRAINABLE_FILE, weights_only=True), strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{folder}: unexpected keys {missing.unexpected_keys[:5]}")
        set_peft_model_state_dict(self.lm, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
        for name, p in self.lm.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()

    @classmethod
    def from_saved(cls, lm, folder: str | Path) -> "QueryEncoder":
        folder = Path(folder)
        config = EncoderConfig.from_json(json.loads((folder / CONFIG_FILE).read_text()))
        enc = cls(lm, config)
        enc.load_trainable(folder)
        return enc
