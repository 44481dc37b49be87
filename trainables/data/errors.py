"""The one exception a data source raises for a user mistake (a bad path, column or length)."""

from __future__ import annotations

from trainables.errors import UserInputError


class DataError(UserInputError, ValueError):
    """A data setting cannot be satisfied; the message names the setting and how to fix it.

    It subclasses ``ValueError`` so callers that already treat invalid configuration as a
    ``ValueError`` keep working, while the CLI can catch it and print one line, not a traceback.
    """

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        """Build the message ``"<setting>: <problem>; <fix>"`` and keep the parts for callers.

        Args:
            setting: the dotted config key at fault, for example ``"data.source"``.
            problem: what is wrong, with the offending value.
            fix: what the user can do about it.
        """
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}; {fix}")
