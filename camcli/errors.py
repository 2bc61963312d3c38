"""The errors camcli raises for user-facing failures.

The CLI maps each class to an exit status in one place (``cli.main``); library code
raises them and never prints or exits.
"""

from __future__ import annotations


class CamcliError(Exception):
    """A request that cannot be carried out: bad input, bad option, unusable file.

    The message is one line that says what is wrong and how to fix it.
    """

    exit_code = 2


class EnvironmentProblem(CamcliError):
    """The environment stopped the run: weights unavailable offline, output not writable."""

    exit_code = 3
