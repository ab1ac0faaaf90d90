"""Generation backends with one interface: `generate_json(messages_list, schema) -> list[GenerationResult]`.

Specs for `make_backend`: `qwen2.5-0.5b`, `smollm2-135m` (packaged), `hf:<id-or-folder>` (local
transformers), `openai:<model>@<base_url>` (any OpenAI-compatible chat server; key from HNLM_OPENAI_API_KEY
or OPENAI_API_KEY). Every call goes through the append-only cache (hnlm.llm.cache): a rerun costs nothing,
and an interrupted run resumes at the batch it was in.

Prompt truncation rule (local backend): a prompt longer than `max_context - max_new_tokens` tokens loses
tokens from the MIDDLE of its last user message (replaced by " [...] "), keeping the system message, the
beginning of the user message and its end (where the instructions are). Every truncation is counted
(`stats["truncated_prompts"]`, `GenerationResult.prompt_truncated`).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hnlm.errors import UserFacingError
from hnlm.llm.cache import JsonlCache, call_key, default_cache_path
from hnlm.llm.catalog import check_spec, parse_openai_spec, redact, with_credentials
from hnlm.llm.structured import FieldBudgetProcessor, field_budgets, parse_reply, strip_extensions


@dataclass
class GenerationResult:
    ok: bool
    value: dict | None
    raw: str
    reason: str | None
    cached: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    prompt_truncated: bool = False
    key: str = ""


@dataclass
class Prompt:
    """A prepared prompt: what the model sees (text or messages) and its token count."""
    payload: object
    n_tokens: int = 0
    truncated: bool = False
    key: str = ""
    meta: dict = field(default_factory=dict)


class BackendUnavailable(UserFacingError):
    """The server stayed down or kept answering garbage after bounded retries (cached results are kept)."""


class Backend:
    identity: str = ""            # keys the LLM cache: weights and precision
    weights_identity: str = ""    # the weights alone (models.weights_identity): keys shipped outputs

    def __init__(self, cache_path: str | Path | None = None, progress: bool = True):
        self._cache_path = cache_path
        self._cache: JsonlCache | None = None
        self.progress = progress
        self.last_stats: dict = {}

    @property
    def cache(self) -> JsonlCache:
        if self._cache is None:
            self._cache = JsonlCache(Path(self._cache_path) if self._cache_path else
                                     default_cache_path(self.identity))
        return self._cache

    def decoding(self, max_new_tokens: int) -> dict:
        raise NotImplementedError

    def prepare(self, messages_list: list[list[dict]], max_new_tokens: int) -> list[Prompt]:
        raise NotImplementedError

    def run(self, prompts: list[Prompt], schema: dict, budgets: dict, max_new_tokens: int,
            on_done, bar) -> None:
        """Generate `prompts` (none cached); call on_done(list of (Prompt, record)) as results finish."""
        raise NotImplementedError

    def generate_json(self, messages_list: list[list[dict]], schema: dict, max_new_tokens: int | None = None,
                      desc: str = "generate") -> list[GenerationResult]:
        start = time.time()
        budgets, total = field_budgets(schema, max_new_tokens)
        prompts = self.prepare(messages_list, total)
        decoding = self.decoding(total)
        for p in prompts:
            p.key = call_key(self.identity, p.payload, decoding, schema)
        todo, seen = [], set()
        for p in prompts:
            if p.key not in self.cache and p.key not in seen:
                seen.add(p.key)
                todo.append(p)
        stats = {"prompts": len(prompts), "cached": len(prompts) - sum(1 for p in prompts if p.key in seen),
                 "generated": 0, "failed": 0, "truncated_prompts": sum(p.truncated for p in prompts),
                 "tokens_in": 0, "tokens_out": 0}

        def on_done(pairs):
            records = [dict(rec, key=p.key, prompt_truncated=p.truncated) for p, rec in pairs]
            self.cache.put_many(records)
            for rec in records:
                stats["generated"] += 1
                stats["failed"] += not rec["ok"]
                stats["tokens_in"] += rec.get("tokens_in", 0)
                stats["tokens_out"] += rec.get("tokens_out", 0)

        if todo:
            with tqdm(total=len(todo), desc=desc, disable=not self.progress, file=sys.stderr,
                      dynamic_ncols=True) as bar:
                self.run(todo, schema, budgets, total, on_done, bar)
        seconds = time.time() - start
        stats.update(seconds=round(seconds, 3),
                     prompts_per_s=round(stats["generated"] / seconds, 3) if seconds else 0.0,
                     tokens_per_s=round(stats["tokens_out"] / seconds, 2) if seconds else 0.0,
                     max_new_tokens=total, budgets=budgets)
        self.last_stats = stats
        if todo and self.progress:
            print(f"[{desc}] {stats['generated']} generated, {stats['cached']} cached, {stats['failed']} "
                  f"failed, {stats['truncated_prompts']} truncated prompts in {seconds:.1f}s: "
                  f"{stats['prompts_per_s']:.2f} prompts/s, {stats['tokens_per_s']:.1f} tokens/s",
                  file=sys.stderr)
        return [self._result(p, fresh=p.key in seen) for p in prompts]

    def _result(self, p: Prompt, fresh: bool) -> GenerationResult:
        rec = self.cache.get(p.key)
        return GenerationResult(ok=rec["ok"], value=rec.get("value"), raw=rec.get("raw", ""),
                                reason=rec.get("reason"), cached=not fresh,
                                tokens_in=rec.get("tokens_in", 0), tokens_out=rec.get("tokens_out", 0),
                                prompt_truncated=rec.get("prompt_truncated", p.truncated), key=p.key)


# ------------------------------------------------------------------ local transformers

class LocalBackend(Backend):
    """Batched, grammar-constrained generation with a transformers causal LM (left padding,
    length-sorted batches, KV cache, greedy by default).

    Sampled decoding (temperature > 0, top_p): the torch RNG is seeded with `seed` before each batch, so the
    same prompts with the same batch size and settings give the same outputs; temperature, top_p and seed are
    part of every cache key."""

    def __init__(self, name: str, device: str | None = None, dtype=None, load_in_4bit: bool = False,
                 batch_size: int | None = None, constrained: bool = True, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, max_context: int | None = None,
                 cache_path: str | Path | None = None, progress: bool = True):
        super().__init__(cache_path, progress)
        import torch

        from hnlm.llm.models import default_dtype, model_identity, resolve_device, weights_identity
        self.name, self.device = name, resolve_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.load_in_4bit = load_in_4bit
        self.batch_size = batch_size or (64 if self.device.startswith("cuda") else 16)
        self.constrained, self.temperature, self.top_p, self.seed = constrained, temperature, top_p, seed
        self.max_context = max_context
        self.identity = model_identity(name, self.dtype, load_in_4bit)
        self.weights_identity = weights_identity(name)
        self._model = self._tokenizer = self._compiler = None
        self._grammars: dict[str, object] = {}
        self._torch = torch

    # lazy: a fully cached run never loads the model
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from hnlm.llm.models import model_source
            self._tokenizer = AutoTokenizer.from_pretrained(model_source(self.name))
            self._tokenizer.padding_side = "left"
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from hnlm.llm.models import load_causal_lm
            self._model, self._tokenizer = load_causal_lm(self.name, self.device, self.dtype, self.load_in_4bit)
        return self._model

    def context_limit(self) -> int:
        if self.max_context:
            return self.max_context
        from transformers import AutoConfig

        from hnlm.llm.models import model_source
        cfg = AutoConfig.from_pretrained(model_source(self.name))
        return int(getattr(cfg, "max_position_embeddings", 4096) or 4096)

    def decoding(self, max_new_tokens: int) -> dict:
        d = {"max_new_tokens": max_new_tokens, "constrained": self.constrained, "budget": "fields-v1"}
        if self.temperature > 0:
            d.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return d

    def _render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(self, messages_list, max_new_tokens):
        limit = self.context_limit() - max_new_tokens
        if limit < 16:
            raise UserFacingError(f"max_new_tokens={max_new_tokens} leaves no room in a "
                                  f"{self.context_limit()}-token context")
        prompts = []
        for messages in messages_list:
            text = self._render(messages)
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            truncated = False
            if n > limit:
                text, n = self._truncate(messages, n, limit)
                truncated = True
            prompts.append(Prompt(text, n, truncated))
        return prompts

    def _truncate(self, messages, n, limit):
        """Cut tokens from the middle of the last user message until the prompt fits (see module doc)."""
        idx = max(i for i, m in enumerate(messages) if m["role"] == "user")
        ids = self.tokenizer(messages[idx]["content"], add_special_tokens=False)["input_ids"]
        excess = n - limit
        for _ in range(8):
            cut = min(len(ids), excess + 8)
            keep_head = (len(ids) - cut) // 2
            content = (self.tokenizer.decode(ids[:keep_head]) + " [...] "
                       + self.tokenizer.decode(ids[keep_head + cut:]))
            msgs = [dict(m) for m in messages]
            msgs[idx]["content"] = content
            text = self._render(msgs)
            n2 = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n2 <= limit:
                return text, n2
            excess += n2 - limit
        raise UserFacingError(f"prompt cannot be truncated to {limit} tokens (scaffold is too long)")

    def _grammar(self, schema: dict):
        import xgrammar as xgr
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                eos = self.model.generation_config.eos_token_id
                eos = eos if isinstance(eos, list) else [eos]
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size,
                                                          stop_token_ids=eos)
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            # No free whitespace: after a field is closed the grammar leaves only ',' or '}' to write.
            self._grammars[key] = self._compiler.compile_json_schema(
                json.dumps(strip_extensions(schema)), any_whitespace=False)
        return self._grammars[key]

    def run(self, prompts, schema, budgets, max_new_tokens, on_done, bar):
        order = sorted(prompts, key=lambda p: -p.n_tokens)  # similar lengths share a batch: little padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            records = self._generate_batch(batch, schema, budgets, max_new_tokens)
            on_done(list(zip(batch, records)))
            bar.update(len(batch))

    def _generate_batch(self, batch, schema, budgets, max_new_tokens):
        torch = self._torch
        from transformers import LogitsProcessorList
        model, tok = self.model, self.tokenizer
        enc = tok([p.payload for p in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        prompt_len = enc["input_ids"].shape[1]
        processors = LogitsProcessorList()
        budget_proc = None
        if self.constrained:
            import xgrammar as xgr
            processors.append(xgr.contrib.hf.LogitsProcessor(self._grammar(schema)))  # single-use
            budget_proc = FieldBudgetProcessor(tok, budgets, max_new_tokens, prompt_len)
            processors.append(budget_proc)
        gen = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
        gen.max_new_tokens, gen.pad_token_id, gen.use_cache = max_new_tokens, tok.pad_token_id, True
        gen.do_sample = self.temperature > 0
        if gen.do_sample:
            gen.temperature, gen.top_p, gen.top_k = self.temperature, self.top_p, None
            torch.manual_seed(self.seed)
        else:
            gen.temperature = gen.top_p = gen.top_k = None
        with torch.no_grad():
            out = model.generate(**enc, generation_config=gen, logits_processor=processors)
        eos = set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id])
        eos.add(tok.pad_token_id)
        records = []
        for row, p in enumerate(batch):
            new = out[row, prompt_len:].tolist()
            n_out = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            raw = tok.decode(new[:n_out], skip_special_tokens=True)
            value, reason = parse_reply(raw, schema, lenient=not self.constrained)
            if reason and n_out >= max_new_tokens:
                reason += " (hit max_new_tokens)"
            records.append({"ok": value is not None, "value": value, "raw": raw, "reason": reason,
                            "tokens_in": p.n_tokens, "tokens_out": n_out})
        return records


# ------------------------------------------------------------------ OpenAI-compatible HTTP

class OpenAIBackend(Backend):
    """Chat completions over HTTP (vLLM, Ollama, llama.cpp server, hosted APIs).

    Structured output: `response_format` json_schema first; if the server rejects it (HTTP 400/422/500/501
    on that request), `{"type": "json_object", "schema": ...}` from then on (llama.cpp's form). A server
    may also ignore `response_format` and answer free text (`transformers serve` does, with a warning in
    its log), so no reply is trusted: each one goes through the same path, outermost {...}, json-repair,
    schema and word caps, and what still fails is recorded and counted as a failure. 429/5xx/timeouts/
    connection errors and garbage envelopes are retried with exponential back-off (Retry-After honoured);
    after `max_retries` the run stops with BackendUnavailable, keeping every result already cached."""

    def __init__(self, model: str, base_url: str, api_key: str | None = None, concurrency: int = 4,
                 max_retries: int = 4, timeout: float = 120.0, backoff: float = 0.5,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 cache_path: str | Path | None = None, progress: bool = True):
        super().__init__(cache_path, progress)
        self.model_name, self.base_url = model, base_url.rstrip("/")
        self.top_p, self.seed = top_p, seed
        self.api_key = api_key or os.environ.get("HNLM_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.temperature = temperature
        self.identity = redact(f"openai:{model}@{self.base_url}")   # keys the cache: never a credential
        self.weights_identity = self.identity   # a served model's weights are not visible here
        self.mode = "json_schema"
        self._mode_lock = threading.Lock()
        self.retries = 0

    def decoding(self, max_new_tokens):
        d = {"max_tokens": max_new_tokens, "temperature": self.temperature}
        if self.temperature > 0:  # sampled: the server's seed is best effort, but the settings key the cache
            d.update(top_p=self.top_p, seed=self.seed)
        return d

    def prepare(self, messages_list, max_new_tokens):
        return [Prompt([dict(m) for m in messages]) for messages in messages_list]

    def _response_format(self, schema, mode):
        clean = strip_extensions(schema)
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "answer", "schema": clean, "strict": True}}
        return {"type": "json_object", "schema": clean}

    def _post(self, client, messages, schema, max_tokens):
        import httpx
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = "no attempt"
        attempt = 0
        while attempt <= self.max_retries:
            mode = self.mode
            body = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens,
                    "temperature": self.temperature, "response_format": self._response_format(schema, mode)}
            if self.temperature > 0:
                body.update(top_p=self.top_p, seed=self.seed)
            try:
                resp = client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                        choice = data["choices"][0]
                        return choice["message"]["content"] or "", choice.get("finish_reason"), data.get("usage") or {}
                    except (ValueError, KeyError, IndexError, TypeError) as err:
                        last = f"malformed response ({type(err).__name__}): {resp.text[:200]!r}"
                elif mode == "json_schema" and resp.status_code in (400, 422, 500, 501):
                    with self._mode_lock:
                        self.mode = "json_object"  # server lacks json_schema: switch, no back-off
                    last = f"HTTP {resp.status_code} for json_schema response_format"
                    continue
                elif resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    wait = resp.headers.get("retry-after")
                    if wait and wait.replace(".", "", 1).isdigit():
                        time.sleep(min(float(wait), 30.0))
                else:
                    raise UserFacingError(redact(f"{self.base_url} answered HTTP {resp.status_code}: "
                                                 f"{resp.text[:300]}"))
            attempt += 1
            self.retries += 1
            if attempt <= self.max_retries:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 4))
        kept = (f"answers already generated are kept in {self.cache.path}" if self.cache.path.exists()
                else "no answer had been generated yet")
        raise BackendUnavailable(redact(f"{self.base_url} failed after {self.max_retries} retries: {last}; {kept}"))

    def run(self, prompts, schema, budgets, max_new_tokens, on_done, bar):
        import httpx
        with httpx.Client(timeout=self.timeout) as client, ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._post, client, p.payload, schema, max_new_tokens): p for p in prompts}
            error = None
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    content, finish, usage = fut.result()
                except UserFacingError as err:
                    error = error or err
                    continue
                value, reason = parse_reply(content, schema, lenient=True)
                if reason and finish == "length":
                    reason += " (finish_reason=length)"
                on_done([(p, {"ok": value is not None, "value": value, "raw": content, "reason": reason,
                              "tokens_in": usage.get("prompt_tokens", 0),
                              "tokens_out": usage.get("completion_tokens", 0)})])
                bar.update(1)
            if error:
                raise error


def make_backend(spec: str, **opts) -> Backend:
    """`qwen2.5-0.5b` | `smollm2-135m` | `hf:<id-or-folder>` | `openai:<model>@<base_url>` (hnlm.llm.catalog);
    a spec this machine cannot run fails here, in one line. A redacted spec gets back the credentials that
    `hnlm study` passed its notebook kernels (catalog.with_credentials)."""
    spec = check_spec(with_credentials(spec))
    if spec.startswith("openai:"):
        return OpenAIBackend(*parse_openai_spec(spec), **opts)
    return LocalBackend(spec[3:] if spec.startswith("hf:") else spec, **opts)
