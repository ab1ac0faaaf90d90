"""The real local transformers path with the packaged SmolLM2-135M: constrained batched generation gives
schema-valid JSON every time, prompts over the context are truncated and counted, the cache makes a rerun
free, and a generating process killed mid-run resumes with no lost and no duplicated records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hnlm.llm.backends import make_backend
from hnlm.llm.structured import parse_and_validate

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object",
          "properties": {"summarization": {"type": "string", "x-max-tokens": 10, "x-max-words": 100},
                         "reasoning": {"type": "string", "x-max-tokens": 4}},
          "required": ["summarization", "reasoning"], "additionalProperties": False}
MOVIES = ["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)",
          "Fargo (1996)"]


def messages(title):
    return [{"role": "system", "content": "You write short movie profiles as JSON."},
            {"role": "user", "content": f"Movie: {title}. Give 'summarization' and 'reasoning'."}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    return make_backend("smollm2-135m", batch_size=4, progress=False,
                        cache_path=tmp_path_factory.mktemp("cache") / "c.jsonl")


def test_constrained_batches_are_always_valid_and_cached(smol):
    res = smol.generate_json([messages(t) for t in MOVIES[:4]], SCHEMA, max_new_tokens=30)
    assert all(r.ok for r in res), [(r.reason, r.raw) for r in res]
    for r in res:  # the stored raw text itself parses; nothing was patched after decoding
        assert parse_and_validate(r.raw, SCHEMA)[0] == r.value and r.tokens_out <= 30
    stats = smol.last_stats
    assert stats["generated"] == 4 and stats["failed"] == 0 and stats["tokens_per_s"] > 0
    again = smol.generate_json([messages(t) for t in MOVIES[:4]], SCHEMA, max_new_tokens=30)
    assert all(r.cached for r in again) and [r.value for r in again] == [r.value for r in res]


def test_a_tight_total_budget_still_closes_the_object(smol):
    # 10 + 4 budgeted tokens + overhead need 34; with 26 the field budgets shrink and the JSON still closes.
    res = smol.generate_json([messages(MOVIES[5])], SCHEMA, max_new_tokens=26)
    assert res[0].ok, (res[0].reason, res[0].raw)
    assert res[0].tokens_out <= 26 and smol.last_stats["budgets"]["summarization"] < 10


def test_sampled_draws_depend_on_prompt_and_seed_not_on_the_batch_and_share_a_prefill(tmp_path):
    """Sampled decoding: one prompt asked with several seeds in one batch (one shared prefill) gives, row by row,
    what each (prompt, seed) gives alone in a batch of one (float32: no rounding flips between batch shapes);
    two seeds of one prompt give different draws."""
    def backend(name):
        return make_backend("smollm2-135m", batch_size=8, progress=False, cache_path=tmp_path / f"{name}.jsonl",
                            dtype=torch.float32, temperature=1.0, top_p=0.95, seed=0)
    asks = [(MOVIES[0], 1), (MOVIES[0], 2), (MOVIES[1], 1), (MOVIES[0], 3)]
    together = backend("together").generate_json([messages(t) for t, _ in asks], SCHEMA, max_new_tokens=30,
                                                  seeds=[s for _, s in asks])
    alone = backend("alone")
    for (title, seed), row in zip(asks, together):
        assert alone.generate_json([messages(title)], SCHEMA, max_new_tokens=30, seeds=[seed])[0].raw == row.raw
    assert len({together[0].raw, together[1].raw, together[3].raw}) > 1


def test_unconstrained_answers_are_recorded_not_replaced(tmp_path):
    free = make_backend("smollm2-135m", batch_size=2, constrained=False, progress=False,
                        cache_path=tmp_path / "c.jsonl")
    res = free.generate_json([messages(t) for t in MOVIES[:2]], SCHEMA, max_new_tokens=12)
    for r in res:
        assert r.raw  # raw text always kept
        assert r.ok == (r.value is not None) and (r.reason is None) == r.ok
        if r.ok:  # recorded as written: every field the schema asks for, each value a piece of the raw text
            assert set(r.value) == {"summarization", "reasoning"}
            assert all(v in r.raw or json.dumps(v, ensure_ascii=False)[1:-1] in r.raw
                       for v in r.value.values()), (r.value, r.raw)


def test_long_prompts_are_truncated_in_the_middle_and_counted(tmp_path):
    b = make_backend("smollm2-135m", batch_size=2, max_context=120, progress=False,
                     cache_path=tmp_path / "c.jsonl")
    long = [{"role": "user", "content": "START " + "filler words here " * 100 + " END: answer in JSON."}]
    prompts = b.prepare([long, messages("Heat (1995)")], 30)
    assert [p.truncated for p in prompts] == [True, False]
    assert prompts[0].n_tokens <= 120 - 30
    text = prompts[0].payload
    assert "START" in text and "END: answer in JSON." in text and "[...]" in text
    res = b.generate_json([long], SCHEMA, max_new_tokens=30)
    assert res[0].prompt_truncated and b.last_stats["truncated_prompts"] == 1


WORKER = """
import sys
from hnlm.llm.backends import make_backend
sys.path.insert(0, {tests!r})
from test_llm_local import SCHEMA, MOVIES, messages
b = make_backend("smollm2-135m", batch_size=1, progress=False, cache_path={cache!r})
b.generate_json([messages(t) for t in MOVIES[:4]], SCHEMA, max_new_tokens=30)
"""


def test_kill_and_resume(tmp_path):
    cache = tmp_path / "resume.jsonl"
    code = WORKER.format(tests=str(Path(__file__).parent), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if cache.exists() and len(cache.read_bytes().splitlines()) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "worker finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = cache.read_bytes()
    done = [json.loads(line) for line in before.splitlines() if line.strip().endswith(b"}")]
    assert 1 <= len(done) < 4
    b = make_backend("smollm2-135m", batch_size=1, progress=False, cache_path=cache)
    res = b.generate_json([messages(t) for t in MOVIES[:4]], SCHEMA, max_new_tokens=30)
    assert all(r.ok for r in res), [(r.reason, r.raw) for r in res]
    assert b.last_stats["cached"] == len(done) and b.last_stats["generated"] == 4 - len(done)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    keys = [rec["key"] for rec in lines]
    assert len(keys) == len(set(keys)) == 4  # nothing lost, nothing duplicated
    assert cache.read_bytes().startswith(b"".join(line + b"\n" for line in before.splitlines()[:len(done)]))
    # The records made before the kill equal those of an uninterrupted run (batch 1, greedy).
    fresh = make_backend("smollm2-135m", batch_size=1, progress=False, cache_path=tmp_path / "fresh.jsonl")
    key = done[0]["key"]
    pos = [r.key for r in res].index(key)
    first = fresh.generate_json([messages(MOVIES[pos])], SCHEMA, max_new_tokens=30)[0]
    assert first.key == key and first.value == res[pos].value and first.raw == res[pos].raw
