"""The kinds of rule a config key can follow, and the checks that several keys share.

A rule is either a :data:`Check` on the key's own value (a range, a choice) or a
:class:`Relation` to other keys (``min_clients <= init_min_clients``). Each returns what is
wrong, ending in what is allowed, or None. :mod:`console.config.settings` attaches them to
the fields they check; :mod:`console.config.load` runs them. Everything here works on plain
values and dotted keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transport.keys import is_z85_key
from transport.spec import BUILTIN_DATA, BUILTIN_MODELS, DEVICES, is_device

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None
Between = Callable[[Any, Mapping[str, Any]], str | None]  # (own value, every value by key) -> ...


@dataclass(frozen=True)
class Relation:
    """A rule between a key's value and the values of ``reads`` (set or default)."""

    reads: tuple[str, ...]
    check: Between


Rule = Check | Relation


def relation(*reads: str) -> Callable[[Between], Relation]:
    """Declare a function ``(own value, every value) -> problem`` as a relation to ``reads``."""
    return lambda check: Relation(reads, check)


# --- rules on one value ------------------------------------------------------------------


def at_least(low: int, note: str = "") -> Check:
    return lambda v: None if v >= low else f"must be >= {low}{note}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}"


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    ops = f"{'>' if open_low else '>='} {low:g} and {'<' if open_high else '<='} {high:g}"
    text = f"must be {ops}" if open_low or open_high else f"must be between {low:g} and {high:g}"

    def check(v: Any) -> str | None:
        inside = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        return None if inside else text

    return check


def one_of(*choices: str) -> Check:
    listed = " | ".join(f'"{c}"' for c in choices)
    return lambda v: None if v in choices else f"must be one of {listed}"


def every_entry(check: Check) -> Check:
    def run(values: tuple[Any, ...]) -> str | None:
        bad = next((v for v in values if check(v) is not None), None)
        return None if bad is None else f"every entry {check(bad)} (got {bad})"

    return run


def not_empty(v: Any) -> str | None:
    return None if str(v).strip() else "must not be empty"


PORT = between(1, 65535)
COUNT = at_least(1)
SECONDS = above(0)

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_import_path(value: str) -> bool:
    """``package.module:name``: user code a node imports."""
    return bool(_IMPORT_PATH.match(value))


def is_path_source(value: str) -> bool:
    """A data source naming a file (resolved against the config file's directory)."""
    return "/" in value or value.endswith(".safetensors")


def valid_run_id(v: str) -> str | None:
    if _RUN_ID.match(v):
        return None
    return "must be letters, digits, '.', '_' or '-', starting with a letter or digit"


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def model_name(v: str) -> str | None:
    if v in BUILTIN_MODELS or is_import_path(v):
        return None
    return f'must be {_quoted(BUILTIN_MODELS)} or an import path "package.module:factory"'


def data_source(v: str) -> str | None:
    if v in BUILTIN_DATA or is_path_source(v) or is_import_path(v):
        return None
    return (
        f'must be {_quoted(BUILTIN_DATA)}, an import path "package.module:loader" '
        'or a path to a .safetensors file ("data/train.safetensors")'
    )


def device_name(v: str) -> str | None:
    if is_device(v):
        return None
    return f'must be {_quoted(DEVICES)} (N: the GPU\'s index, e.g. "cuda:1")'


def curve_public_keys(v: tuple[str, ...]) -> str | None:
    bad = next((k for k in v if not is_z85_key(k)), None)
    if bad is None:
        return None
    return f"every entry must be a 40-character Z85 CURVE public key (got {bad!r:.60})"


# --- rules between values ----------------------------------------------------------------


def at_most(limit: str) -> Relation:
    return Relation(
        (limit,), lambda v, a: None if v <= a[limit] else f"must be <= {limit} ({a[limit]})"
    )


def exceeds(other: str, why: str) -> Relation:
    return Relation(
        (other,), lambda v, a: None if v > a[other] else f"must be > {other} ({a[other]:g}), {why}"
    )


def differs_from(*others: str) -> Relation:
    def check(v: Any, a: Mapping[str, Any]) -> str | None:
        clash = next((k for k in others if a[k] == v), None)
        if clash is None:
            return None
        return f"must differ from {clash} ({a[clash]}); each socket needs its own port"

    return Relation(others, check)


@relation("learning.train_set_size", "learning.byzantine_f")
def krum_needs_enough_updates(v: str, a: Mapping[str, Any]) -> str | None:
    size, f = a["learning.train_set_size"], a["learning.byzantine_f"]
    if v != "krum" or size > 2 * f + 2:
        return None
    return (
        f"krum needs learning.train_set_size > 2 * learning.byzantine_f + 2, "
        f"i.e. at least {2 * f + 3} with byzantine_f = {f} (train_set_size is {size})"
    )


@relation("model.name")
def cnn_has_channels(v: tuple[int, ...], a: Mapping[str, Any]) -> str | None:
    if a["model.name"] != "cnn" or v:
        return None
    return 'must list at least one channel count when model.name is "cnn"'


@relation("security.server_key")
def curve_has_server_key(v: bool, a: Mapping[str, Any]) -> str | None:
    if not v or a["security.server_key"] is not None:
        return None
    return (
        "needs security.server_key: the console's secret key file "
        '(run "fl-console keygen keys" and set server_key = "keys/console.key_secret")'
    )


@relation("data.serve")
def curve_without_served_data(v: bool, a: Mapping[str, Any]) -> str | None:
    if not (v and a["data.serve"]):
        return None
    return (
        "cannot be used with data.serve = true yet: the data server has no CURVE; "
        "set data.serve = false (nodes then load their data themselves)"
    )
