"""Live settings on the server side: ``data.toml`` read back, checked, written, applied.

:class:`LiveSettings` is :class:`~console.server.server.ConsoleServer`'s ``set_settings``: the
operator's ``section.key`` -> TOML text changes are parsed (``console/config/edit.py``), put
into the file's text with tomlkit, and the whole edited file is checked by the load-time rules
(:func:`console.config.parse_config`: the same messages, cross-key rules included). Then:

- nothing is written when the file changed on disk since the console read it (a conflict: the
  operator's editor and the console must not overwrite each other), nor when a coordinator key
  changes outside WaitingForMembers and Paused (the coordinator's own rule);
- otherwise the previous file is kept as ``data.toml.bak`` and the new one written atomically;
- coordinator keys take effect at once; learning keys wait for the next Warmup, where the run
  spec's version grows and nodes fetch the new spec (``spec_request``);
- every changed key is an event ``setting_changed`` (who, key, old, new) in events.jsonl.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from console.config import Config, ConfigError, parse_config
from console.config.edit import (
    COORDINATOR,
    SettingError,
    changed_keys,
    edit_text,
    parse_changes,
    section_of,
)


@dataclass(frozen=True)
class SettingsResult:
    """What ``set_settings`` did: ``message`` is one line for the console or ``ctl``."""

    ok: bool
    message: str
    changed: tuple[tuple[str, str, str], ...] = ()  # (key, old, new), as TOML writes them


def refused(message: str) -> SettingsResult:
    return SettingsResult(False, message)


class ConfigFile:
    """The run's ``data.toml`` as the console read it (None: a config built in code)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.text: str | None = None
        if path is not None:
            try:
                self.text = path.read_text(encoding="utf-8-sig")
            except OSError:
                self.text = None

    def edit(self, changes: Mapping[str, str]) -> tuple[Config, str]:
        """The config and text after ``changes``; SettingError says why they cannot be made."""
        values = parse_changes(changes)
        if self.path is None or self.text is None:
            raise SettingError("this run has no data.toml to change (its config was built in code)")
        on_disk = self._on_disk()
        if on_disk != self.text:
            raise SettingError(
                f"{self.path} changed on disk since the console read it: nothing was written; "
                "restart the console to take the file's changes, or undo them"
            )
        text = edit_text(self.text, values)
        try:
            config = parse_config(text, self.path)
        except ConfigError as exc:
            problems = [i for i in exc.issues if i.key in values] or exc.issues
            raise SettingError(
                "; ".join(
                    f"{i.key} = {i.value}: {i.message}" if i.value else i.message for i in problems
                )
            ) from exc
        return config, text

    def _on_disk(self) -> str | None:
        assert self.path is not None
        try:
            return self.path.read_text(encoding="utf-8-sig")
        except OSError:
            return None

    def write(self, text: str) -> None:
        """Keep the current file as ``NAME.bak``, then replace it atomically with ``text``."""
        assert self.path is not None and self.text is not None
        path = self.path
        backup = path.with_name(path.name + ".bak")
        _atomic(backup, self.text)
        _atomic(path, text)
        self.text = text


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plan(old: Config, new: Config) -> tuple[list[tuple[str, str, str]], bool, bool]:
    """What changes: (key, old, new) rows, any coordinator key, any learning (spec) key."""
    rows = changed_keys(old, new)
    coordinator = any(section_of(k) == COORDINATOR for k, _, _ in rows)
    spec = old.run_spec() != new.run_spec()
    return rows, coordinator, spec
