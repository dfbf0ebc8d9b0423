"""What a run can end with: user errors (one line, exit 2) and the exit codes the launchers act on.

A :class:`UserError` is a mistake in what the user gave us (a config key, a data file, a resume target,
a storage location). ``train.py`` prints its message as one line and exits with :data:`EXIT_USER_ERROR` on
every rank; anything else is a program bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
# launch/ scripts requeue on this code; chosen to clash with no signal exit status (128 + N).
EXIT_PREEMPTED = 42
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UserError(Exception):
    """A mistake in the user's input; the message names the key, file, row or id."""


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message names the key."""


class DataError(UserError, ValueError):
    """A bad data file or example; the message names the file and the example id."""
