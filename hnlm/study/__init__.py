"""The study: notebook parameters/settings (profiles, context) and the papermill runner."""

import importlib

from hnlm.study.settings import DEFAULT_PROFILE, PROFILE_NAMES, settings

__all__ = ["DEFAULT_PROFILE", "NotebookRun", "PROFILE_NAMES", "settings", "start"]


def __getattr__(name: str):
    """`NotebookRun` and `start` load the plotting stack on first use, not when a command's parser imports the
    package (hnlm.cli)."""
    if name in ("NotebookRun", "start"):
        return getattr(importlib.import_module("hnlm.study.context"), name)
    raise AttributeError(f"module 'hnlm.study' has no attribute {name!r}")
