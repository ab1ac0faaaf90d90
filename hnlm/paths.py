"""Where run artefacts and figures live. Override with HNLM_ARTIFACTS / HNLM_FIGURES."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_dir(*parts: str) -> Path:
    root = Path(os.environ.get("HNLM_ARTIFACTS", PROJECT_ROOT / "artifacts"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    path = Path(os.environ.get("HNLM_FIGURES", PROJECT_ROOT / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path
