"""Read a TOML file and remember where each option was written.

``tomllib`` reports syntax errors with a line but forgets positions once a
file parses, and most mistakes are values that parse fine (a port of 70000,
a typo in an option name). :class:`Document` keeps a line for every table
and option so any later error can name file, line and option.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from spa.errors import ConfigError

_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_OPTION = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")
_LINE = re.compile(r"line (\d+)")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


@dataclass(frozen=True)
class Document:
    """A parsed TOML file with a line number for each dotted option path."""

    path: str
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]

    def line_of(self, *option: str) -> int | None:
        """The line of ``option``, or of its nearest enclosing table."""
        while option:
            if option in self.lines:
                return self.lines[option]
            option = option[:-1]
        return None

    def fail(self, option: tuple[str, ...], message: str) -> NoReturn:
        """Raise a ConfigError located at ``option`` (a dotted path)."""
        raise ConfigError(self.path, self.line_of(*option), ".".join(option) or None, message)


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    depth = 0  # inside a multi-line array, lines are values, not options
    # Only "\n" ends a line, as for tomllib and editors: str.splitlines also
    # breaks at U+2028, form feeds and others, which a comment may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.split("#", 1)[0] if '"' not in line and "'" not in line else line
        if depth == 0 and (match := _TABLE.match(line)):
            name = _split_key(match.group(2))
            if match.group(1) == "[[":
                index = array_counts.get(name, 0)
                array_counts[name] = index + 1
                name = (*name, str(index))
            table = name
            lines.setdefault(table, number)
            continue
        if depth == 0 and (match := _OPTION.match(line)):
            lines.setdefault((*table, *_split_key(match.group(1))), number)
        depth = max(0, depth + stripped.count("[") - stripped.count("]"))
    return lines


def parse(text: str, path: str) -> Document:
    """Parse TOML text; a syntax error becomes a ConfigError with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        match = _LINE.search(str(problem))
        message = str(problem).split(" (at ")[0]
        raise ConfigError(path, int(match.group(1)) if match else None, None, message) from None
    return Document(path, data, _index_lines(text))


def load(path: Path) -> Document:
    """Read and parse a TOML file; every failure names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise ConfigError(str(path), None, None, f"cannot read: {problem}") from None
    return parse(text, str(path))
