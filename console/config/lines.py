"""Where each key is in TOML text: tomlkit keeps no positions, so a small scanner finds them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line on which each dotted key, and each table, first appears in TOML text.

    A small scanner rather than tomlkit, which keeps no positions: it follows ``[table]``
    headers, dotted and quoted keys, and skips the inside of multi-line strings and arrays.
    """
    found: dict[str, int] = {}
    for parts, number, _ in _entries(text):
        for end in range(1, len(parts) + 1):
            found.setdefault(".".join(parts[:end]), number)
    return found


def repeated_key_line(text: str) -> int | None:
    """The line where a key is assigned a second time (tomlkit does not always say)."""
    seen: set[str] = set()
    for parts, number, is_header in _entries(text):
        key = ".".join(parts)
        if not is_header and key in seen:
            return number
        seen.add(key)
    return None


def _entries(text: str) -> Iterator[tuple[list[str], int, bool]]:
    """Each table header and key assignment: (full dotted key, line, is it a header)."""
    table: list[str] = []
    value = _ValueScanner()
    for number, line in enumerate(text.split("\n"), start=1):
        if value.inside:
            value.feed(line)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            header = _parse_key(stripped, 2 if stripped.startswith("[[") else 1)
            if header is not None and stripped[header[1] : header[1] + 1] == "]":
                table = header[0]
                yield table, number, True
            continue
        parsed = _parse_key(stripped, 0)
        if parsed is not None and stripped[parsed[1] : parsed[1] + 1] == "=":
            yield table + parsed[0], number, False
            value.feed(stripped[parsed[1] + 1 :])


def _parse_key(text: str, i: int) -> tuple[list[str], int] | None:
    """A dotted key starting at ``text[i]``: its parts and the index after it (and its spaces)."""
    parts: list[str] = []
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] in "\"'":
            end = _string_end(text, i)
            raw = text[i + 1 : end - 1]
            parts.append(_unescape(raw) if text[i] == '"' else raw)
            i = end
        elif match := _BARE_KEY.match(text, i):
            parts.append(match.group())
            i = match.end()
        else:
            return None
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text) or text[i] != ".":
            return parts, i
        i += 1


def _string_end(text: str, i: int) -> int:
    """The index after the one-line string that starts at ``text[i]``."""
    quote, j = text[i], i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return min(j + 1, len(text))


def _unescape(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return raw


class _ValueScanner:
    """Follows a value across lines: open multi-line strings and brackets."""

    def __init__(self) -> None:
        self.depth = 0
        self.string: str | None = None  # the delimiter of an open multi-line string

    @property
    def inside(self) -> bool:
        return self.depth > 0 or self.string is not None

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self.string is not None:
                end = self._close(text, i)
                if end < 0:
                    return
                self.string, i = None, end
            elif text.startswith(('"""', "'''"), i):
                self.string, i = text[i : i + 3], i + 3
            elif text[i] in "\"'":
                i = _string_end(text, i)
            elif text[i] == "#":
                return
            else:
                self.depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[i], 0)
                self.depth = max(self.depth, 0)
                i += 1

    def _close(self, text: str, i: int) -> int:
        """The index after the closing delimiter of the open string, or -1 if not on this line."""
        assert self.string is not None
        while i < len(text):
            if text.startswith(self.string, i):
                return i + 3
            i += 2 if self.string == '"""' and text[i] == "\\" else 1
        return -1
