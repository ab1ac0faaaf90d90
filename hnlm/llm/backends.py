"""Generation backends with one interface: `generate_json(messages_list, schema) -> list[GenerationResult]`.

Yes/no scoring (`yes_no_scores(groups) -> list of score arrays`): log P(yes) - log P(no) of the first token of
the answer to each prompt, no generation; local models only (the OpenAI-compatible client here has no logprobs).

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

import numpy as np
from tqdm.auto import tqdm

from hnlm.errors import UserFacingError
from hnlm.llm.cache import JsonlCache, call_key, default_cache_path
from hnlm.llm.catalog import check_spec, parse_openai_spec, redact, with_credentials
from hnlm.llm.structured import FieldBudgetProcessor, field_budgets, parse_reply, strip_extensions

# Spellings of the answers whose first-token probabilities are summed: the answer's first token may carry a
# leading space or not (chat templates differ) and either case; only those a tokenizer writes as one token count.
YES_TOKENS = ("Yes", " Yes", "yes", " yes")
NO_TOKENS = ("No", " No", "no", " no")


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
        self.tokens_out = 0   # tokens generated (not cached) over the backend's life: rates across calls

    @property
    def cache(self) -> JsonlCache:
        if self._cache is None:
            self._cache = JsonlCache(Path(self._cache_path) if self._cache_path else
                                     default_cache_path(self.identity))
        return self._cache

    def decoding(self, max_new_tokens: int) -> dict:
        raise NotImplementedError

    def scoring(self) -> dict:
        """What keys yes/no scores (the answer tokens); a backend that cannot score fails here, in one line."""
        raise self.cannot_score()

    def yes_no_scores(self, groups: list[list[list[dict]]], desc: str = "score") -> list[np.ndarray]:
        raise self.cannot_score()

    def cannot_score(self) -> UserFacingError:
        return UserFacingError(f"{self.identity}: yes/no scoring needs a local model (qwen2.5-0.5b, smollm2-135m, "
                               f"hf:<id-or-folder>); the OpenAI-compatible client here has no logprobs")

    def prepare(self, messages_list: list[list[dict]], max_new_tokens: int) -> list[Prompt]:
        raise NotImplementedError

    def run(self, prompts: list[Prompt], schema: dict, budgets: dict, max_new_tokens: int,
            on_done, bar) -> None:
        """Generate `prompts` (none cached); call on_done(list of (Prompt, record)) as results finish."""
        raise NotImplementedError

    def generate_json(self, messages_list: list[list[dict]], schema: dict, max_new_tokens: int | None = None,
                      desc: str = "generate", seeds: list[int] | None = None) -> list[GenerationResult]:
        """Answers to `messages_list` under `schema`; `seeds`: a sampling seed per prompt (sampled decoding; default
        the backend's), part of each prompt's cache key, so one prompt may be asked with several seeds at once."""
        start = time.time()
        budgets, total = field_budgets(schema, max_new_tokens)
        prompts = self.prepare(messages_list, total)
        decoding = self.decoding(total)
        for j, p in enumerate(prompts):
            p.meta["seed"] = getattr(self, "seed", 0) if seeds is None else int(seeds[j])
            sampled = "seed" in decoding
            p.key = call_key(self.identity, p.payload, {**decoding, "seed": p.meta["seed"]} if sampled else decoding,
                             schema)
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
        self.tokens_out += stats["tokens_out"]
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

class RowSampler:
    """Sampled decoding as the last logits processor of a greedy generate(): temperature, top-p (the smallest set
    of tokens holding `top_p` of the mass), then Gumbel noise from one RNG per row, so that the greedy pick is a
    draw from the warped distribution. Each row's RNG is seeded from its prompt's cache key (prompt, settings and
    seed), not from the batch: in float32 a draw is the same alone or in any batch, with or without a shared
    prefill (tests/test_llm_local.py); in bf16 another batch shape can round logits differently and flip a
    near-tie, as it can for greedy decoding, so a rerun with the same chunks is what reproduces a run exactly."""

    def __init__(self, keys: list[str], temperature: float, top_p: float):
        import torch
        self.torch, self.temperature, self.top_p = torch, temperature, top_p
        self.gens = [torch.Generator().manual_seed(int(k[:15], 16)) for k in keys]

    def __call__(self, input_ids, scores):
        torch = self.torch
        scores = scores.float() / self.temperature
        if self.top_p < 1:
            ordered, idx = scores.sort(descending=True, dim=-1)
            probs = ordered.softmax(-1)
            ordered = ordered.masked_fill(probs.cumsum(-1) - probs > self.top_p, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, idx, ordered)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.gens]).to(scores.device)
        return scores - torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))


class LocalBackend(Backend):
    """Batched, grammar-constrained generation with a transformers causal LM (left padding,
    length-sorted batches, KV cache, greedy by default).

    Sampled decoding (temperature > 0, top_p; `RowSampler`): each prompt's draw is seeded by its own cache key
    (prompt, settings, its seed), not by its batch; temperature, top_p and seed are part of every cache key.
    Rows of a batch with the same prompt (one prompt asked with several seeds) share one prefill of that prompt
    (`_shared_prefill`)."""

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
            d.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed, sampler="row-gumbel")
        return d

    def answer_tokens(self) -> dict[str, list[int]]:
        """Token ids of the single-token spellings of Yes and of No (YES_TOKENS, NO_TOKENS)."""
        out = {}
        for answer, spellings in (("yes", YES_TOKENS), ("no", NO_TOKENS)):
            ids = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in spellings]
            out[answer] = sorted({i[0] for i in ids if len(i) == 1})
            if not out[answer]:
                raise UserFacingError(f"{self.name}: no spelling of {answer} in {spellings} is one token")
        return out

    def scoring(self) -> dict:
        return {"score": "logP(yes)-logP(no), first answer token", "dtype": str(self.dtype).replace("torch.", ""),
                **{a: [self.tokenizer.decode([i]) for i in ids] for a, ids in self.answer_tokens().items()}}

    def yes_no_scores(self, groups, desc="score"):
        """Per group of prompts (chat messages; one user's, which share their beginning), log P(yes) - log P(no)
        of the answer's first token, summing the probabilities of `answer_tokens`. A group's shared tokens run
        once; its prompts' remaining tokens run as one batch over that KV cache, in the order of their texts, so
        a prompt's score does not depend on the group's order."""
        start, answers = time.time(), self.answer_tokens()
        out = []
        with tqdm(total=len(groups), desc=desc, disable=not self.progress, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for group in groups:
                out.append(self._score_group([self._render(m) for m in group], answers))
                bar.update(1)
        seconds = time.time() - start
        pairs = sum(map(len, groups))
        self.last_stats = {"groups": len(groups), "prompts": pairs, "seconds": round(seconds, 3),
                           "prompts_per_s": round(pairs / seconds, 2) if seconds else 0.0}
        return out

    def _score_group(self, texts: list[str], answers: dict[str, list[int]]) -> np.ndarray:
        torch, model = self._torch, self.model
        order = sorted(range(len(texts)), key=texts.__getitem__)
        ids = [self.tokenizer(texts[k], add_special_tokens=False)["input_ids"] for k in order]
        if max(map(len, ids)) > self.context_limit():
            raise UserFacingError(f"a scored prompt has {max(map(len, ids))} tokens, over the model's "
                                  f"{self.context_limit()}: shorten the user description")
        shared = shared_prefix(ids)
        rest = [i[shared:] for i in ids]
        batch = torch.full((len(rest), max(map(len, rest))), self.tokenizer.pad_token_id)
        for row, tokens in enumerate(rest):
            batch[row, :len(tokens)] = torch.tensor(tokens)
        with torch.no_grad():
            cache = None
            if shared:
                cache = model(torch.tensor([ids[0][:shared]], device=model.device), use_cache=True).cache
                cache.batch_repeat_interleave(len(rest))
            # right padding: a real token never attends to a pad, which follows it
            mask = torch.ones(len(rest), shared + batch.shape[1], dtype=torch.long, device=model.device)
            # logits only where a prompt ends (the vocabulary projection is a quarter of a small model's work)
            ends = [len(t) - 1 for t in rest]
            keep = sorted(set(ends))
            logits = model(batch.to(model.device), cache=cache, attention_mask=mask,
                           logits_to_keep=torch.tensor(keep, device=model.device)).logits
            last = logits[torch.arange(len(rest)), torch.tensor([keep.index(e) for e in ends])].float()
            # log P(yes) - log P(no): the softmax's normaliser cancels, so raw logits give it
            score = last[:, answers["yes"]].logsumexp(-1) - last[:, answers["no"]].logsumexp(-1)
        scores = np.empty(len(texts))
        scores[order] = score.cpu().numpy()
        return scores

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
        # similar lengths share a batch (little padding); one prompt's rows stay together (one prefill)
        order = sorted(prompts, key=lambda p: (-p.n_tokens, p.payload))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            records = self._generate_batch(batch, schema, budgets, max_new_tokens)
            on_done(list(zip(batch, records)))
            bar.update(len(batch))

    def _shared_prefill(self, batch, enc) -> dict:
        """generate()'s `cache` when rows repeat a prompt: the distinct prompts' KV cache (all tokens but the last),
        computed once and copied to each row of its prompt; {} when every row's prompt is distinct."""
        torch = self._torch
        from transformers import DynamicCache
        first = {}
        for row, p in enumerate(batch):
            first.setdefault(p.payload, row)
        if len(first) == len(batch):
            return {}
        uniq = torch.tensor(list(first.values()), device=enc["input_ids"].device)
        ids, mask = enc["input_ids"][uniq, :-1], enc["attention_mask"][uniq, :-1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        slot = {payload: n for n, payload in enumerate(first)}
        cache.reorder_cache(torch.tensor([slot[p.payload] for p in batch], device=ids.device))
        return {"cache": cache}

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
        gen.do_sample = False   # sampled decoding is RowSampler's, after the grammar
        gen.temperature = gen.top_p = gen.top_k = None
        extra = {}
        if self.temperature > 0:
            processors.append(RowSampler([p.key for p in batch], self.temperature, self.top_p))
            extra = self._shared_prefill(batch, enc)
        with torch.no_grad():
            out = model.generate(**enc, **extra, generation_config=gen, logits_processor=processors)
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

    def _post(self, client, messages, schema, max_tokens, seed: int):
        import httpx
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = "no attempt"
        attempt = 0
        while attempt <= self.max_retries:
            mode = self.mode
            body = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens,
                    "temperature": self.temperature, "response_format": self._response_format(schema, mode)}
            if self.temperature > 0:
                body.update(top_p=self.top_p, seed=seed)
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
            futures = {pool.submit(self._post, client, p.payload, schema, max_new_tokens, p.meta["seed"]): p
                       for p in prompts}
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


def shared_prefix(sequences: list[list[int]]) -> int:
    """Length of the tokens all `sequences` begin with, leaving each at least one token of its own."""
    n = min(map(len, sequences)) - 1
    for k in range(n):
        if len({s[k] for s in sequences}) > 1:
            return k
    return max(n, 0)


def make_backend(spec: str, **opts) -> Backend:
    """`qwen2.5-0.5b` | `smollm2-135m` | `hf:<id-or-folder>` | `openai:<model>@<base_url>` (hnlm.llm.catalog);
    a spec this machine cannot run fails here, in one line. A redacted spec gets back the credentials that
    `hnlm study` passed its notebook kernels (catalog.with_credentials)."""
    spec = check_spec(with_credentials(spec))
    if spec.startswith("openai:"):
        return OpenAIBackend(*parse_openai_spec(spec), **opts)
    return LocalBackend(spec[3:] if spec.startswith("hf:") else spec, **opts)
