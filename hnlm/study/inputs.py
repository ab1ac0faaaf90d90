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

import os

from hnlm.errors import MissingInputError, MissingItemTextError
from hnlm.paths import artifacts_root
from hnlm.semantic import judge
from hnlm.semantic.common import domain_of, safe_name
from hnlm.semantic.outputs import KINDS, REGENERATE_VAR, kind_dir
from hnlm.study.settings import JUDGE_METHODS, TARGET_DATASET, settings

# Notebooks that prompt an LLM or read its outputs (those of the study's LLM; 11: of each LLM it compares).
LLM_NOTEBOOKS = ("02_profiles", "03_sns", "04_alignment", "05_hnlmrec", "10_generalisation", "11_llm_size")
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
    """What an LLM notebook lacks on `data`: item text, a transfer target, LLM outputs."""
    if notebook not in LLM_NOTEBOOKS:
        return None
    if not data.has_item_text:
        return item_text_missing(data, "this notebook")
    if notebook == "10_generalisation" and no_transfer_target(data.name):
        return no_transfer_target(data.name)
    llms = settings(profile, notebook)["llms"] if notebook == "11_llm_size" else [llm]
    for each in llms:
        missing = outputs_missing(data.name, each, profile)
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
    return outputs_missing(data.name, llm, profile)


def classic_only(conf: dict, reason: str) -> dict:
    """Notebook 06's settings without its LLM methods, saying why in one line."""
    left_out = conf["semantic_methods"] + [f"hnlmrec-{s}" for s in conf["hnlmrec_signals"]]
    if left_out:
        print(f"LLM methods left out ({', '.join(left_out)}): {reason}")
    return {**conf, "semantic_methods": [], "hnlmrec_signals": []}


def judge_missing(data, llm: str) -> str | None:
    """Why the LLM judge's scores for `llm` on `data` are not here (one line naming `hnlm judge`), or None when they
    are shipped or complete in artifacts/. Notebooks never make them: 20 prompts per user take hours on a CPU."""
    try:
        judge.obtain_scores(data, llm)
    except MissingInputError as err:
        return str(err)
    return None


def unscored_judge_left_out(conf: dict, data, llm: str) -> dict:
    """A notebook's settings as they are, or, when they ask for the judge (its methods, or 07's `judge` setting)
    and its scores are not here, without the judge methods and with `judge` off, saying why in one line."""
    lists = [k for k in ("methods", "semantic_methods") if k in conf]
    wanted = [m for k in lists for m in conf[k] if m in JUDGE_METHODS]
    missing = judge_missing(data, llm) if wanted or conf.get("judge") else None
    if not missing:
        return conf
    print(f"judge left out ({', '.join(wanted) or 'its precision'}): {missing}")
    return {**conf, **{k: [m for m in conf[k] if m not in JUDGE_METHODS] for k in lists},
            **({"judge": False} if "judge" in conf else {})}


def item_text_missing(data, what: str) -> str:
    try:
        data.require_item_text(what)
    except MissingItemTextError as err:
        return str(err)
    raise AssertionError("item_text_missing called on data with item text")


def outputs_missing(dataset: str, llm: str, profile: str) -> str | None:
    """One line saying that `llm` has no output for `dataset`, neither shipped nor made here, or None (also under
    --regenerate: the notebooks make them). Any output will do: the notebooks make what a study lacks beside it
    (e.g. the smoke profile's few profiles), as they find the rest by content."""
    if os.environ.get(REGENERATE_VAR) or shipped(dataset, llm) or made(dataset, llm):
        return None
    return (f"no LLM outputs of {llm} for {dataset} (none shipped in outputs/, none made in artifacts/): make "
            f"them with `hnlm study --llm-only --profile {profile} --dataset {dataset} --llm {llm}` (GPU or LLM "
            f"server), or pass --regenerate to make them in the notebooks (slow on a CPU)")


def shipped(dataset: str, llm: str) -> bool:
    """Any output of `llm` for `dataset` in outputs/ (hnlm.semantic.outputs)."""
    return any(any(kind_dir(dataset, llm, kind).glob("*.manifest.json")) for kind in KINDS)


def made(dataset: str, llm: str) -> bool:
    """Any output of `llm` for `dataset` made on this machine (the artefact folders of hnlm.semantic)."""
    root, name = artifacts_root() / dataset, safe_name(llm)
    return any(any(found) for found in (root.glob(f"profiles/{name}/*"), root.glob(f"sns/{name}/*/*"),
                                        root.glob(f"hnlmrec/{name}-*/*/*")))
