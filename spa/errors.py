"""Errors a person is meant to read: one line, what went wrong and where."""

from __future__ import annotations


class SpaError(Exception):
    """Base for every error the CLI prints as one line (never a traceback)."""


class ConfigError(SpaError):
    """A configuration problem, located by file, line and option."""

    def __init__(self, path: str, line: int | None, option: str | None, message: str):
        self.path = path
        self.line = line
        self.option = option
        self.message = message
        where = path if line is None else f"{path}:{line}"
        what = f"{option}: " if option else ""
        super().__init__(f"{where}: {what}{message}")


class KeyFileError(SpaError):
    """A key file that cannot be used (missing, malformed, or too open)."""
