"""Errors whose message tells the user what is wrong and how to fix it (the CLI prints them without traceback)."""


class UserFacingError(Exception):
    pass


class MissingInputError(UserFacingError, FileNotFoundError):
    """A file, package or model that must be provided locally is absent."""


class DataFormatError(UserFacingError, ValueError):
    """Malformed input; the message names the file and line or field."""


class EmptyDatasetError(UserFacingError, ValueError):
    """Nothing left after filtering; the message lists the counts after each step."""
