"""What the app talks to: something that has a view and an operator API.

The app never imports zmq. :class:`LiveBackend` wraps the real :class:`ConsoleServer` and the
spawned local nodes (imported lazily, on start); :class:`StaticBackend` serves one fixed
snapshot for snapshot tests and the benchmark; ``console.record.replay.ReplayBackend`` plays a
recorded event log; ``console.remote.attach.AttachBackend`` follows a console running elsewhere
(``fl-console attach``: its operator calls are coroutines, answered over the network, and its
``operable`` says whether that console lets this screen act).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from console.config import Config
from console.config.edit import Setting, settings
from console.coordinator.events import Outcome, Rejection
from console.record.view import ConsoleView
from transport.fields import ErrorCode
from transport.net import connect_address

if TYPE_CHECKING:
    from console.server import ConsoleServer, SettingsResult
    from console.server.spawn import LocalNodes


class ActionResult(Protocol):
    """What an operator call returns: ``rejection`` is None, or says why it was refused."""

    @property
    def rejection(self) -> Any: ...


# What an operator call gives back: the result, or (a remote backend) a coroutine of it.
MaybeLater = ActionResult | Awaitable[ActionResult]


@runtime_checkable
class ConsoleBackend(Protocol):
    """The app's only view of the run. ``start_async``/``stop_async`` are optional."""

    def view(self) -> ConsoleView: ...

    def pause(self) -> MaybeLater: ...

    def resume(self) -> MaybeLater: ...

    def end_phase(self) -> MaybeLater: ...

    def kick(self, client_id: str, *, ban: bool = False) -> MaybeLater: ...


class StaticBackend:
    """A fixed snapshot; operator calls are recorded and succeed (or are refused if told to)."""

    def __init__(self, view: ConsoleView, *, refuse: str | None = None) -> None:
        self._view = view
        self.refuse = refuse
        self.calls: list[tuple[str, ...]] = []

    def view(self) -> ConsoleView:
        return self._view

    def set_view(self, view: ConsoleView) -> None:
        self._view = view

    def _call(self, *what: str) -> Outcome:
        self.calls.append(what)
        if self.refuse is not None:
            return Outcome(rejection=Rejection(ErrorCode.WRONG_STATE, self.refuse))
        return Outcome()

    def pause(self) -> Outcome:
        return self._call("pause")

    def resume(self) -> Outcome:
        return self._call("resume")

    def end_phase(self) -> Outcome:
        return self._call("end_phase")

    def kick(self, client_id: str, *, ban: bool = False) -> Outcome:
        return self._call("kick", client_id, *(("ban",) if ban else ()))


NodesFactory = Callable[[str], "LocalNodes"]  # control endpoint -> the nodes to start


class LiveBackend:
    """The real run: a :class:`ConsoleServer` on the app's loop plus the spawned local nodes.

    ``start_async`` binds the sockets and starts ``spawn`` nodes; ``stop_async`` stops the
    nodes (SIGTERM, then SIGKILL, all reaped) and awaits ``server.stop()``. Both are
    idempotent, so quitting and unmounting can both call ``stop_async``.
    """

    def __init__(
        self,
        config: Config,
        *,
        run_dir: Path,
        spawn: int = 0,
        resume: bool = False,
        clock: Callable[[], float] = time.monotonic,
        nodes_factory: NodesFactory | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.spawn = spawn
        self.resume_run = resume
        self.clock = clock
        self.nodes_factory = nodes_factory
        self.server: ConsoleServer | None = None
        self.nodes: LocalNodes | None = None
        self._stopped = False

    async def start_async(self) -> None:
        from console.server import ConsoleServer
        from console.server.spawn import LocalNodes

        self.server = ConsoleServer(
            self.config, run_dir=self.run_dir, resume=self.resume_run, clock=self.clock
        )
        endpoints = self.server.start()
        control = connect_address(endpoints.control)
        if self.nodes_factory is not None:
            self.nodes = self.nodes_factory(control)
        else:
            self.nodes = LocalNodes(
                run_id=self.config.run_id,
                control_endpoint=control,
                log_dir=self.run_dir / "nodes",
                node_args=self.server.spawn_args,  # [security] curve: each node's fresh keys
            )
        self.server.watch_children(self.nodes.reap)
        if self.spawn:
            self.nodes.start(self.spawn)

    async def stop_async(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.nodes is not None:
            await asyncio.to_thread(self.nodes.stop)
        if self.server is not None:
            await self.server.stop()

    def _server(self) -> ConsoleServer:
        if self.server is None:
            raise RuntimeError("the backend is not started")
        return self.server

    def view(self) -> ConsoleView:
        return self._server().view()

    def pause(self) -> ActionResult:
        return self._server().pause()

    def resume(self) -> ActionResult:
        return self._server().resume()

    def end_phase(self) -> ActionResult:
        return self._server().end_phase()

    def kick(self, client_id: str, *, ban: bool = False) -> ActionResult:
        return self._server().kick(client_id, ban=ban)

    def settings(self) -> list[Setting]:
        """Every data.toml setting with its value now and the file's comment above it."""
        server = self._server()
        return settings(server.config, server.config_file.text or "")

    def set_settings(self, changes: Mapping[str, str]) -> SettingsResult:
        return self._server().set_settings(changes, who="console")
