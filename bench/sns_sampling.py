"""Module 2's generation rate: one greedy negative per user vs K sampled ones with the copy filter, the K samples
generated one pass each (every row prefilled on its own) or together (one prefill per prompt, as
`hnlm.semantic.sns.generate_negatives` does), in one run on one torch thread, each with a fresh LLM cache; model
loading excluded. Prints rows generated (first draws and redraws of copies), rows/s, negatives/s, tokens/s, the
redraws and the copy, distinct and valid shares.

    python bench/sns_sampling.py --llm smollm2-135m --users 32 --context history
    python bench/sns_sampling.py --llm qwen2.5-0.5b --users 8 --context profile
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hnlm.data import load_dataset
from hnlm.llm.backends import make_backend
from hnlm.semantic import sns
from hnlm.semantic.common import Budget, select_pairs

VARIANTS = (("greedy", sns.GREEDY, True), ("sampled, K passes", sns.SAMPLED, False),
            ("sampled, shared prefill", sns.SAMPLED, True))


def measure(data, pairs, llm: str, context: str, decoding: sns.Decoding, together: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        backend = make_backend(llm, progress=False, cache_path=f"{tmp}/cache.jsonl", **decoding.backend_options())
        backend.model  # noqa: B018 (loaded outside the timing)
        builders = sns.sample_builders(data, context, llm, 0, decoding)
        t0 = time.perf_counter()
        gens = ([sns.generate_negatives(data, backend, pairs, builders, Path(tmp))] if together else
                [sns.generate_negatives(data, backend, pairs, b, Path(tmp)) for b in builders])
        seconds = time.perf_counter() - t0
        recs = sns.read_samples(Path(tmp) / "negatives.jsonl", [b.tag for b in builders])
    redraws = sum(g["redrawn"] for g in gens)
    ok = recs[recs["ok"].astype(bool)]
    answered = sns.answered(recs)
    return {"seconds": round(seconds, 1), "rows": len(recs) + redraws, "redraws": redraws,
            "rows_per_s": round((len(recs) + redraws) / seconds, 3), "negatives_per_s": round(len(recs) / seconds, 3),
            "tokens_per_s": round(backend.tokens_out / seconds, 1), "samples": len(builders),
            "valid": float(recs["ok"].astype(bool).mean()),
            "distinct_texts_share": round(ok["text"].str.lower().nunique() / max(len(ok), 1), 3),
            **sns.copy_shares(data, answered)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--context", default="history", choices=["history", "profile"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("ml-100k", seed=0)
    pairs = select_pairs(data, Budget(1), 0)
    pairs = pairs[pairs["user"] < args.users]
    report = {}
    for name, decoding, together in VARIANTS:
        report[name] = measure(data, pairs, args.llm, args.context, decoding, together)
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
