"""``data.toml`` -> :class:`Config`: read with tomlkit, typed, checked, every problem with its line.

The keys, their types, defaults and rules are read from the dataclasses of
:mod:`console.config.settings` (:data:`KEYS`), so a field added there is accepted here at
once. :func:`load_config` either returns the frozen config or raises :class:`ConfigError`
with *all* that is wrong, each issue naming its dotted key, its line, the value and what is
allowed; :func:`format_issues` turns them into ``file:line: key = value: message`` lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import msgspec
import tomlkit
from tomlkit.exceptions import TOMLKitError

from console.config.lines import key_lines, repeated_key_line
from console.config.rules import Relation, Rule, is_path_source
from console.config.settings import IN_FILE, RULES, SPEC_RULES, Config
from transport.keys import KeyFileError, read_key_dir, read_keypair

PathLike = str | os.PathLike[str]
TOP = ""  # the section of the top-level keys (run_id, seed)


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


# --- what the file may contain ------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key the file may set, as a field of :mod:`console.config.settings` declares it."""

    section: str
    name: str
    hint: Any  # the resolved type annotation
    default: Any
    rules: tuple[Rule, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def _is_section(hint: Any) -> bool:
    """A table of data.toml: our dataclasses, or transport.spec's Structs nodes receive."""
    return dataclasses.is_dataclass(hint) or (
        isinstance(hint, type) and issubclass(hint, msgspec.Struct)
    )


def _keys_of(kind: type, section: str) -> dict[str, Key]:
    hints, spec_rules = typing.get_type_hints(kind), SPEC_RULES.get(kind, {})
    if dataclasses.is_dataclass(kind):
        return {
            f.name: Key(
                section,
                f.name,
                hints[f.name],
                f.default_factory() if f.default is dataclasses.MISSING else f.default,  # type: ignore[misc]
                f.metadata.get(RULES, spec_rules.get(f.name, ())),
            )
            for f in dataclasses.fields(kind)
            if f.metadata.get(IN_FILE, True)
        }
    return {
        f.name: Key(
            section,
            f.name,
            hints[f.name],
            f.default_factory() if f.default is msgspec.NODEFAULT else f.default,
            spec_rules.get(f.name, ()),
        )
        for f in msgspec.structs.fields(kind)
    }


TABLES: dict[str, type] = {
    k.name: k.hint for k in _keys_of(Config, TOP).values() if _is_section(k.hint)
}
KEYS: dict[str, dict[str, Key]] = {  # section -> key name -> Key
    TOP: {n: k for n, k in _keys_of(Config, TOP).items() if n not in TABLES},
    **{name: _keys_of(kind, name) for name, kind in TABLES.items()},
}
BY_KEY: dict[str, Key] = {k.key: k for keys in KEYS.values() for k in keys.values()}


def load_config(path: PathLike) -> Config:
    """Read, check and type a config file. Raises :class:`ConfigError` listing every problem."""
    file = Path(path).expanduser()
    return parse_config(_read_text(file, path), file, shown=path)


def parse_config(text: str, file: Path, *, shown: PathLike | None = None) -> Config:
    """:func:`load_config` of ``text``, as if read from ``file`` (relative paths resolve against
    its directory): the live settings check an edited file with it before writing it."""
    path = file if shown is None else shown
    raw = _parse(text, path)
    issues = _Issues(key_lines(text))
    given = _read_keys(raw, issues)
    _check_values(given, issues)
    values = {**{k: key.default for k, key in BY_KEY.items()}, **given}
    _check_relations(values, given, issues)
    source = file.resolve()
    values.update(_resolve_paths(values, source.parent, issues))
    if issues.found:
        raise ConfigError(issues.sorted(), path)
    tables = {
        name: kind(**{k: values[f"{name}.{k}"] for k in KEYS[name]})
        for name, kind in TABLES.items()
    }
    return Config(**{k: values[k] for k in KEYS[TOP]}, **tables, source=source)


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
        line = getattr(exc, "line", None) or repeated_key_line(text)
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
    for name, value in raw.items():
        if name in KEYS[TOP]:
            _read_key(KEYS[TOP][name], value, given, issues)
        elif name not in TABLES:
            issues.add(name, value, _unknown_top_level(name, value))
        elif not isinstance(value, dict):
            issues.add(name, value, f"must be a table [{name}] with keys: {', '.join(KEYS[name])}")
        else:
            known = KEYS[name]
            for sub, item in value.items():
                if sub in known:
                    _read_key(known[sub], item, given, issues)
                else:
                    valid = f"valid keys in [{name}]: {', '.join(known)}{_suggest(sub, known)}"
                    issues.add(f"{name}.{sub}", item, f"unknown key; {valid}")
    return given


def _unknown_top_level(name: str, value: Any) -> str:
    tables = ", ".join(f"[{t}]" for t in TABLES)
    if isinstance(value, dict):
        return f"unknown table [{name}]; valid tables: {tables}{_suggest(name, TABLES)}"
    valid = f"valid top-level keys: {', '.join(KEYS[TOP])}; tables: {tables}"
    return f"unknown key; {valid}{_suggest(name, [*KEYS[TOP], *TABLES])}"


def _read_key(key: Key, value: Any, given: dict[str, Any], issues: _Issues) -> None:
    issues.written[key.key] = value
    convert = _COERCE.get(key.hint)
    if convert is None:
        raise TypeError(f"console/config/load.py cannot read {key.key}: type {key.hint!r}")
    try:
        given[key.key] = convert(value)
    except ValueError as exc:
        issues.add(key.key, value, str(exc))


# --- types ------------------------------------------------------------------------------


def toml_type(value: Any) -> str:
    """How TOML calls the type of a parsed value, with its article."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),  # before int: a bool is an int in Python
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        ((datetime, date, time), "a date/time"),
    ]
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _exactly(ok: Callable[[Any], bool], wanted: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"must be {wanted}, got {toml_type(value)}")
        return value

    return convert


def _as_float(value: Any) -> float:
    if not (_is_int(value) or isinstance(value, float)):
        raise ValueError(f"must be a number, got {toml_type(value)}")
    number = float(value) if abs(value) < 2**1023 else math.inf  # nan fails the test too
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _as_tuple(of: str, ok: Callable[[Any], bool]) -> Callable[[Any], tuple[Any, ...]]:
    def convert(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be an array of {of}, got {toml_type(value)}")
        bad = next((v for v in value if not ok(v)), None)
        if bad is not None:
            raise ValueError(f"must be an array of {of} (one entry is {toml_type(bad)})")
        return tuple(value)

    return convert


_as_str = _exactly(_is_str, "a string")
_COERCE: dict[Any, Callable[[Any], Any]] = {
    bool: _exactly(lambda v: isinstance(v, bool), "true or false"),
    int: _exactly(_is_int, "an integer"),
    float: _as_float,
    str: _as_str,
    Path: lambda v: Path(_as_str(v)),
    Path | None: lambda v: Path(_as_str(v)),  # None (unset) is only ever the default
    tuple[int, ...]: _as_tuple("integers", _is_int),
    tuple[str, ...]: _as_tuple("strings", _is_str),
}


# --- checking -----------------------------------------------------------------------------


def _check_values(given: dict[str, Any], issues: _Issues) -> None:
    """Rules on one value; a value that breaks one is dropped from ``given``."""
    for key, value in list(given.items()):
        for rule in BY_KEY[key].rules:
            problem = None if isinstance(rule, Relation) else rule(value)
            if problem is not None:
                issues.add(key, value, problem)
                del given[key]
                break


def _check_relations(values: Mapping[str, Any], given: Mapping[str, Any], issues: _Issues) -> None:
    """Rules between keys, over set values and defaults alike, skipping ones already wrong."""
    wrong = {issue.key for issue in issues.found}
    for key, spec in BY_KEY.items():
        for rule in spec.rules:
            if not isinstance(rule, Relation):
                continue
            involved = (key, *rule.reads)
            if wrong.intersection(involved) or not any(k in given for k in involved):
                continue
            problem = rule.check(values[key], values)
            if problem is None:
                continue
            if key in given:
                issues.add(key, values[key], problem)
            else:  # a default broke the rule: point at the key that made it break
                anchor = next(k for k in rule.reads if k in given)
                note = f" ({key} is not set; {render(values[key])} is its default)"
                issues.add(key, values[key], problem + note, at=anchor)


def _resolve_paths(values: Mapping[str, Any], base: Path, issues: _Issues) -> dict[str, Any]:
    """Relative paths are relative to the config file's directory."""
    resolved: dict[str, Any] = {"checkpoint.dir": _against(base, values["checkpoint.dir"])}
    source = values["data.source"]
    if is_path_source(source):
        file = _against(base, source)
        if file.suffix != ".safetensors":
            issues.add("data.source", source, "a data file must be a .safetensors file")
        elif not file.is_file():
            issues.add("data.source", source, f"no such file ({file})")
        resolved["data.source"] = str(file)
    resolved.update(_resolve_keys(values, base, issues))
    return resolved


_KEY_FILES = {  # read once here when curve = true, so a missing or bad one is reported now
    "security.server_key": (read_keypair, "fl-console keygen DIR writes console.key_secret"),
    "security.authorized_keys": (read_key_dir, "a directory of node public key files, *.key"),
}


def _resolve_keys(values: Mapping[str, Any], base: Path, issues: _Issues) -> dict[str, Any]:
    """``[security]`` key files, resolved (with CURVE off they are not used, need not exist)."""
    resolved: dict[str, Any] = {}
    for key, (read, hint) in _KEY_FILES.items():
        if values[key] is None:
            continue
        resolved[key] = path = _against(base, values[key])
        try:
            if values["security.curve"]:
                read(path)
        except KeyFileError as exc:
            issues.add(key, values[key], f"{exc} ({hint})")
    return resolved


def _against(base: Path, path: PathLike) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
