"""Hermetic test sessions: everything a test writes goes under one temporary root per session.

A warm checkout must not make a test pass by reading what an earlier run left in the repository (prepared
datasets, cached LLM generations or text embeddings, fine-tuning runs, run folders, figures), nor write into its
tracked result tables: HNLM_ARTIFACTS, HNLM_RUNS, HNLM_FIGURES, HNLM_RESULTS, HNLM_LLM_CACHE and
HNLM_ENCODER_CACHE point into the session's temporary root, and subprocesses (CLI calls, notebook kernels)
inherit them. The one thing shared between sessions is the converted LLM cache (HNLM_MODEL_CACHE,
`hnlm.llm.models.model_cache_dir`): a copy of the packaged GGUF weights that depends on nothing a test does, and
whose conversion would otherwise dominate every run. It stays where the environment puts it, else in the
checkout's `artifacts/models`. Hypothesis keeps no example database in the checkout either; a failing property
prints the blob that reproduces it.
"""

import os

import pytest
from hypothesis import settings

from hnlm.paths import PROJECT_ROOT

settings.register_profile("hnlm", database=None, deadline=None, print_blob=True)
settings.load_profile("hnlm")

ISOLATED = {"HNLM_ARTIFACTS": "artifacts", "HNLM_RUNS": "runs", "HNLM_FIGURES": "figures", "HNLM_RESULTS": "results",
            "HNLM_LLM_CACHE": "artifacts/llm_cache", "HNLM_ENCODER_CACHE": "artifacts/encoders"}


@pytest.fixture(scope="session", autouse=True)
def isolated_artefacts(tmp_path_factory):
    """The session's temporary artefact root (a test may still point a variable at its own tmp_path)."""
    root = tmp_path_factory.mktemp("hnlm")
    with pytest.MonkeyPatch.context() as mp:
        for name, sub in ISOLATED.items():
            mp.setenv(name, str(root / sub))
        mp.setenv("HNLM_MODEL_CACHE", os.environ.get("HNLM_MODEL_CACHE", str(PROJECT_ROOT / "artifacts" / "models")))
        yield root
