"""The study: notebook parameters/settings (profiles, context) and the papermill runner."""

from hnlm.study.context import NotebookRun, start
from hnlm.study.profiles import PROFILE_NAMES, settings

__all__ = ["NotebookRun", "PROFILE_NAMES", "settings", "start"]
