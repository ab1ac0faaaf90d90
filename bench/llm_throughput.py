"""Generation throughput on the same profile prompts: reference vs ours, in one run.

Reference: one prompt at a time (batch 1), unconstrained greedy decoding, the reply parsed as JSON
(code fences/prose stripped, json-repair allowed) and validated against the profile schema.
Ours: length-sorted batches with left padding, xgrammar-constrained decoding + field token budgets.
Both use the same model, prompts, max_new_tokens, bf16 and a fresh (empty) cache; model loading is
excluded from the timings. Prints prompts/s, tokens/s, valid-JSON share and the ratio, then the valid-JSON
rate of ours for every model in --models.

    python bench/llm_throughput.py                      # 64 prompts (32 item + 32 user), qwen2.5-0.5b
    python bench/llm_throughput.py --n 16 --reference-n 8   # quicker; rates are per prompt
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hnlm.data import load_dataset
from hnlm.llm.backends import LocalBackend
from hnlm.semantic import profiles as pf


def profile_prompts(n: int):
    data = load_dataset("ml-100k", seed=0)
    builder = pf.ProfilePrompts(data, 0)
    items = [builder.item_messages(i) for i in range(n - n // 2)]
    users = [builder.user_messages(u) for u in range(n // 2)]
    return items + users


def run(backend: LocalBackend, prompts, schema, max_new_tokens):
    backend.model  # load before the clock starts
    load_before = os.getloadavg()[0]
    start = time.time()
    res = backend.generate_json(prompts, schema, max_new_tokens=max_new_tokens, desc=backend.label)
    seconds = time.time() - start
    tokens = sum(r.tokens_out for r in res)
    return {"label": backend.label, "prompts": len(prompts), "seconds": round(seconds, 2),
            "prompts_per_s": round(len(prompts) / seconds, 4), "tokens_per_s": round(tokens / seconds, 2),
            "valid_json": sum(r.ok for r in res) / len(res), "tokens_out": tokens,
            "failure_reasons": sorted({(r.reason or "")[:60] for r in res if not r.ok})[:5],
            "dtype": str(backend.dtype), "load_avg_before_after": [load_before, os.getloadavg()[0]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--reference-n", type=int, default=None, help="prompts for the slow reference (default n)")
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--models", default="qwen2.5-0.5b,smollm2-135m", help="valid-JSON rate of ours for each")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the profile schema's budget")
    ap.add_argument("--out", default="bench/out/llm_throughput.json")
    args = ap.parse_args()
    schema = pf.profile_schema()
    prompts = profile_prompts(args.n)
    ref_prompts = prompts[: args.reference_n or args.n]
    if len(ref_prompts) < len(prompts):  # keep the item/user mix of the reference subset balanced
        half = len(ref_prompts) // 2
        ref_prompts = prompts[:len(ref_prompts) - half] + prompts[args.n - args.n // 2:][:half]
    tmp = Path(tempfile.mkdtemp(prefix="llm_bench_"))
    from hnlm.llm.structured import field_budgets
    total = field_budgets(schema, args.max_new_tokens)[1]
    print(f"{len(prompts)} profile prompts (reference: {len(ref_prompts)}), max_new_tokens={total}")

    ref = LocalBackend(args.model, batch_size=1, constrained=False, cache_path=tmp / "ref.jsonl")
    ref.label = f"reference {args.model} batch 1 unconstrained"
    ours = LocalBackend(args.model, batch_size=args.batch_size, cache_path=tmp / "ours.jsonl")
    ours.label = f"ours {args.model} batch {args.batch_size} constrained"
    ref._model, ref._tokenizer = ours.model, ours.tokenizer  # the same weights for both sides
    results = [run(ours, prompts, schema, total), run(ref, ref_prompts, schema, total)]
    for name in args.models.split(","):
        if name != args.model:
            other = LocalBackend(name, batch_size=args.batch_size, cache_path=tmp / f"{name}.jsonl")
            other.label = f"ours {name} batch {args.batch_size} constrained"
            results.append(run(other, prompts, schema, total))
    for r in results:
        print(f"{r['label']:<48} {r['prompts']:>3} prompts {r['seconds']:>8.1f}s "
              f"{r['prompts_per_s']:>7.3f} prompts/s {r['tokens_per_s']:>7.1f} tok/s "
              f"valid JSON {r['valid_json']:.0%}")
    ratio = results[0]["prompts_per_s"] / results[1]["prompts_per_s"]
    print(f"ratio (ours / reference) prompts/s: {ratio:.2f}x; valid JSON {results[0]['valid_json']:.0%} vs "
          f"{results[1]['valid_json']:.0%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "max_new_tokens": total, "results": results,
                               "ratio_prompts_per_s": ratio}, indent=1))


if __name__ == "__main__":
    main()
