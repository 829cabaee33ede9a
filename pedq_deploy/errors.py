"""Exceptions the command-line tools turn into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["PedqError", "InputError"]


class PedqError(Exception):
    """Base class of the errors that pedq-deploy reports to the user without a traceback."""


class InputError(PedqError, ValueError):
    """The user's input (files, parameters) cannot be processed as given."""
