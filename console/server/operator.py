"""The operator's side of the console server: what the console's keys and ``ctl`` ask for.

:class:`OperatorRequests` is a base of :class:`~console.server.server.ConsoleServer`, as
:class:`~console.server.requests.NodeRequests` is for what nodes ask: pause, resume, end the
phase, kick and ban, unban, live settings (``console/server/settings.py`` does the file), and
the reaping of the local nodes the console spawned. Each call writes its event (who asked, what,
refused or not) and hands the coordinator's outcome to the server's ``_after``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from console.config import Config
from console.config.edit import SettingError, changed_keys
from console.coordinator import Coordinator, Outcome
from console.record.eventlog import EventLog
from console.server.checkpoint import CheckpointError, StoredCheckpoint, record_state
from console.server.history import RoundHistory
from console.server.settings import ConfigFile, SettingsResult, plan, refused
from transport.exit_codes import ExitCode

REAP_INTERVAL = 0.2  # seconds between two looks at the spawned nodes


class OperatorRequests:
    """The operator API of the console server (its base class); see the module docstring."""

    config: Config
    config_file: ConfigFile
    spec_config: Config
    spec_version: int
    coordinator: Coordinator
    events: EventLog
    history: RoundHistory
    checkpoint_dir: Path
    tick_interval: float
    listeners: list[Callable[[], None]]
    clock: Callable[[], float]
    _stored: StoredCheckpoint | None

    def _after(self, outcome: Outcome, now: float, *, force_broadcast: bool = False) -> None:
        raise NotImplementedError

    def pause(self, *, who: str = "console") -> Outcome:
        return self._operator("pause", self.coordinator.pause, who)

    def resume(self, *, who: str = "console") -> Outcome:
        return self._operator("resume", self.coordinator.resume, who)

    def end_phase(self, *, who: str = "console") -> Outcome:
        return self._operator("end phase", self.coordinator.end_phase, who)

    def kick(self, client_id: str, *, ban: bool = False, who: str = "console") -> Outcome:
        """Take ``client_id`` out of the run (its node is told ``kicked`` and exits). ``ban``:
        refuse its joins (``banned``) until :meth:`unban`, also after a ``--resume`` (the ban
        is written into the latest checkpoint's state at once, and into every later one)."""
        what = f"{'ban' if ban else 'kick'} {client_id}"
        reason = f"banned by the operator ({who})"
        outcome = self._operator(
            what, lambda now: self.coordinator.kick(client_id, now, ban=ban, reason=reason), who
        )
        if ban and outcome.ok:
            self._save_bans()
        return outcome

    def unban(self, client_id: str, *, who: str = "console") -> Outcome:
        """Lift a ban (or a kick): ``client_id`` may join again."""
        outcome = self._operator(
            f"unban {client_id}", lambda now: self.coordinator.unban(client_id, now), who
        )
        if outcome.ok:
            self._save_bans()
        return outcome

    def set_settings(self, changes: Mapping[str, str], *, who: str = "console") -> SettingsResult:
        """Change ``data.toml`` settings live: ``changes`` maps "section.key" to the value as
        typed (TOML: ``3``, ``0.01``, ``"fedavg"``). See ``console/server/settings.py``."""
        now = self.clock()
        result, outcome = self._set_settings(changes, now)
        by = "" if who == "console" else f" ({who})"
        if not result.ok:
            self.events.write(
                now,
                "operator",
                f"operator{by}: settings refused: {result.message}",
                level="warning",
                who=who,
            )
            return result
        for key, old, new in result.changed:
            self.events.write(
                now,
                "setting_changed",
                f"operator{by}: {key} {old} -> {new}",
                who=who,
                key=key,
                old=old,
                new=new,
            )
        if result.changed:
            self._after(outcome, now, force_broadcast=True)
        return result

    def _set_settings(
        self, changes: Mapping[str, str], now: float
    ) -> tuple[SettingsResult, Outcome]:
        """Check, write, apply; nothing is written unless it can be applied."""
        try:
            config, text = self.config_file.edit(changes)
        except SettingError as exc:
            return refused(str(exc)), Outcome()
        rows, coordinator, spec = plan(self.config, config)
        if not rows:
            return SettingsResult(
                True, "nothing changed: the values are the current ones"
            ), Outcome()
        if coordinator and (why := self.coordinator.settings_refused(config.coordinator)):
            return refused(why), Outcome()
        try:
            self.config_file.write(text)
        except OSError as exc:
            return refused(f"{self.config_file.path} not written: {exc}"), Outcome()
        self.config = config
        outcome = Outcome()
        if coordinator:
            outcome = self.coordinator.reconfigure(now, config=config.coordinator)
            assert outcome.rejection is None, outcome.rejection  # settings_refused said yes
            self.tick_interval = config.coordinator.heartbeat_interval
        changed = ", ".join(f"{k} {o} -> {n}" for k, o, n in rows)
        when = "; learning settings reach the nodes at the next Warmup" if spec else ""
        return SettingsResult(True, f"saved {changed}{when}", tuple(rows)), outcome

    def _activate_spec(self, now: float) -> None:
        """At a Warmup: the live learning settings become the spec nodes build the epoch with."""
        if self.spec_config.run_spec() == self.config.run_spec():
            return
        old = self.spec_config
        self.spec_config = self.config
        self.spec_version += 1
        self.coordinator.reconfigure(now, train_set_size=self.config.learning.train_set_size)
        rows = changed_keys(old, self.config)
        self.events.write(
            now,
            "spec_changed",
            f"run spec v{self.spec_version} for this epoch: "
            + ", ".join(f"{k} {o} -> {n}" for k, o, n in rows),
            version=self.spec_version,
        )

    def _save_bans(self) -> None:
        """Rewrite the latest checkpoint's state with the current bans (none yet: the first
        checkpoint will carry them)."""
        if self._stored is None:
            return
        try:
            state = self.history.state(self.coordinator)
            self._stored = record_state(self.checkpoint_dir, self._stored, state)
        except (OSError, CheckpointError) as exc:
            self.events.write(self.clock(), "checkpoint", f"bans not saved: {exc}", level="error")

    def _operator(
        self, what: str, call: Callable[[float], Outcome], who: str = "console"
    ) -> Outcome:
        now = self.clock()
        outcome = call(now)
        by = "" if who == "console" else f" ({who})"
        if outcome.rejection is None:
            self.events.write(now, "operator", f"operator{by}: {what}", who=who)
        else:
            self.events.write(
                now,
                "operator",
                f"operator{by}: {what} refused: {outcome.rejection.reason}",
                level="warning",
                who=who,
            )
        self._after(outcome, now)
        return outcome

    # ----------------------------------------------------------------- local nodes

    def watch_children(self, reap: Callable[[], list[Any]]) -> None:
        """Reap the local nodes this console spawned (``LocalNodes.reap``) after coordinator
        calls and ticks (at most every ``REAP_INTERVAL`` s), logging each exit with its code
        (3: refused or removed by the console)."""
        last = [float("-inf")]

        def check() -> None:
            now = self.clock()
            if now - last[0] < REAP_INTERVAL:
                return
            last[0] = now
            for node in reap():
                code = node.process.poll()
                meaning = ExitCode(code).help if code in set(ExitCode) else "killed or crashed"
                self.events.write(
                    self.clock(),
                    "process",
                    f"{node.name} exited with code {code} ({meaning})",
                    level="info" if code in (0, ExitCode.REJECTED) else "warning",
                    node=node.name,
                    code=code,
                )

        self.listeners.append(check)
