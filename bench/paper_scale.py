"""Paper scale, on paper: time per stage of the study for the Toys, CDs and Yelp presets with an 8B LLM, on one
H100 and on four (Ray for the CF grid, one LLM replica per GPU), estimated from rates measured on our machines.

Every rate below is a measurement (bench/README.md names the run); every scaling is a stated assumption. The LLM
rates come from the packaged 0.5B model on one H200 (Hugging Face generate, batch 128, structured decoding); an 8B
model is bracketed by two assumptions: `overhead` (the 0.5B decode steps took ~85 ms each, about 400x the time to
read its weights, so per-step overhead, not the model, set the rate: an 8B model then runs at the same rate) and
`compute` (time proportional to parameters, 16x). The CF rates come from the 2-core CPU (no GPU CF run measured
yet); CF epoch time is taken proportional to training interactions, full-ranking evaluation to users x items.

    .venv/bin/python bench/paper_scale.py
"""

from __future__ import annotations

PRESETS = {   # users, items, interactions after the paper's filters (hnlm/data/registry.py presets)
    "toys": (22_338, 9_023, 200_511),
    "cds": (19_385, 8_279, 186_535),
    "yelp2018": (29_832, 16_781, 513_976),
}
ML100K = (943, 1_682, 100_000)

# Measured (bench/README.md): H200, qwen2.5-0.5b, bf16
PROFILE_PROMPTS_S = 17.3        # item/user profiles, batch 128 ("GPU run")
SNS_PROMPTS_S = 31.0            # SNS with profile context ("The study's LLM work on an H200")
FINETUNE_S_PER_STEP = 0.17      # HNLMRec, batch 8, max length 224
EMBED_QUERIES_S = 943 / 4.5     # embedding pass of 943 queries in 4-5 s
# Measured: 2-core CPU, ml-100k, LightGCN, batch 8192 ("CF engine speed, 2026-12-02 evening")
CF_EPOCH_S = {"rns": 0.103, "dns-mn": 0.169}
CF_EVAL_S = 0.011               # one full-ranking validation pass of 943 x 1,682 (this machine, 2 threads)
# The study's protocol
TRIALS_PER_TARGET = 9           # lr x batch grid (6) + a method axis (3), before widening
TARGETS = 15                    # methods of notebook 06, each tuned
SEEDS = 5
BACKBONES = 2
EPOCHS_PER_RUN = 150            # mean epochs run to convergence + patience (ml-100k: best 15-60, patience 20-100)
SIZE_FACTOR = {"overhead": 1, "compute": 16}
H200_OVER_H100 = 1.4            # memory bandwidth 4.8 vs 3.35 TB/s (spec sheets), for the bound-by-weights case


def llm_hours(users: int, items: int, factor: float, gpus: int) -> dict:
    slow = factor * (H200_OVER_H100 if factor > 1 else 1.0) / gpus
    steps = 2 * users / 8                     # about 2 passes over one pair per user, batch 8 (data parallel)
    return {"profiles": (users + items) / PROFILE_PROMPTS_S * slow / 3600,
            "sns": users / SNS_PROMPTS_S * slow / 3600,
            "finetune": (steps * FINETUNE_S_PER_STEP * factor / gpus + users / EMBED_QUERIES_S * slow) / 3600}


def cf_hours(users: int, items: int, interactions: int, workers: int) -> float:
    scale = interactions / ML100K[2]
    epoch = (CF_EPOCH_S["rns"] + CF_EPOCH_S["dns-mn"]) / 2 * scale + CF_EVAL_S * users * items / (ML100K[0] * ML100K[1])
    runs = BACKBONES * TARGETS * (TRIALS_PER_TARGET + SEEDS)
    return runs * EPOCHS_PER_RUN * epoch / workers / 3600


def main() -> None:
    print("| preset | users x items, interactions | LLM size assumption | GPUs | profiles h | SNS h "
          "| fine-tune + bank h | CF grid with tuning h (2-core CPU rates; workers = GPUs) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (users, items, interactions) in PRESETS.items():
        for assumption, factor in SIZE_FACTOR.items():
            for gpus in (1, 4):
                h = llm_hours(users, items, factor, gpus)
                print(f"| {name} | {users:,} x {items:,}, {interactions:,} | {assumption} (x{factor}) | {gpus} | "
                      f"{h['profiles']:.2f} | {h['sns']:.2f} | {h['finetune']:.2f} | "
                      f"{cf_hours(users, items, interactions, gpus):.1f} |")


if __name__ == "__main__":
    main()
