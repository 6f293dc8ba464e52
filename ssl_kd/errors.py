"""User-facing errors: one clear message, no traceback (exit 2 for a user mistake, 1 for a stopped run)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in user input (config, files, data). The CLI prints the message and exits 2."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); the message says why and what was kept. The CLI exits 1."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def choices(valid: Iterable[str]) -> str:
    return ", ".join(sorted(str(v) for v in valid))


class RunInterrupted(Exception):
    """The run stopped on a signal (SIGTERM, SIGINT) after writing a checkpoint. The CLI exits 128 + the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
