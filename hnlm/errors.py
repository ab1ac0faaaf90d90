"""Errors whose message tells the user what is wrong and how to fix it (the CLI prints them without traceback)."""


class UserFacingError(Exception):
    pass


class MissingInputError(UserFacingError, FileNotFoundError):
    """A file, package or model that must be provided locally is absent."""


class DataFormatError(UserFacingError, ValueError):
    """Malformed input; the message names the file and line or field."""


class EmptyDatasetError(UserFacingError, ValueError):
    """Nothing left after filtering; the message lists the counts after each step."""


class UnknownDatasetError(UserFacingError, ValueError):
    """A dataset name that is neither a preset nor given with --source; or options that do not fit it."""


class DegenerateDatasetError(UserFacingError, ValueError):
    """A prepared dataset on which ranking metrics would be meaningless (e.g. fewer items than the top-K)."""


class MissingItemTextError(UserFacingError, ValueError):
    """An LLM method was given ID-only data; the message says which item text it needs."""


class DatasetConflictError(UserFacingError, ValueError):
    """A dataset name already holds artefacts prepared from other files or filters."""
