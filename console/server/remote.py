"""Remote operators on the console's control ROUTER: ``fl-console ctl`` and ``fl-console attach``.

:class:`RemoteRequests` is a base of :class:`~console.server.server.ConsoleServer`, beside
:class:`~console.server.requests.NodeRequests`, whose ``handle`` hands it every ``operator``
and ``view_request`` message. Who may do what:

- reading (``status``, ``view_request``): anyone the control socket admitted (with
  ``[security] curve``, a key the ZAP handler let in; without, anyone who reaches the port);
- acting (every other verb): with CURVE, only the keys of ``[security] operators``; without
  CURVE, only a connection from loopback (libzmq's ``Peer-Address``).

An action calls the server's own operator API (the one the console's keys call), so the event
log names who did it; a refused request is answered ``error`` with its code and why, and the
refusal is logged. No socket is touched here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from console.coordinator import Outcome
from console.record.replay import view_to_dict
from transport import messages as m
from transport.fields import ErrorCode
from transport.keys import short
from transport.net import is_loopback
from transport.state import RunSnapshot, RunState

if TYPE_CHECKING:
    from console.config import Config
    from console.record.eventlog import EventLog
    from console.record.view import ConsoleView
    from console.server.requests import Endpoints
    from console.server.security import ConsoleSecurity
    from console.server.settings import SettingsResult

log = logging.getLogger(__name__)

VIEW_LOG_LINES = 200  # log lines an attached screen gets with each view


class RemoteRequests:
    """The remote operators' side of the console server; see the module docstring."""

    config: Config
    events: EventLog
    security: ConsoleSecurity | None
    endpoints: Endpoints
    seq: int
    clock: Callable[[], float]
    _snapshot: Callable[[float], RunSnapshot]  # NodeRequests': the snapshot nodes get

    # The server's operator API (the console's own keys call it too) and its view: declared
    # here, defined by the server (no stubs: they would shadow the real ones in the MRO).
    pause: Callable[..., Outcome]
    resume: Callable[..., Outcome]
    end_phase: Callable[..., Outcome]
    kick: Callable[..., Outcome]
    unban: Callable[..., Outcome]
    set_settings: Callable[..., SettingsResult]
    view: Callable[..., ConsoleView]

    # ----------------------------------------------------------------- who asks

    def operator_identity(self, key: str, address: str) -> tuple[str, str | None]:
        """(how the log names the asker, why it may not act or None)."""
        if self.security is not None:
            return short(key) if key else "?", self.security.operator_refusal(key)
        who = f"ctl@{address or '?'}"
        if address and is_loopback(address):
            return who, None
        return who, (
            f"without [security] curve, operator requests are taken from this machine only "
            f"(loopback), not from {address or 'an unknown address'}; set curve = true and "
            "list the operator's key under [security] operators to act from elsewhere"
        )

    # ----------------------------------------------------------------- requests

    def remote_request(
        self, msg: m.OperatorRequest | m.ViewRequest, *, key: str = "", address: str = ""
    ) -> m.Message:
        """The one reply to an operator's request (``handle`` calls it)."""
        now = self.clock()
        who, refusal = self.operator_identity(key, address)
        verb = "view" if isinstance(msg, m.ViewRequest) else msg.verb
        if msg.run_id != self.config.run_id:
            return self._refuse(
                now,
                who,
                verb,
                ErrorCode.WRONG_RUN_ID,
                f"this console serves run {self.config.run_id!r}, not {msg.run_id!r}",
                ref=msg.TYPE,
            )
        if isinstance(msg, m.ViewRequest):
            return m.ViewReply(
                seq=self.seq,
                operator=refusal is None,
                refusal=refusal or "",
                view=self.view_data(rounds_from=msg.rounds_from),
                rounds_from=msg.rounds_from,
            )
        if msg.verb == "status":
            return self._reply(msg, now, who, refusal, status_line(self._snapshot(now)))
        if refusal is not None:
            return self._refuse(now, who, verb, ErrorCode.NOT_OPERATOR, refusal)
        if msg.verb == "set":
            return self._set(msg, now, who)
        outcome, what = self._act(msg, who)
        if isinstance(outcome, m.Error):
            return outcome
        if outcome.rejection is not None:  # the server's API logged the refusal already
            return m.Error(
                ref=msg.TYPE, code=outcome.rejection.code, reason=outcome.rejection.reason
            )
        snap = self._snapshot(self.clock())
        return self._reply(msg, now, who, None, f"{what}: {status_line(snap)}")

    def view_data(self, *, rounds_from: int = 0) -> dict[str, Any]:
        """The console's view as an attached screen gets it (the log's recent tail only;
        ``rounds_from``: the rows of the rounds numbered from it only)."""
        view = self.view(rounds_from=rounds_from)
        tail = view.log[-VIEW_LOG_LINES:]
        data = view_to_dict(view, with_log=False)
        data["log"] = [[line.t, line.kind, line.text, line.level] for line in tail]
        return data

    def _act(self, msg: m.OperatorRequest, who: str) -> tuple[Outcome | m.Error, str]:
        if msg.verb == "pause":
            return self.pause(who=who), "pause"
        if msg.verb == "resume":
            return self.resume(who=who), "resume"
        if msg.verb == "end_phase":
            return self.end_phase(who=who), "end phase"
        node = msg.node
        if node is None:
            reason = f"{msg.verb} needs the node's id"
            return self._refuse(self.clock(), who, msg.verb, ErrorCode.MALFORMED, reason), ""
        if msg.verb == "unban":
            return self.unban(node, who=who), f"unban {node}"
        if msg.ban:
            return self.kick(node, ban=True, who=who), f"kick and ban {node}"
        return self.kick(node, who=who), f"kick {node}"

    def _set(self, msg: m.OperatorRequest, now: float, who: str) -> m.Message:
        if not msg.changes:
            reason = "set needs at least one SECTION.KEY=VALUE"
            return self._refuse(now, who, "set", ErrorCode.MALFORMED, reason)
        result = self.set_settings(dict(msg.changes), who=who)
        if not result.ok:  # set_settings logs what it refused
            return m.Error(ref=msg.TYPE, code=ErrorCode.BAD_SETTING, reason=result.message)
        reply = self._reply(msg, now, who, None, result.message)
        changed = tuple((str(k), str(old), str(new)) for k, old, new in result.changed)
        return msgspec.structs.replace(reply, changed=changed)

    def _reply(
        self, msg: m.OperatorRequest, now: float, who: str, refusal: str | None, message: str
    ) -> m.OperatorReply:
        return m.OperatorReply(
            verb=msg.verb,
            message=message,
            who=who,
            operator=refusal is None,
            refusal=refusal or "",
            seq=self.seq,
            state_endpoint=self.endpoints.state,
            snapshot=self._snapshot(now) if msg.verb == "status" else None,
        )

    def _refuse(
        self, now: float, who: str, verb: str, code: str, reason: str, *, ref: str = "operator"
    ) -> m.Error:
        self.events.write(
            now,
            "operator",
            f"operator ({who}): {verb} refused: {reason}",
            level="warning",
            code=code,
            who=who,
        )
        return m.Error(ref=ref, code=code, reason=reason)


def status_line(snap: RunSnapshot) -> str:
    """One line: the run's state, round and clients, as ``ctl status`` prints it."""
    live = len(snap.live_clients)
    text = (
        f"run {snap.run_id}: {snap.state}, epoch {snap.epoch}, round {snap.round} "
        f"({snap.accepted_rounds}/{snap.total_rounds} accepted), "
        f"{live} live client{'s' if live != 1 else ''}"
    )
    if snap.state is RunState.WAITING_FOR_MEMBERS and snap.waiting_for:
        text += f", waiting for {snap.waiting_for} more (init_min_clients {snap.init_min_clients})"
    if snap.pending_pause:
        text += ", pause pending (after Cooldown)"
    return text
