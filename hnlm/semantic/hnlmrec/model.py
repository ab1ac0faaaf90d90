"""The HNLMRec query encoder: a LoRA-adapted causal LM, pooled, projected into the text-encoder space.

    q = normalize(head(pool(LM(prompt [+ soft CF tokens]), mask) - pool_mean))

Choices (documented in bench/README.md):
- Pooling (EncoderConfig.pooling) is one rule for fine-tuning and inference alike, since both run this
  `forward` (the released code pooled differently in the two):
    "mean-centred" (default): mean over non-pad tokens (`hnlm.llm.pooling.pool_hidden`) minus a fixed mean
      pooled state `pool_mean`, fitted once on the fine-tuning queries before training (`fit_centring`) and
      saved with the heads. Mean-pooled states of queries that share one prompt template are nearly collinear
      (cosine ~0.99): without centring the head sees a large common vector plus a tiny query-specific part.
    "last": the state of the last non-pad token (the official training code's rule);
    "mean": uncentred mean (the first release's rule).
- The head is one linear layer (with bias) from the LLM's hidden size to the text encoder's dimension
  (MiniLM, 384). Targets p are MiniLM item embeddings, so q lives in the same space as module 2's SNS bank
  and feeds module 3's adapter unchanged.
- Objective (`contrastive_loss`): "infonce" (default) scores each query against every target of the batch
  (its own is the positive, other queries' targets are negatives) and against the batch's interacted items;
  "paper" is the released objective, which compares a query with interacted items only and so is already
  low when every q is one shared vector plus a small part of its target (collapse it cannot see).
- Soft prompt (cf_signal="soft"): the teacher CF user and item embeddings are L2-normalised, each mapped
  by its own linear layer to `soft_tokens` vectors in the LLM input-embedding space, rescaled to the mean
  token-embedding norm, and prepended to the prompt.
- The LM runs in its loaded dtype (hnlm.llm.models.default_dtype); LoRA, head and soft projection train in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hnlm.atomic import atomic_dir, atomic_named_path, make_dir, write_text
from hnlm.llm.pooling import pool_hidden
from hnlm.semantic.hnlmrec.config import EncoderConfig  # noqa: F401  (also importable from here)

TRAINABLE_FILE = "hnlmrec_trainable.pt"
CONFIG_FILE = "hnlmrec_config.json"


OBJECTIVES = ("infonce", "paper")
POOLINGS = ("mean-centred", "last", "mean")
SAME_TARGET_COS = 0.9999  # another query's target this close to one's own is the same item: not a negative


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, tau: float = 0.05,
                     objective: str = "infonce") -> torch.Tensor:
    """The fine-tuning loss of queries q [B, d] with targets p [B, d] and interacted items n [B, d].

    "paper":   -mean_ij log sigmoid((cos(q_i, p_i) - cos(q_i, n_j)) / tau)  (interacted items only);
    "infonce": -mean_i log softmax_i over [cos(q_i, p_j) for all j] + [cos(q_i, n_j) for all j], / tau;
               targets of other queries that equal q_i's own target are masked out."""
    q, p, n = (F.normalize(x.float(), dim=-1) for x in (q, p, n))
    if objective == "paper":
        pos = (q * p).sum(-1, keepdim=True)
        return -F.logsigmoid((pos - q @ n.T) / tau).mean()
    if objective != "infonce":
        raise ValueError(f"unknown objective {objective!r}: choose from {OBJECTIVES}")
    to_targets = q @ p.T
    same = (p @ p.T > SAME_TARGET_COS) & ~torch.eye(len(p), dtype=torch.bool, device=p.device)
    to_targets = to_targets.masked_fill(same, float("-inf"))
    logits = torch.cat([to_targets, q @ n.T], dim=1) / tau
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """State of the last non-pad token of each row (left or right padding): [B,T,H], [B,T] -> [B,H]."""
    mask = attention_mask.to(hidden.device)
    positions = torch.arange(mask.shape[1], device=hidden.device).expand_as(mask)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last].to(torch.float32)


def backbone_of(lm):
    """The transformer body (no LM head): the vocabulary projection is never needed here."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix)


def sort_target_modules(path: Path) -> None:
    """peft writes target_modules, a set, in the process's string-hash order: sorted, a save's bytes repeat."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class QueryEncoder(nn.Module):
    """LoRA LM + pooling + head (+ soft CF prompt). `forward` returns L2-normalised q [B, out_dim]."""

    def __init__(self, lm, config: EncoderConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        self.config = config
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
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}: choose from {POOLINGS}")
        # saved with the heads (trainable_state keeps every non-LM tensor); `centred` says it was fitted
        self.register_buffer("pool_mean", torch.zeros(hidden))
        self.register_buffer("centred", torch.tensor(False))
        # the new modules live where the LM does: a reloaded encoder (transfer, emit) never meets a Trainer
        # that would move it, and a 4-bit LM must not be moved as a whole
        device = self.lm.get_input_embeddings().weight.device
        for module in (self.head, self.soft_user, self.soft_item):
            if module is not None:
                module.to(device)
        self.pool_mean, self.centred = self.pool_mean.to(device), self.centred.to(device)

    def head_parameters(self) -> list[nn.Parameter]:
        """The head and soft-prompt projections (trained with their own learning rate)."""
        return [p for name, p in self.named_parameters() if not name.startswith("lm.") and p.requires_grad]

    def soft_tokens(self, cf_user: torch.Tensor, cf_item: torch.Tensor) -> torch.Tensor:
        k, hidden = self.config.soft_tokens, self.head.in_features
        parts = []
        for proj, vec in ((self.soft_user, cf_user), (self.soft_item, cf_item)):
            out = proj(F.normalize(vec.float(), dim=-1)).view(len(vec), k, hidden)
            parts.append(F.normalize(out, dim=-1) * self.emb_norm)
        return torch.cat(parts, dim=1)

    def forward(self, input_ids, attention_mask, cf_user=None, cf_item=None) -> torch.Tensor:
        return F.normalize(self.head(self.pooled(input_ids, attention_mask, cf_user, cf_item)), dim=-1)

    def hidden_states(self, input_ids, attention_mask, cf_user=None, cf_item=None):
        """(last hidden states, mask), soft CF tokens prepended when the config has them."""
        x = self.lm.get_input_embeddings()(input_ids)
        mask = attention_mask
        if self.soft_user is not None:
            soft = self.soft_tokens(cf_user, cf_item).to(x.dtype)
            x = torch.cat([soft, x], dim=1)
            mask = torch.cat([mask.new_ones(len(mask), soft.shape[1]), mask], dim=1)
        out = backbone_of(self.lm)(inputs_embeds=x, attention_mask=mask, use_cache=False)
        return out.last_hidden_state, mask

    def pooled(self, input_ids, attention_mask, cf_user=None, cf_item=None) -> torch.Tensor:
        """The pooled state the head reads (the config's pooling rule), float32 [B, hidden]."""
        hidden, mask = self.hidden_states(input_ids, attention_mask, cf_user, cf_item)
        if self.config.pooling == "last":
            return pool_last(hidden, mask)
        pooled = pool_hidden(hidden, mask)
        if self.config.pooling == "mean":
            return pooled
        if not bool(self.centred):
            raise RuntimeError("pooling 'mean-centred' needs fit_centring() on the fine-tuning queries first")
        return pooled - self.pool_mean

    @torch.no_grad()
    def fit_centring(self, batches) -> int:
        """Fit `pool_mean` as the mean pooled state over `batches` (collated dicts with input_ids,
        attention_mask, cf_user, cf_item); returns the number of queries it was fitted on."""
        was_training = self.training
        self.eval()
        total, count = torch.zeros_like(self.pool_mean), 0
        device = self.pool_mean.device
        for b in batches:
            hidden, mask = self.hidden_states(*(b[k].to(device) for k in ("input_ids", "attention_mask",
                                                                           "cf_user", "cf_item")))
            total += pool_hidden(hidden, mask).sum(0)
            count += len(mask)
        if count == 0:
            raise ValueError("fit_centring needs at least one query")
        self.pool_mean.copy_(total / count)
        self.centred.fill_(True)
        self.train(was_training)
        return count

    # ------------------------------------------------------------ trainable state (adapter + heads)

    def trainable_state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()
                if not k.startswith("lm.") or "lora_" in k}

    def save(self, folder: str | Path) -> None:
        """LoRA adapter (peft format, in adapter/) + head/soft projections + config, each written atomically (the
        config last: it marks a complete save); a caller that needs the folder whole writes it through
        hnlm.atomic.atomic_dir."""
        folder = make_dir(folder)
        with atomic_dir(folder / "adapter") as tmp:
            self.lm.save_pretrained(str(tmp))
            sort_target_modules(tmp / "adapter_config.json")
        with atomic_named_path(folder / TRAINABLE_FILE) as tmp:   # torch.save records the name
            torch.save({k: v for k, v in self.trainable_state().items() if not k.startswith("lm.")}, tmp)
        write_text(folder / CONFIG_FILE, json.dumps(self.config.to_json(), indent=1))

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
