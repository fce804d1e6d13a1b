"""``data.toml`` -> :class:`console.settings.Config`.

:func:`load_config` reads the file with tomlkit, checks every key against
:mod:`console.config_schema` and either returns the frozen config or raises
:class:`ConfigError` with *all* that is wrong, each issue naming its dotted key, its line, the
value and what is allowed. :func:`format_issues` turns them into ``file:line: key = value:
message`` lines.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from console import config_schema as schema
from console.settings import Config
from transport.keys import KeyFileError, read_key_dir, read_keypair

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ConfigIssue:
    """One thing wrong with a config file."""

    key: str  # dotted key ("coordinator.min_clients"); "" when the file as a whole is wrong
    line: int | None  # 1-based; None when the key is not in the file
    value: str  # the offending value as TOML writes it; "" when there is none
    message: str  # what is wrong and what is allowed


class ConfigError(ValueError):
    """A config file that cannot be used; ``issues`` lists everything wrong with it."""

    def __init__(self, issues: Sequence[ConfigIssue], path: PathLike | None = None) -> None:
        self.issues = list(issues)
        self.path = path
        super().__init__(format_issues(self.issues, path))


def format_issues(issues: Iterable[ConfigIssue], path: PathLike | None = None) -> str:
    """One line per issue: ``data.toml:14: coordinator.min_clients = 5: must be <= ...``."""
    name = str(path) if path is not None else "<config>"
    lines = []
    for issue in issues:
        where = f"{name}:{issue.line}" if issue.line is not None else name
        what = f"{issue.key} = {issue.value}" if issue.key and issue.value else issue.key
        lines.append(f"{where}: {what}: {issue.message}" if what else f"{where}: {issue.message}")
    return "\n".join(lines)


def load_config(path: PathLike) -> Config:
    """Read, check and type a config file. Raises :class:`ConfigError` listing every problem."""
    file = Path(path).expanduser()
    text = _read_text(file, path)
    raw = _parse(text, path)
    issues = _Issues(key_lines(text))
    given = _read_keys(raw, issues)
    _check_values(given, issues)
    values = {**schema.DEFAULTS, **given}
    _check_relations(values, given, issues)
    source = file.resolve()
    values.update(_resolve_paths(values, source.parent, issues))
    if issues.found:
        raise ConfigError(issues.sorted(), path)
    return _build(values, source)


# --- reading ------------------------------------------------------------------------------


def _read_text(file: Path, shown: PathLike) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is fine
    except FileNotFoundError:
        problem = f"no such file ({file.absolute()})"
    except IsADirectoryError:
        problem = "is a directory, not a config file"
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror or exc}"
    raise ConfigError([ConfigIssue("", None, "", problem)], shown)


def _parse(text: str, shown: PathLike) -> dict[str, Any]:
    try:
        return tomlkit.parse(text).unwrap()
    except TOMLKitError as exc:
        line = getattr(exc, "line", None) or _repeated_key_line(text)
        message = re.sub(r" at line \d+ col \d+$", "", str(exc)).replace(
            "character: '\\x00'", "end of file"
        )
        raise ConfigError([ConfigIssue("", line, "", f"invalid TOML: {message}")], shown) from exc


def render(value: Any) -> str:
    """A value as it would be written in TOML (short enough for an error line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {render(v)}" for k, v in value.items()) + "}"
    return str(value)


class _Issues:
    """Collects issues, finding each key's line in the file."""

    def __init__(self, lines: Mapping[str, int]) -> None:
        self.lines = lines
        self.found: list[ConfigIssue] = []
        self.written: dict[str, Any] = {}  # key -> the value as parsed, before typing

    def line_of(self, key: str) -> int | None:
        """The key's line; for a key inside an inline table or array, its parent's line."""
        parts = key.split(".")
        while parts:
            if (line := self.lines.get(".".join(parts))) is not None:
                return line
            parts.pop()
        return None

    def add(self, key: str, value: Any, message: str, *, at: str | None = None) -> None:
        """Record an issue on ``key``, shown on the line of ``at`` (default: ``key``'s own)."""
        value = self.written.get(key, value)
        shown = "" if isinstance(value, dict) else render(value)
        self.found.append(ConfigIssue(key, self.line_of(at or key), shown, message))

    def sorted(self) -> list[ConfigIssue]:
        return sorted(self.found, key=lambda i: (i.line is None, i.line or 0))


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_keys(raw: Mapping[str, Any], issues: _Issues) -> dict[str, Any]:
    """Every known key present in the file, typed; unknown keys and wrong types become issues."""
    given: dict[str, Any] = {}
    top_keys, tables = schema.KEYS[schema.TOP], schema.TABLES
    for name, value in raw.items():
        if name in top_keys:
            _read_key(top_keys[name], value, given, issues)
        elif name not in tables:
            issues.add(name, value, _unknown_top_level(name, value))
        elif not isinstance(value, dict):
            issues.add(
                name, value, f"must be a table [{name}] with keys: {', '.join(schema.KEYS[name])}"
            )
        else:
            _read_table(name, value, given, issues)
    return given


def _unknown_top_level(name: str, value: Any) -> str:
    tables = ", ".join(f"[{t}]" for t in schema.TABLES)
    if isinstance(value, dict):
        return f"unknown table [{name}]; valid tables: {tables}{_suggest(name, schema.TABLES)}"
    top_keys = schema.KEYS[schema.TOP]
    valid = f"valid top-level keys: {', '.join(top_keys)}; tables: {tables}"
    return f"unknown key; {valid}{_suggest(name, [*top_keys, *schema.TABLES])}"


def _read_table(table: str, raw: Mapping[str, Any], given: dict[str, Any], issues: _Issues) -> None:
    known = schema.KEYS[table]
    for name, value in raw.items():
        if name in known:
            _read_key(known[name], value, given, issues)
            continue
        message = f"unknown key; valid keys in [{table}]: {', '.join(known)}{_suggest(name, known)}"
        issues.add(f"{table}.{name}", value, message)


def _read_key(field: schema.Field, value: Any, given: dict[str, Any], issues: _Issues) -> None:
    issues.written[field.key] = value
    try:
        given[field.key] = schema.coerce(field, value)
    except ValueError as exc:
        issues.add(field.key, value, str(exc))


# --- checking -----------------------------------------------------------------------------


def _check_values(given: dict[str, Any], issues: _Issues) -> None:
    """Range and choice rules; a value that breaks one is dropped from ``given``."""
    for key, value in list(given.items()):
        rule = schema.VALUE_RULES.get(key)
        problem = rule(value) if rule is not None else None
        if problem is not None:
            issues.add(key, value, problem)
            del given[key]


def _check_relations(values: Mapping[str, Any], given: Mapping[str, Any], issues: _Issues) -> None:
    """Rules between keys, over set values and defaults alike, skipping ones already wrong."""
    wrong = {issue.key for issue in issues.found}
    for relation in schema.RELATIONS:
        involved = (relation.key, *relation.reads)
        if wrong.intersection(involved) or not any(k in given for k in involved):
            continue
        problem = relation.check(values)
        if problem is None:
            continue
        key, value = relation.key, values[relation.key]
        if key in given:
            issues.add(key, value, problem)
        else:  # a default broke the rule: point at the key that made it break
            anchor = next(k for k in relation.reads if k in given)
            note = f" ({key} is not set; {render(value)} is its default)"
            issues.add(key, value, problem + note, at=anchor)


def _resolve_paths(values: Mapping[str, Any], base: Path, issues: _Issues) -> dict[str, Any]:
    """Relative paths are relative to the config file's directory."""
    resolved: dict[str, Any] = {"checkpoint.dir": _against(base, values["checkpoint.dir"])}
    source = values["data.source"]
    if schema.is_path_source(source):
        file = _against(base, source)
        if file.suffix != ".safetensors":
            issues.add("data.source", source, "a data file must be a .safetensors file")
        elif not file.is_file():
            issues.add("data.source", source, f"no such file ({file})")
        resolved["data.source"] = str(file)
    resolved.update(_resolve_keys(values, base, issues))
    return resolved


def _resolve_keys(values: Mapping[str, Any], base: Path, issues: _Issues) -> dict[str, Any]:
    """``[security]`` key files, resolved; with ``curve = true`` read once here, so a missing or
    bad one is reported now (with CURVE off they are not used, and need not exist yet)."""
    resolved: dict[str, Any] = {}
    curve = values["security.curve"]
    key = "security.server_key"
    if values[key] is not None:
        resolved[key] = file = _against(base, values[key])
        try:
            if curve:
                read_keypair(file)
        except KeyFileError as exc:
            issues.add(key, values[key], f"{exc} (fl-console keygen DIR writes console.key_secret)")
    key = "security.authorized_keys"
    if values[key] is not None:
        resolved[key] = folder = _against(base, values[key])
        try:
            if curve:
                read_key_dir(folder)
        except KeyFileError as exc:
            issues.add(key, values[key], f"{exc} (a directory of node public key files, *.key)")
    return resolved


def _against(base: Path, path: PathLike) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _build(values: Mapping[str, Any], source: Path) -> Config:
    tables = {
        name: kind(**{f.name: values[f.key] for f in schema.KEYS[name].values()})
        for name, kind in schema.TABLES.items()
    }
    top = {f.name: values[f.key] for f in schema.KEYS[schema.TOP].values()}
    return Config(**top, **tables, source=source)


# --- where each key is ----------------------------------------------------------------------

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


def _repeated_key_line(text: str) -> int | None:
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
