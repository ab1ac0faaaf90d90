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

One fine-tune is shared too, within a session: `finetuned_run`, for the tests that reuse, transfer or re-embed a
finished run (under pytest-xdist they share an xdist_group, so it runs once).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from hnlm.data import load_dataset
from hnlm.paths import PROJECT_ROOT
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, run_finetune

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


@dataclass(frozen=True)
class FinetunedRun:
    artefacts: Path   # its own artefact root: point HNLM_ARTIFACTS here to find the run
    config: RunConfig
    summary: dict     # what the first run_finetune returned


@pytest.fixture(scope="session")
def finetuned_run(isolated_artefacts):
    """A finished one-step SmolLM2 fine-tune on ml-100k with a two-query bank (float32: 4x faster than this
    CPU's bf16). 160 tokens: the queries (~190) lose part of their user context, never their CF signal or cue.
    Four quality pairs and centring queries (not 64 and 256): its users check the run, not the encoder's quality.
    A test may add to its artefact root (a transfer, a second run_finetune) but never changes the run."""
    ft = FinetuneConfig(llm="smollm2-135m", max_steps=1, batch_size=2, save_steps=1, max_length=160,
                        quality_pairs=4, centring_queries=4)
    cfg = RunConfig(finetune=ft, teacher=TeacherConfig(model="mf", epochs=1), infer_users=2, infer_batch=2)
    data = load_dataset("ml-100k", seed=0)
    root = isolated_artefacts / "finetuned"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HNLM_ARTIFACTS", str(root))
        mp.setenv("HNLM_LLM_DTYPE", "float32")
        return FinetunedRun(root, cfg, run_finetune(data, cfg))
