"""What a study notebook needs beyond its dataset's interactions, and the one-line reason a notebook is skipped
when that is missing: item text (LLM methods build prompts from it), LLM outputs (shipped in outputs/ or made
in artifacts/, e.g. by `hnlm study --llm-only` on a GPU; making the full study's on a CPU takes hours), a
transfer target of the dataset's domain (10), the outputs of every LLM that 11 compares, and the earlier
notebook whose results it reads when that one did not succeed in the same study.

`hnlm study` asks `skip_reason` before it starts each notebook's kernel; notebook 06 trains its classic
samplers alone, and says why, when `llm_methods_missing` names what its LLM methods lack.
`hnlm study --regenerate` (HNLM_REGENERATE) asks for every LLM output to be made here: then missing outputs
skip nothing.
"""

from __future__ import annotations

import json
import os

from hnlm.errors import MissingItemTextError
from hnlm.paths import artifacts_root, outputs_root
from hnlm.semantic.common import domain_of, safe_name
from hnlm.semantic.outputs import REGENERATE_VAR, STAGE_OF, kind_dir
from hnlm.study.settings import TARGET_DATASET, settings

# The --llm-only stages whose outputs each LLM notebook reads (for the study's LLM; 11: for each of its llms).
STAGES_READ = {
    "02_profiles": ("profiles",),
    "03_sns": ("profiles", "sns"),
    "04_alignment": ("profiles", "sns"),
    "05_hnlmrec": ("profiles", "sns", "hnlmrec"),
    "10_generalisation": ("hnlmrec", "transfer"),
    "11_llm_size": ("sns", "hnlmrec"),
}
LLM_METHOD_STAGES = STAGES_READ["05_hnlmrec"]   # 06's LLM methods: 03's SNS bank and module 4's banks
# Notebooks that read an earlier notebook's results from the run folder.
READS_NOTEBOOK = {"04_alignment": "03_sns", "05_hnlmrec": "03_sns", "07_false_negatives": "06_main_results",
                  "08_popularity": "06_main_results", "09_sparsity": "06_main_results"}


def skip_reason(notebook: str, data, llm: str, profile: str, earlier: dict) -> str | None:
    """Why `notebook` cannot run on `data` (one line), or None. `earlier`: this study's report so far
    ({notebook: {"ok": ..., "skipped": ...}}). What the data lacks comes first: it is what the user can fix."""
    lacks = inputs_missing(notebook, data, llm, profile)
    before = READS_NOTEBOOK.get(notebook)
    if lacks or before not in earlier or earlier[before]["ok"]:
        return lacks
    return f"it reads {before}'s results, which {'was skipped' if earlier[before].get('skipped') else 'failed'}"


def inputs_missing(notebook: str, data, llm: str, profile: str) -> str | None:
    """What an LLM notebook (STAGES_READ) lacks on `data`: item text, a transfer target, LLM outputs."""
    if notebook not in STAGES_READ:
        return None
    if not data.has_item_text:
        return item_text_missing(data, "this notebook")
    if notebook == "10_generalisation" and no_transfer_target(data.name):
        return no_transfer_target(data.name)
    llms = settings(profile, notebook)["llms"] if notebook == "11_llm_size" else [llm]
    for each in llms:
        missing = outputs_missing(data.name, each, STAGES_READ[notebook], profile)
        if missing:
            return missing
    return None


def no_transfer_target(dataset: str) -> str | None:
    """Why notebook 10 (and the transfer stage of --llm-only) has nothing to transfer `dataset` to, or None."""
    if dataset == TARGET_DATASET:
        return f"{dataset} is notebook 10's transfer target itself"
    if domain_of(dataset) != domain_of(TARGET_DATASET):
        return (f"no transfer target for {dataset}: notebook 10 transfers to {TARGET_DATASET} "
                f"({domain_of(TARGET_DATASET)} domain; {dataset}'s is {domain_of(dataset)})")
    return None


def llm_only_stages(dataset: str, stages) -> list[str]:
    """The stages of `hnlm study --llm-only` that apply to `dataset` (the transfer only where 10 has a target)."""
    reason = no_transfer_target(dataset)
    if reason and "transfer" in stages:
        print(f"[llm-only] transfer stage skipped: {reason}", flush=True)
    return [stage for stage in stages if stage != "transfer" or not reason]


def llm_methods_missing(data, llm: str, profile: str) -> str | None:
    """Why notebook 06's LLM methods cannot run on `data` (one line), or None."""
    if not data.has_item_text:
        return item_text_missing(data, "LLM methods")
    return outputs_missing(data.name, llm, LLM_METHOD_STAGES, profile)


def classic_only(conf: dict, reason: str) -> dict:
    """Notebook 06's settings without its LLM methods, saying why in one line."""
    left_out = conf["semantic_methods"] + [f"hnlmrec-{s}" for s in conf["hnlmrec_signals"]]
    if left_out:
        print(f"LLM methods left out ({', '.join(left_out)}): {reason}")
    return {**conf, "semantic_methods": [], "hnlmrec_signals": []}


def item_text_missing(data, what: str) -> str:
    try:
        data.require_item_text(what)
    except MissingItemTextError as err:
        return str(err)
    raise AssertionError("item_text_missing called on data with item text")


def outputs_missing(dataset: str, llm: str, stages, profile: str) -> str | None:
    """One line naming the first of `stages` with no output of `llm` for `dataset`, shipped or made here
    (None under --regenerate: the notebooks make them)."""
    if os.environ.get(REGENERATE_VAR):
        return None
    for stage in stages:
        if not (shipped(dataset, llm, stage) or made(dataset, llm, stage)):
            return (f"no {stage} outputs of {llm} for {dataset} (none shipped in outputs/, none made in "
                    f"artifacts/): make them with `hnlm study --llm-only --profile {profile} --dataset {dataset} "
                    f"--llm {llm}` (GPU or LLM server), or pass --regenerate to make them here (slow on a CPU)")
    return None


def shipped(dataset: str, llm: str, stage: str) -> bool:
    """Any output of `stage` shipped in outputs/ (transfer: any made from `dataset`, under the target's name)."""
    if stage == "transfer":
        pattern = f"{TARGET_DATASET}*/{safe_name(llm)}/transfer-bank/*.manifest.json"
        return any(json.loads(m.read_text()).get("source_dataset") == dataset for m in outputs_root().glob(pattern))
    kinds = [kind for kind, of in STAGE_OF.items() if of == stage]
    return any(any(kind_dir(dataset, llm, kind).glob("*.manifest.json")) for kind in kinds)


def made(dataset: str, llm: str, stage: str) -> bool:
    """Any output of `stage` made on this machine (the artefact folders of hnlm.semantic)."""
    root, name = artifacts_root(), safe_name(llm)
    folders = {"profiles": root.glob(f"{dataset}/profiles/{name}/*"),
               "sns": root.glob(f"{dataset}/sns/{name}/*/*"),
               "hnlmrec": root.glob(f"{dataset}/hnlmrec/{name}-*/*/*"),
               "transfer": root.glob(f"{TARGET_DATASET}*/hnlmrec-transfer/{dataset}-*{name}*/*/*")}
    return any(folders[stage])
