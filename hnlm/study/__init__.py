"""The study: notebook parameters/settings (profiles, context) and the papermill runner."""

import importlib

__all__ = ["DEFAULT_PROFILE", "NotebookRun", "PROFILE_NAMES", "start"]   # settings(): hnlm.study.settings
_HOME = {"NotebookRun": "context", "start": "context", "DEFAULT_PROFILE": "settings", "PROFILE_NAMES": "settings"}


def __getattr__(name: str):
    """The package's names load their module on first use, not when a command's parser imports a module of the
    package (hnlm.cli: `hnlm outputs --help` needs neither the method registry nor the plotting stack)."""
    if name in _HOME:
        return getattr(importlib.import_module(f"hnlm.study.{_HOME[name]}"), name)
    raise AttributeError(f"module 'hnlm.study' has no attribute {name!r}")
