"""The orchestrator's user-error base and the command line's exit codes.

:class:`UserError` is a mistake in what the user asked of a sweep, its saved state, the cluster
or the tracking store. It derives from the core's :class:`~trainables.errors.UserInputError`
(config and data errors), so the command line catches every user mistake with that one class.
This module imports nothing heavy: the modules that raise these errors and the CLI import it
without importing each other.
"""

from __future__ import annotations

from trainables.config import ConfigError
from trainables.errors import UserInputError

# Exit codes: 0 success, 2 bad input (one readable message, no traceback), 1 the sweep itself
# failed, 130 interrupted, 143 stopped by SIGTERM (both can be resumed).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # SIGTERM: stopped like Ctrl+C (128 + 15)


class UserError(UserInputError):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


class SweepSpecError(ConfigError):
    """A sweep file, preset or override that does not validate."""


class NoSavedSweepError(UserError, FileNotFoundError):
    """No saved sweep of the name or id given under the storage looked in (``resume``, ``sync``,
    ``run --continue``); the message names what exists there."""


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "NoSavedSweepError",
    "SweepSpecError",
    "UserError",
    "UserInputError",
]
