"""Live settings on the config side: which keys may change in a running run, the operator's
values parsed as TOML, and ``data.toml`` edited in place with tomlkit (comments, blank lines and
key order kept; only the changed values differ). No file I/O and no run state here: the server
(``console/server/settings.py``) reads and writes the file and applies the result.

Each value is checked afterwards by loading the edited text with the same rules as at start
(:func:`console.config.parse_config`), so a bad value gets the load-time message, cross-key
rules included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from console.config.load import BY_KEY, KEYS, TABLES, TOP, _suggest, render
from console.config.settings import Config

COORDINATOR = "coordinator"  # changes at once, in WaitingForMembers and Paused only
LEARNING = "learning"  # reaches the nodes with the next Warmup (the run spec's version)
# Why the other sections cannot change in a running run.
FIXED = {
    TOP: "run_id and seed identify the run and its checkpoints",
    "server": "the sockets are bound when the console starts",
    "model": "the model's shape is fixed by the run's checkpoints",
    "data": "every node's shard is cut from it for the whole run",
    "local": "local nodes are started with the console",
    "checkpoint": "the checkpoint directory is chosen when the console starts",
    "security": "CURVE keys are loaded when the console starts",
}


class SettingError(ValueError):
    """A change the operator asked for that cannot be made (the message says why)."""


@dataclass(frozen=True)
class Setting:
    """One key of ``data.toml`` as the settings screen lists it."""

    key: str  # "coordinator.init_min_clients"
    value: str  # the current value, as TOML writes it
    help: str  # the file's own comment above the key ("" when it has none)
    live: str  # "now" (coordinator), "next warmup" (learning) or "" (fixed)


def section_of(key: str) -> str:
    return key.split(".", 1)[0] if "." in key else TOP


def liveness(key: str) -> str:
    section = section_of(key)
    return {COORDINATOR: "now", LEARNING: "next warmup"}.get(section, "")


def parse_changes(changes: Mapping[str, str]) -> dict[str, Any]:
    """The operator's ``section.key`` -> TOML value text, parsed; SettingError says what is
    wrong (an unknown key with the valid ones, a value that is not TOML, a fixed section)."""
    if not changes:
        raise SettingError(
            "no setting given; write section.key=value, e.g. coordinator.min_clients=2"
        )
    parsed: dict[str, Any] = {}
    for key, text in changes.items():
        if key not in BY_KEY:
            section = section_of(key)
            valid = KEYS.get(section) if section in TABLES else None
            if valid is None:
                tables = ", ".join(TABLES)
                raise SettingError(
                    f"{key}: unknown key; write section.key with a section of {tables}"
                )
            raise SettingError(
                f"{key}: unknown key; valid keys in [{section}]: "
                f"{', '.join(valid)}{_suggest(key.split('.', 1)[1], valid)}"
            )
        if not liveness(key):
            raise SettingError(
                f"{key} cannot change while the run is going: {FIXED[section_of(key)]}; "
                "edit data.toml and restart the console"
            )
        try:
            parsed[key] = tomlkit.parse(f"value = {text}")["value"]
        except TOMLKitError as exc:
            raise SettingError(
                f'{key} = {text}: not a TOML value ({exc}); strings need quotes, e.g. "fedavg"'
            ) from exc
    return parsed


def edit_text(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with each dotted key set to its tomlkit value: in place when the key is in the
    file (its comments kept, a trailing one included), else appended to its table."""
    doc = tomlkit.parse(text)
    for key, value in values.items():
        section, name = key.split(".", 1)
        table = doc.get(section)
        if table is None:
            table = tomlkit.table()
            doc[section] = table
        table[name] = value  # tomlkit keeps the key's place and its comments
    return tomlkit.dumps(doc)


def value_of(config: Config, key: str) -> Any:
    """A dotted key's value in a loaded config."""
    section, _, name = key.rpartition(".")
    holder = getattr(config, section) if section else config
    return getattr(holder, name)


def changed_keys(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """(key, old, new) for every key whose value differs, as TOML writes the values."""
    out = []
    for key in BY_KEY:
        before, after = value_of(old, key), value_of(new, key)
        if before != after:
            out.append((key, render(before), render(after)))
    return out


def settings(config: Config, text: str) -> list[Setting]:
    """Every key of the file's tables with its current value and the comment above it."""
    comments = comments_above(text)
    return [
        Setting(key, render(value_of(config, key)), comments.get(key, ""), liveness(key))
        for key in BY_KEY
    ]


def comments_above(text: str) -> dict[str, str]:
    """Each key's help: the comment lines right above it in the file (joined)."""
    out: dict[str, str] = {}
    table = ""
    block: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            block.append(line.lstrip("#").strip())
            continue
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[]").strip()
        elif "=" in line and block:
            name = line.split("=", 1)[0].strip()
            out[f"{table}.{name}" if table else name] = " ".join(b for b in block if b)
        block = []
    return out
