"""HNLMRec fine-tuning and embedding-pass speed on this machine, beside the standard LoRA recipe.

For each packaged model: seconds per training step and examples/s of our step (LoRA + pooled backbone
+ head, contrastive loss, through the Hugging Face Trainer) and of the peer, a plain peft LoRA step with
the causal-LM loss over the full vocabulary (what a usual "fine-tune the LLM on text" recipe costs), on
the same real ml-100k queries, batch and length; then queries/s of the embedding pass. Prints ratios.

    .venv/bin/python bench/hnlmrec_speed.py --models smollm2-135m qwen2.5-0.5b --steps 3
"""

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def queries(n: int):
    from hnlm.data import load_dataset
    from hnlm.semantic.hnlmrec.queries import QueryBuilder, Teacher
    data = load_dataset("ml-100k", seed=0)
    rng = np.random.default_rng(0)  # teacher values do not change the cost; the texts are real
    teacher = Teacher(rng.standard_normal((data.n_users, 64)).astype(np.float32),
                      rng.standard_normal((data.n_items, 64)).astype(np.float32), {})
    b = QueryBuilder(data, teacher, "text")
    return [b.text(u, int(data.train_items(u)[0])) for u in range(n)]


def ours(model_name, texts, steps, batch, max_length):
    from hnlm.semantic.hnlmrec.finetune import FinetuneConfig, PairDataset, load_base, make_trainer
    from hnlm.semantic.hnlmrec.infer import emit
    from hnlm.semantic.hnlmrec.model import QueryEncoder
    cfg = FinetuneConfig(llm=model_name, max_steps=steps + 1, batch_size=batch, max_length=max_length,
                         save_steps=10_000)
    lm, tok = load_base(cfg)
    enc = QueryEncoder(lm, cfg.encoder_config(64, 384))
    rng = np.random.default_rng(0)
    n = len(texts)
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    ds = PairDataset(texts, unit(rng.standard_normal((n, 384))), unit(rng.standard_normal((n, 384))),
                     rng.standard_normal((n, 64)), rng.standard_normal((n, 64)))
    step_times = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(enc, tok, ds, cfg, tmp)
        trainer.add_callback(Clock())
        trainer.train()
    s_step = float(np.mean(step_times[1:]))  # first step pays one-off set-up
    t = time.perf_counter()
    m = min(n, 4 * batch)
    emit(enc, tok, texts[:m], ds.cf_user[:m], ds.cf_item[:m], batch_size=2 * batch, max_length=max_length)
    qps = m / (time.perf_counter() - t)
    return lm, tok, s_step, qps


def peer(lm, tok, texts, steps, batch, max_length):
    """Plain LoRA step with the causal-LM loss (full vocabulary projection), same adapter config."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    params = [p for p in base.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    base.train()
    times = []
    for s in range(steps + 1):
        chunk = [texts[(s * batch + i) % len(texts)] for i in range(batch)]
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        t = time.perf_counter()
        loss = base(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return float(np.mean(times[1:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    texts = queries(args.batch * (args.steps + 2))
    rows = []
    for name in args.models:
        lm, tok, s_ours, qps = ours(name, texts, args.steps, args.batch, args.max_length)
        s_peer = peer(lm, tok, texts, args.steps, args.batch, args.max_length)
        row = {"model": name, "batch": args.batch, "max_length": args.max_length, "threads": torch.get_num_threads(),
               "ours_s_per_step": round(s_ours, 2), "ours_examples_per_s": round(args.batch / s_ours, 2),
               "peer_lm_loss_s_per_step": round(s_peer, 2), "speedup_vs_peer": round(s_peer / s_ours, 2),
               "embedding_queries_per_s": round(qps, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del lm
    print(json.dumps({"load_average_1m": __import__("os").getloadavg()[0]}))


if __name__ == "__main__":
    main()
