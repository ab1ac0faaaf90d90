"""Where artefacts and figures live.

One artefact root, HNLM_ARTIFACTS (default: artifacts/ in the checkout), holds everything the tool writes:
prepared datasets and runs (artifacts/<dataset>/...), the LLM answer cache (llm_cache/), converted models
(models/) and text-encoder vectors (encoders/). Each cache may be put elsewhere on its own with
HNLM_LLM_CACHE, HNLM_MODEL_CACHE or HNLM_ENCODER_CACHE. Figures go to HNLM_FIGURES (default: figures/), the
full study's result tables (tracked) to HNLM_RESULTS (default: results/; see hnlm.study.context).
The LLM outputs that ship with the repository (tracked, never written by a run) live in HNLM_OUTPUTS
(default: outputs/ in the checkout; see hnlm.semantic.outputs).
"""

import os
from pathlib import Path

from hnlm.atomic import make_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_root() -> Path:
    return Path(os.environ.get("HNLM_ARTIFACTS", PROJECT_ROOT / "artifacts"))


def artifacts_dir(*parts: str) -> Path:
    return make_dir(artifacts_root().joinpath(*parts))


def cache_root(kind: str) -> Path:
    """Root of one cache: llm_cache, models or encoders (HNLM_<KIND>_CACHE, else under the artefact root)."""
    variables = {"llm_cache": "HNLM_LLM_CACHE", "models": "HNLM_MODEL_CACHE", "encoders": "HNLM_ENCODER_CACHE"}
    given = os.environ.get(variables[kind])
    return Path(given) if given else artifacts_root() / kind


def outputs_root() -> Path:
    """The tracked folder of shipped LLM outputs (written only by `hnlm study --llm-only --publish` and
    `hnlm outputs add-adapters`)."""
    return Path(os.environ.get("HNLM_OUTPUTS", PROJECT_ROOT / "outputs"))


def figures_dir() -> Path:
    return make_dir(os.environ.get("HNLM_FIGURES", PROJECT_ROOT / "figures"))


def results_dir() -> Path:
    return make_dir(os.environ.get("HNLM_RESULTS", PROJECT_ROOT / "results"))
