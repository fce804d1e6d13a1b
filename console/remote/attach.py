"""``fl-console attach data.toml``: the console's own screen for a run another console serves.

:class:`AttachBackend` is a backend of :class:`console.app.app.ConsoleApp` (the same app and
widgets as the console itself): the run's state comes from the console's state broadcast (a
SUB, so phase changes show at once), the rows the broadcast does not carry (clients, rounds,
witnesses, the log) from a ``view_request`` every ``interval`` seconds. Operator keys call
``fl-console ctl``'s requests; they are shown only when the console says this connection may
act (an operator key with CURVE, loopback without). Quitting closes the sockets: the run goes
on, and so do its nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from console.record.replay import view_from_dict
from console.record.view import ConsoleView, RoundRow
from console.remote.client import (
    DEFAULT_TIMEOUT,
    ClientKeyError,
    ConsoleClient,
    NoAnswer,
    Target,
    client_curve,
    target_from_config,
)
from transport import messages as m
from transport.codec import DecodeError, decode
from transport.exit_codes import ExitCode, exit_code_help
from transport.fields import ErrorCode
from transport.keys import KeyFileError
from transport.state import RunSnapshot

log = logging.getLogger(__name__)

VIEW_INTERVAL = 0.5  # seconds between two view requests
# A view request asks only for the rows of the latest rounds (older rows are settled), and
# for every row once in a while, so that a late change to an older row shows too.
RECENT_ROUNDS = 4
FULL_EVERY = 20


class AttachError(RuntimeError):
    """The console could not be attached to; ``exit_code`` says why (unreachable, refused)."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str


@dataclass(frozen=True)
class Answer:
    """What an operator key did: ``rejection`` None (done, ``message`` says what) or why not."""

    message: str = ""
    rejection: Refusal | None = None


class AttachBackend:
    """A console running elsewhere, as the app sees it; see the module docstring."""

    leaves_run = True  # quitting leaves the run alone (the app's help says so)
    operator_actions = frozenset({"pause", "resume", "end_phase", "kick"})  # the keys it offers

    def __init__(
        self,
        target: Target,
        *,
        interval: float = VIEW_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.operable = False  # until the console says this connection may act
        self.refusal = ""
        self.client: ConsoleClient | None = None
        self._view: ConsoleView | None = None
        self._rows: dict[int, RoundRow] = {}  # round -> its row, as last received
        self._requests = 0
        self._trouble = ""  # why the rows are stale ("" while the console answers)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle

    async def start_async(self) -> None:
        self.client = ConsoleClient(self.target, timeout=self.timeout)
        try:
            status = await self.client.status()
        except (NoAnswer, DecodeError) as exc:
            raise AttachError(str(exc), ExitCode.UNREACHABLE) from None
        if isinstance(status, m.Error):
            raise AttachError(f"{status.code}: {status.reason}", ExitCode.REJECTED)
        if not isinstance(status, m.OperatorReply):
            raise AttachError(f"unexpected answer {status.TYPE!r}", ExitCode.UNREACHABLE)
        self.operable, self.refusal = status.operator, status.refusal
        if not await self._fetch_view():
            raise AttachError(self._trouble, ExitCode.UNREACHABLE)
        sub = self.client.subscribe(status.state_endpoint)
        self._tasks = [
            asyncio.create_task(self._follow_state(sub), name="attach-state"),
            asyncio.create_task(self._poll_views(), name="attach-views"),
        ]

    async def stop_async(self) -> None:
        """Close this screen's sockets; the run and its console are not touched."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.client is not None:
            self.client.close()
            self.client = None

    # ----------------------------------------------------------------- the view

    def view(self) -> ConsoleView:
        if self._view is None:
            raise RuntimeError("not attached yet")
        return self._view

    def _note(self, view: ConsoleView) -> ConsoleView:
        note = "operator" if self.operable else "read only"
        if self._trouble:
            note = f"{note}; {self._trouble}"
        return replace(view, notes={**view.notes, "attached": note})

    async def _fetch_view(self) -> bool:
        """Ask for the rows; False (and ``_trouble`` says why) when no usable answer came."""
        assert self.client is not None
        full = not self._rows or self._requests % FULL_EVERY == 0
        rounds_from = 0 if full else max(1, max(self._rows) - RECENT_ROUNDS)
        self._requests += 1
        try:
            reply = await self.client.view(rounds_from=rounds_from)
        except (NoAnswer, DecodeError) as exc:
            log.info("view request: %s", exc)
            self._trouble = f"no answer for {self.timeout:g} s"
        else:
            if isinstance(reply, m.ViewReply):
                try:
                    view = view_from_dict(reply.view)
                except (ValueError, TypeError) as exc:
                    self._trouble = f"a view that is not ours: {exc}"
                else:
                    self.operable, self.refusal = reply.operator, reply.refusal
                    self._trouble = ""
                    view = replace(view, rounds=self._merge_rows(view.rounds, reply.rounds_from))
                    held = self._view
                    if held is not None and not _fresher(view.run, view.seq, held):
                        view = replace(view, run=held.run, seq=held.seq)  # the SUB's is newer
                    self._view = self._note(view)
                    return True
            elif isinstance(reply, m.Error):
                self._trouble = f"view refused ({reply.code}: {reply.reason})"
            else:
                self._trouble = f"unexpected answer {reply.TYPE!r}"
        if self._view is not None:
            self._view = self._note(self._view)
        return False

    def _merge_rows(self, rows: tuple[RoundRow, ...], rounds_from: int) -> tuple[RoundRow, ...]:
        """Every round's row: the reply's, over the ones held from before ``rounds_from``."""
        if rounds_from <= 1:
            self._rows = {}
        self._rows.update((row.round, row) for row in rows)
        return tuple(self._rows[r] for r in sorted(self._rows))

    async def _poll_views(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self._fetch_view()

    async def _follow_state(self, sub: object) -> None:
        """Each broadcast's snapshot replaces the view's run state at once."""
        while True:
            frames = await sub.recv_multipart(copy=False)  # type: ignore[attr-defined]
            try:
                msg = decode(frames)
            except DecodeError as exc:
                log.debug("broadcast not decoded: %s", exc)
                continue
            view = self._view
            if (
                isinstance(msg, m.StateUpdate)
                and view is not None
                and _fresher(msg.snapshot, msg.seq, view)
            ):
                self._view = replace(view, run=msg.snapshot, seq=msg.seq)
                if msg.snapshot.state != view.run.state:  # new rows likely: ask for them now
                    self._wake.set()

    # ----------------------------------------------------------------- operator keys

    async def _act(self, verb: str, **how: object) -> Answer:
        if self.client is None:
            return Answer(rejection=Refusal(ErrorCode.UNAVAILABLE, "not attached"))
        try:
            reply = await self.client.act(verb, **how)  # type: ignore[arg-type]
        except (NoAnswer, DecodeError) as exc:
            return Answer(rejection=Refusal(ErrorCode.UNAVAILABLE, str(exc)))
        self._wake.set()  # show the outcome without waiting for the next poll
        if isinstance(reply, m.Error):
            return Answer(rejection=Refusal(reply.code, reply.reason))
        if isinstance(reply, m.OperatorReply):
            return Answer(message=reply.message)
        return Answer(rejection=Refusal(ErrorCode.MALFORMED, f"unexpected {reply.TYPE!r}"))

    async def pause(self) -> Answer:
        return await self._act("pause")

    async def resume(self) -> Answer:
        return await self._act("resume")

    async def end_phase(self) -> Answer:
        return await self._act("end_phase")

    async def kick(self, client_id: str, *, ban: bool = False) -> Answer:
        return await self._act("kick", node=client_id, ban=ban)


def _fresher(snapshot: RunSnapshot, seq: int, than: ConsoleView) -> bool:
    """Whether ``snapshot`` (broadcast as ``seq``) is newer than the one ``than`` shows.

    By the console's clock first: a console restarted at the same address starts its ``seq``
    again, but on one machine its monotonic clock goes on.
    """
    if snapshot.now != than.run.now:
        return snapshot.now > than.run.now
    return seq > than.seq


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-console attach",
        description="Open the console's screen for a run a console (interactive or headless) "
        "already serves, from another terminal or machine. Quitting leaves the run alone. "
        "Operator keys show only where fl-console ctl would be allowed to act.",
        epilog=exit_code_help(ExitCode.OK, ExitCode.USAGE, ExitCode.REJECTED, ExitCode.UNREACHABLE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, nargs="?", help="the data.toml the console runs")
    parser.add_argument("--connect", metavar="ADDRESS", help="the console's control endpoint")
    parser.add_argument("--run-id", metavar="ID", help="the run id (with --connect, no config)")
    parser.add_argument("--key", type=Path, metavar="FILE", help="CURVE: your secret key file")
    parser.add_argument(
        "--server-key", type=Path, metavar="FILE", help="CURVE: the console's public key file"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"wait this long at most for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


def target_of(args: argparse.Namespace) -> Target:
    if args.config is None:
        if args.connect is None or args.run_id is None:
            raise ClientKeyError("give the console's data.toml, or --connect and --run-id")
        curve = client_curve(args.key, args.server_key) if args.key is not None else None
        return Target(control=args.connect, run_id=args.run_id, curve=curve)
    from console.cli import load_or_report

    config = load_or_report(args.config)
    if config is None:
        raise ClientKeyError(f"{args.config}: not a valid config (see above)")
    target = target_from_config(
        config, key=args.key, server_key=args.server_key, connect=args.connect
    )
    if args.run_id is not None:
        target = replace(target, run_id=args.run_id)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    if not args.timeout > 0:
        err.print(f"fl-console attach: --timeout must be > 0 seconds, not {args.timeout:g}")
        return ExitCode.USAGE
    try:
        target = target_of(args)
    except (ClientKeyError, KeyFileError) as exc:
        err.print(f"fl-console attach: {exc}", markup=False)
        return ExitCode.USAGE
    from console.app.app import ConsoleApp

    app = ConsoleApp(AttachBackend(target, timeout=args.timeout))
    app.run()
    return app.return_code or 0
