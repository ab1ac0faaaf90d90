"""Embedding pass: the fine-tuned query encoder emits one hard-negative embedding per query pair.

Batched, with the same pooling and head as in training; partial results are written every few batches
so an interrupted pass resumes, and a finished bank is reused while the adapter is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hnlm.atomic import write_npz
from hnlm.semantic.hnlmrec.model import TRAINABLE_FILE


def adapter_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (TRAINABLE_FILE, "adapter/adapter_model.safetensors"):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:16]


def queries_fingerprint(texts, users, items) -> str:
    h = hashlib.sha256("\n".join(texts).encode())
    h.update(np.asarray(users, np.int64).tobytes())
    h.update(np.asarray(items, np.int64).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def emit(encoder, tokenizer, texts: list[str], cf_user: np.ndarray, cf_item: np.ndarray,
         batch_size: int = 16, max_length: int = 224, partial: Path | None = None,
         save_every: int = 8) -> np.ndarray:
    """q for every text (L2-normalised, [n, out_dim]); resumes from `partial` when it exists."""
    encoder.eval()
    device = next(encoder.head.parameters()).device
    out = np.zeros((len(texts), encoder.config.out_dim), np.float32)
    done = 0
    if partial is not None and partial.exists():
        z = np.load(partial)
        done = int(z["done"])
        out[:done] = z["emb"][:done]
    starts = range(done, len(texts), batch_size)
    for n, start in enumerate(tqdm(starts, desc="HNLMRec embeddings", unit="batch")):
        stop = min(start + batch_size, len(texts))
        enc = tokenizer(texts[start:stop], return_tensors="pt", padding=True, padding_side="right", truncation=True,
                        max_length=max_length).to(device)
        cu = torch.from_numpy(cf_user[start:stop]).to(device)
        ci = torch.from_numpy(cf_item[start:stop]).to(device)
        out[start:stop] = encoder(enc["input_ids"], enc["attention_mask"], cu, ci).float().cpu().numpy()
        if partial is not None and (n + 1) % save_every == 0:
            write_npz(partial, emb=out, done=stop)   # a kill mid-save keeps the previous one
    return out
