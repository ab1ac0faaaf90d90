"""Argument types that check an option where it is parsed: a bad value is one `error:` line and exit 2 before
anything loads (tests/test_cli_options.py holds the table of bad invocations)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from hnlm.errors import UserFacingError
from hnlm.llm.catalog import check_spec


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def epochs_or_converged(text: str) -> int | None:
    """A positive number of epochs, or "converged" (None: train until validation stops improving)."""
    if text == "converged":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}, or 'converged'") from None


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def date(text: str) -> str:
    """YYYY-MM-DD, a real calendar day (kept as text: the loaders read it)."""
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {text!r}") from None
    return text


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not an existing file")
    return text


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def llm(text: str) -> str:
    """An LLM spec this machine can run now (hnlm.llm.catalog.check_spec)."""
    try:
        return check_spec(text)
    except UserFacingError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
