"""What ``data.toml`` may contain: its keys, their types and the rules their values follow.

The keys, types and defaults are read from the dataclasses of :mod:`console.settings` (the one
place defaults live), so a field added there is accepted here at once. What this module adds
is the rules: per value (ranges, choices) and between values (``min_clients <=
init_min_clients``). Everything here works on plain values and dotted keys;
:mod:`console.config` reads the file, finds lines and builds the :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import msgspec

from console.settings import Config
from transport.keys import is_z85_key
from transport.spec import (
    AGGREGATORS,
    BUILTIN_DATA,
    BUILTIN_MODELS,
    COMPRESSIONS,
    OPTIMIZERS,
    PARTITIONS,
)

TOP = ""  # the section of the top-level keys (run_id, seed)
NOT_IN_FILE = frozenset({"source"})  # Config fields the loader fills in itself (top level)

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


@dataclass(frozen=True)
class Field:
    """One key the file may set."""

    section: str
    name: str
    hint: Any  # the resolved type annotation from console/settings.py
    default: Any

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def _default(f: Any) -> Any:  # a dataclass field, or a msgspec Struct's (transport.spec)
    if f.default not in (dataclasses.MISSING, msgspec.NODEFAULT):
        return f.default
    return f.default_factory()


def _is_section(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) or (
        isinstance(hint, type) and issubclass(hint, msgspec.Struct)
    )


def _fields_of(kind: type, section: str, skip: frozenset[str] = frozenset()) -> dict[str, Field]:
    hints = typing.get_type_hints(kind)
    fields = (
        dataclasses.fields(kind) if dataclasses.is_dataclass(kind) else msgspec.structs.fields(kind)
    )
    return {
        f.name: Field(section, f.name, hints[f.name], _default(f))
        for f in fields
        if f.name not in skip
    }


def _build_schema() -> tuple[dict[str, type], dict[str, dict[str, Field]]]:
    tables: dict[str, type] = {}
    keys: dict[str, dict[str, Field]] = {TOP: {}}
    for name, top_field in _fields_of(Config, TOP, NOT_IN_FILE).items():
        if _is_section(top_field.hint):
            tables[name] = top_field.hint
            keys[name] = _fields_of(top_field.hint, name)
        else:
            keys[TOP][name] = top_field
    return tables, keys


TABLES, KEYS = _build_schema()  # table name -> dataclass; section -> key name -> Field
DEFAULTS: dict[str, Any] = {f.key: f.default for fields in KEYS.values() for f in fields.values()}


# --- types ------------------------------------------------------------------------------


def toml_type(value: Any) -> str:
    """How TOML calls the type of a parsed value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    kinds: list[tuple[type | tuple[type, ...], str]] = [
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


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {toml_type(value)}")
    return value


def _as_int(value: Any) -> int:
    if not _is_int(value):
        raise ValueError(f"must be an integer, got {toml_type(value)}")
    return value


def _as_float(value: Any) -> float:
    if not (_is_int(value) or isinstance(value, float)):
        raise ValueError(f"must be a number, got {toml_type(value)}")
    number = float(value) if abs(value) < 2**1023 else math.inf  # nan fails the test too
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {toml_type(value)}")
    return value


def _as_int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of integers, got {toml_type(value)}")
    bad = next((v for v in value if not _is_int(v)), None)
    if bad is not None:
        raise ValueError(f"must be an array of integers (one entry is {toml_type(bad)})")
    return tuple(value)


def _as_str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of strings, got {toml_type(value)}")
    bad = next((v for v in value if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"must be an array of strings (one entry is {toml_type(bad)})")
    return tuple(value)


_COERCE: dict[Any, Callable[[Any], Any]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
    Path: lambda v: Path(_as_str(v)),
    Path | None: lambda v: Path(_as_str(v)),  # None (unset) is only ever the default
    tuple[int, ...]: _as_int_tuple,
    tuple[str, ...]: _as_str_tuple,
}


def coerce(field: Field, value: Any) -> Any:
    """The value as the dataclass field wants it; ValueError says what was expected."""
    convert = _COERCE.get(field.hint)
    if convert is None:
        raise TypeError(f"console/config_schema.py cannot read {field.key}: type {field.hint!r}")
    return convert(value)


# --- rules for one value -----------------------------------------------------------------


def at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}"


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok_low = v > low if open_low else v >= low
        ok_high = v < high if open_high else v <= high
        if ok_low and ok_high:
            return None
        if not (open_low or open_high):
            return f"must be between {low:g} and {high:g}"
        return (
            f"must be {'>' if open_low else '>='} {low:g} and {'<' if open_high else '<='} {high:g}"
        )

    return check


def one_of(*choices: str, also: str = "") -> Check:
    listed = " | ".join(f'"{c}"' for c in choices) + (f" | {also}" if also else "")
    return lambda v: None if v in choices else f"must be one of {listed}"


def every_entry(check: Check) -> Check:
    def run(values: tuple[Any, ...]) -> str | None:
        bad = next((v for v in values if check(v) is not None), None)
        return None if bad is None else f"every entry {check(bad)} (got {bad})"

    return run


def not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_import_path(value: str) -> bool:
    """``package.module:name``: user code a node imports."""
    return bool(_IMPORT_PATH.match(value))


def is_path_source(value: str) -> bool:
    """A data source naming a file (resolved against the config file's directory)."""
    return "/" in value or value.endswith(".safetensors")


def model_name(v: str) -> str | None:
    if v in BUILTIN_MODELS or is_import_path(v):
        return None
    return 'must be "mlp", "cnn" or an import path "package.module:factory"'


def data_source(v: str) -> str | None:
    if v in BUILTIN_DATA or is_path_source(v) or is_import_path(v):
        return None
    return (
        'must be "digits", "synthetic", an import path "package.module:loader" '
        'or a path to a .safetensors file ("data/train.safetensors")'
    )


def curve_public_keys(v: tuple[str, ...]) -> str | None:
    bad = next((k for k in v if not is_z85_key(k)), None)
    if bad is None:
        return None
    return f"every entry must be a 40-character Z85 CURVE public key (got {bad!r:.60})"


def run_id(v: str) -> str | None:
    if _RUN_ID.match(v):
        return None
    return "must be letters, digits, '.', '_' or '-', starting with a letter or digit"


PORT = between(1, 65535)
COUNT = at_least(1)
SECONDS = above(0)

VALUE_RULES: dict[str, Check] = {
    "run_id": run_id,
    "seed": at_least(0),
    "server.host": not_empty,
    "server.state_port": PORT,
    "server.control_port": PORT,
    "server.data_port": PORT,
    "coordinator.init_min_clients": COUNT,
    "coordinator.min_clients": COUNT,
    "coordinator.witness_nodes": COUNT,
    "coordinator.waiting_for_members_extra_time": at_least(0),
    "coordinator.warmup_time": SECONDS,
    "coordinator.max_round_train_time": SECONDS,
    "coordinator.round_witness_time": SECONDS,
    "coordinator.cooldown_time": SECONDS,
    "coordinator.rounds_per_epoch": COUNT,
    "coordinator.total_rounds": COUNT,
    "coordinator.heartbeat_interval": SECONDS,
    "coordinator.health_timeout": SECONDS,
    "learning.train_set_size": COUNT,
    "learning.local_epochs": COUNT,
    "learning.batch_size": COUNT,
    "learning.optimizer": one_of(*OPTIMIZERS),
    "learning.learning_rate": above(0),
    "learning.aggregator": one_of(*AGGREGATORS),
    "learning.trim_fraction": between(0, 0.5, open_high=True),
    "learning.byzantine_f": at_least(0),
    "learning.torch_threads": COUNT,
    "learning.compression": one_of(*COMPRESSIONS),
    "learning.topk_fraction": between(0, 1, open_low=True),
    "learning.gossip_fanout": at_least(0),
    "model.name": model_name,
    "model.hidden": every_entry(COUNT),
    "model.channels": every_entry(COUNT),
    "data.source": data_source,
    "data.partition": one_of(*PARTITIONS),
    "data.alpha": above(0),
    "data.test_fraction": between(0, 1, open_low=True, open_high=True),
    "data.samples": COUNT,
    "data.features": COUNT,
    "data.classes": at_least(2),
    "local.spawn": at_least(0),
    "checkpoint.dir": lambda v: None if str(v).strip() else "must not be empty",
    "security.server_key": lambda v: None if str(v).strip() else "must not be empty",
    "security.authorized_keys": lambda v: None if str(v).strip() else "must not be empty",
    "security.allowed": curve_public_keys,
}


# --- rules between values ----------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """A rule over several values, reported on ``key``."""

    key: str
    reads: tuple[str, ...]  # the other keys it depends on
    check: Callable[[Mapping[str, Any]], str | None]


def _at_most(key: str, limit: str) -> Relation:
    return Relation(
        key, (limit,), lambda v: None if v[key] <= v[limit] else f"must be <= {limit} ({v[limit]})"
    )


def _port_unique(key: str, earlier: tuple[str, ...]) -> Relation:
    def check(v: Mapping[str, Any]) -> str | None:
        clash = next((k for k in earlier if v[k] == v[key]), None)
        return (
            None
            if clash is None
            else f"must differ from {clash} ({v[clash]}); each socket needs its own port"
        )

    return Relation(key, earlier, check)


def _krum_needs_enough_updates(v: Mapping[str, Any]) -> str | None:
    size, f = v["learning.train_set_size"], v["learning.byzantine_f"]
    if v["learning.aggregator"] != "krum" or size > 2 * f + 2:
        return None
    return (
        f"krum needs learning.train_set_size > 2 * learning.byzantine_f + 2, "
        f"i.e. at least {2 * f + 3} with byzantine_f = {f} (train_set_size is {size})"
    )


def _health_outlasts_heartbeat(v: Mapping[str, Any]) -> str | None:
    beat = v["coordinator.heartbeat_interval"]
    if v["coordinator.health_timeout"] > beat:
        return None
    return f"must be > coordinator.heartbeat_interval ({beat:g}), or every node looks dead"


def _cnn_has_channels(v: Mapping[str, Any]) -> str | None:
    if v["model.name"] != "cnn" or v["model.channels"]:
        return None
    return 'must list at least one channel count when model.name is "cnn"'


def _curve_has_server_key(v: Mapping[str, Any]) -> str | None:
    if not v["security.curve"] or v["security.server_key"] is not None:
        return None
    return (
        "needs security.server_key: the console's secret key file "
        '(run "fl-console keygen keys" and set server_key = "keys/console.key_secret")'
    )


def _curve_without_served_data(v: Mapping[str, Any]) -> str | None:
    if not (v["security.curve"] and v["data.serve"]):
        return None
    return (
        "cannot be used with data.serve = true yet: the data server has no CURVE; "
        "set data.serve = false (nodes then load their data themselves)"
    )


_PORTS = ("server.state_port", "server.control_port", "server.data_port")

RELATIONS: tuple[Relation, ...] = (
    _at_most("coordinator.min_clients", "coordinator.init_min_clients"),
    _at_most("coordinator.witness_nodes", "coordinator.min_clients"),
    Relation(
        "coordinator.health_timeout",
        ("coordinator.heartbeat_interval",),
        _health_outlasts_heartbeat,
    ),
    *(_port_unique(key, _PORTS[:i]) for i, key in enumerate(_PORTS) if i),
    Relation(
        "learning.aggregator",
        ("learning.train_set_size", "learning.byzantine_f"),
        _krum_needs_enough_updates,
    ),
    Relation("model.channels", ("model.name",), _cnn_has_channels),
    Relation("security.curve", ("security.server_key",), _curve_has_server_key),
    Relation("security.curve", ("data.serve",), _curve_without_served_data),
)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the run on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
