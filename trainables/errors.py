"""The core's user-error base: a mistake in what the user asked for, not a bug.

Every exception the core raises for bad user input (a config key, a data path, a checkpoint or
an export the user named) derives from :class:`UserInputError`, so the command line catches them
all with one class and prints one line, exit code 2. This module imports nothing, so any module
(torch-free ones included) can raise it.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad user input; the message names the setting at fault and how to fix it.

    Subclasses keep a second, builtin base (``ValueError``, ``RuntimeError``,
    ``FileNotFoundError``) so callers that catch those keep working.
    """
