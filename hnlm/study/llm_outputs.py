"""The study's LLM work on its own: `hnlm study --llm-only` (e.g. on a GPU machine).

Every LLM output of the study (module 1 profiles, module 2 SNS generations, the judge's scores, module 4
fine-tuning runs with their embedding passes, the transfer embeddings of notebook 10, and notebook 11's outputs of
every LLM it compares) goes through caches that notebooks 02, 03, 05, 06, 10 and 11 reuse: the append-only LLM
cache (keyed by model, dtype and prompt) and module 4's run folders (keyed by their settings). Running this where an
accelerator is at hand with `--publish` copies them into the tracked outputs/ folder (hnlm.semantic.outputs,
hnlm.study.publish); a clone then runs every notebook on a CPU from those shipped outputs, found by content
whatever dtype made them.
"""

from __future__ import annotations

import time

from hnlm.data import first_users, load_dataset
from hnlm.llm.backends import make_backend
from hnlm.semantic.sns import DECODINGS
from hnlm.study import pipeline
from hnlm.study.settings import STAGES, TARGET_DATASET, settings

JUDGE = "07_false_negatives"   # its "judge" setting says whether the profile makes the judge's scores
LLM_SIZE = "11_llm_size"   # its stage makes the outputs of each LLM in its `llms`, whatever the study's LLM
SNS_BLOCKS = 4   # `--publish` ships the sns stage in this many growing blocks of users (all K samples each)


def prepare(profile: str, dataset: str, llm: str, stages=STAGES, sns_chunk: int = 256,
            profile_batch: int = 128, signals=None, sns_block: int | None = None,
            sns_decoding: str | None = None) -> dict:
    """Run the LLM stages of the study under `profile`, in order; returns seconds and counts per stage.
    `signals` limits the fine-tuning stages (hnlmrec, transfer) to these CF signals (default: the profile's),
    `sns_block` the sns stage to the users of that block (`block_users`; default: the profile's), `sns_decoding`
    its decoding (a DECODINGS name; default: the profile's)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}: choose from {', '.join(STAGES)}")
    data = load_dataset(dataset, seed=settings(profile, "01_data")["split_seed"])
    report = {}
    for stage in [s for s in STAGES if s in stages]:
        t0 = time.perf_counter()
        if stage == "profiles":
            conf = settings(profile, "02_profiles")
            backend = make_backend(llm)
            if hasattr(backend, "batch_size"):  # local models: larger batches pay off on an accelerator
                backend.batch_size = profile_batch
            out = pipeline.generate_study_profiles(data, backend, llm, conf["limit"], conf["split_seed"])
            info = {"counts": out["counts"]}
        elif stage == "sns":
            conf = sns_settings(profile, sns_decoding)
            users = conf["limit_users"] if sns_block is None else block_users(data.n_users, sns_block)
            _, _, info = pipeline.generate_study_sns(data, llm, users, conf["split_seed"],
                                                     chunk=sns_chunk, context=conf["context"],
                                                     decoding=DECODINGS[conf["decoding"]])
        elif stage == "judge":
            info = pipeline.study_judge(data, llm, settings(profile, JUDGE)["judge"])
        elif stage == "hnlmrec":
            conf = settings(profile, "05_hnlmrec")
            info = {s: pipeline.study_hnlmrec(data, llm, s, conf["hnlmrec"], conf["split_seed"])[0]["folder"]
                    for s in signals or conf["signals"]}
        elif stage == "transfer":
            conf = settings(profile, "10_generalisation")
            target = first_users(load_dataset(TARGET_DATASET, seed=conf["split_seed"]), conf["target_first_users"])
            info = {s: pipeline.study_transfer(data, target, llm, s, conf, conf["split_seed"])[0]["folder"]
                    for s in signals or conf["signals"]}
        else:
            conf = settings(profile, LLM_SIZE)
            info = {other: llm_size_outputs(data, other, conf, sns_chunk) for other in conf["llms"]}
        report[stage] = {"seconds": round(time.perf_counter() - t0, 1), **info}
        print(f"[llm-only] {stage}: {report[stage]}", flush=True)
    return report


def llm_size_outputs(data, llm: str, conf: dict, sns_chunk: int) -> dict:
    """Notebook 11's LLM work for one of its LLMs: SNS negatives in conf["context"] when it compares SNS, and
    a fine-tuning run per CF signal (the study's LLM shares its runs with notebook 05)."""
    made = {}
    if "sns" in conf["methods"]:
        made["sns"] = pipeline.generate_study_sns(data, llm, conf["limit_users"], conf["split_seed"],
                                                  chunk=sns_chunk, context=conf["context"],
                                                  decoding=DECODINGS[conf["decoding"]])[2]["generated"]
    for s in conf["signals"]:
        made[s] = pipeline.study_hnlmrec(data, llm, s, conf["hnlmrec"], conf["split_seed"])[0]["folder"]
    return made


def units(profile: str, stages=STAGES) -> list[tuple[str, str | int | None]]:
    """The study's LLM work as (stage, part) units in run order: what `--publish` ships one at a time, so that
    an interrupted run keeps every output it finished. Part: the CF signal of a fine-tuning stage, the block
    (1..SNS_BLOCKS) of the sns stage when the profile makes it for every user, else None."""
    signal_conf = {"hnlmrec": "05_hnlmrec", "transfer": "10_generalisation"}
    blocks = range(1, SNS_BLOCKS + 1) if settings(profile, "03_sns")["limit_users"] is None else [None]
    return [(stage, part) for stage in STAGES if stage in stages
            for part in (settings(profile, signal_conf[stage])["signals"] if stage in signal_conf
                         else blocks if stage == "sns" else [None])]


def sns_settings(profile: str, decoding: str | None = None) -> dict:
    """Notebook 03's settings under `profile`, with its decoding replaced by `decoding` when given."""
    conf = settings(profile, "03_sns")
    return {**conf, "decoding": decoding} if decoding else conf


def block_users(n_users: int, block: int) -> int | None:
    """The first users the sns block `block` of SNS_BLOCKS covers (None: all): blocks grow, each one published
    (all K samples of its users) replaces the previous one's output."""
    return None if block >= SNS_BLOCKS else -(-n_users * block // SNS_BLOCKS)


def unit_options(stage: str, part) -> dict:
    """prepare's and publish_study's options that restrict them to one unit's part."""
    if part is None:
        return {}
    return {"sns_block": part} if stage == "sns" else {"signals": [part]}
