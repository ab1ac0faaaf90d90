"""The study: notebook parameters/settings (profiles, context) and the papermill runner."""

from hnlm.study.context import NotebookRun, start
from hnlm.study.settings import DEFAULT_PROFILE, PROFILE_NAMES, settings

__all__ = ["DEFAULT_PROFILE", "NotebookRun", "PROFILE_NAMES", "settings", "start"]
