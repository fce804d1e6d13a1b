"""``fl-console ctl data.toml VERB``: act on a running console from a script or another terminal.

Verbs: ``status [--json]``, ``pause``, ``resume``, ``end-phase``, ``kick NODE [--ban]``,
``unban NODE``, ``set SECTION.KEY=VALUE ...``. The console's address and run id come from the
``data.toml`` it runs (or ``--connect``/``--run-id``); with ``[security] curve = true`` the
operator's key pair is ``--key`` and the console's public key ``--server-key`` (default: the
config's ``server_key`` file). Every request waits ``--timeout`` seconds at most. With
``--json`` the result is one JSON object on stdout, whatever happened (Flower's CLI habit):
``{"ok": true, "verb": ..., "message": ..., ...}`` or ``{"ok": false, "code": ..., "reason": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

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
from transport.codec import DecodeError
from transport.exit_codes import ExitCode, exit_code_help
from transport.fields import ErrorCode, MessageError, check_node_id
from transport.keys import KeyFileError

VERBS = {  # command-line verb -> wire verb
    "status": "status",
    "pause": "pause",
    "resume": "resume",
    "end-phase": "end_phase",
    "kick": "kick",
    "unban": "unban",
    "set": "set",
}
SETTING = re.compile(r"\A[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){1,3}\Z")
EXIT_CODES = (
    ExitCode.OK,
    ExitCode.USAGE,
    ExitCode.REJECTED,
    ExitCode.UNREACHABLE,
    ExitCode.DENIED,
)


class Usage(ValueError):
    """Bad arguments: the message says what was wrong and what is allowed."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as one JSON object")
    common.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"wait this long at most for the console's answer (default {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument(
        "--key", type=Path, metavar="FILE", help="CURVE: the operator's secret key file"
    )
    common.add_argument(
        "--server-key",
        type=Path,
        metavar="FILE",
        help="CURVE: the console's public key file (default: the config's server_key)",
    )
    common.add_argument(
        "--connect", metavar="ADDRESS", help="the console's control endpoint (tcp://HOST:PORT)"
    )
    common.add_argument("--run-id", metavar="ID", help="the run id (with --connect, no config)")
    parser = argparse.ArgumentParser(
        prog="fl-console ctl",
        usage="fl-console ctl [data.toml] [options] VERB [ARGS]",
        description="Ask a running fl-console (interactive or headless) for its status, or act "
        "on its run. Acting needs an operator: with [security] curve = true a key listed under "
        "[security] operators, without CURVE a connection from this machine.",
        epilog="data.toml: the config the console runs (its address and run id); without it,\n"
        "give --connect and --run-id.\n\n" + exit_code_help(*EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, parents=[common], description=help)
        for action in sub._actions:  # the verb's copy must not reset what came before it
            if action.dest in {"json", "timeout", "key", "server_key", "connect", "run_id"}:
                action.default = argparse.SUPPRESS
        return sub

    verb("status", "the run's state, round and clients; whether you may act")
    verb("pause", "pause the run (at once while waiting or warming up, else after Cooldown)")
    verb("resume", "resume a paused run")
    verb("end-phase", "end the current phase now, as if its deadline had passed")
    kick = verb("kick", "kick a client out of the run")
    kick.add_argument("node", metavar="NODE", help="the client's id")
    kick.add_argument("--ban", action="store_true", help="and refuse its joins until unbanned")
    unban = verb("unban", "lift a ban")
    unban.add_argument("node", metavar="NODE", help="the client's id")
    setting = verb("set", "change settings (in WaitingForMembers or Paused for the coordinator)")
    setting.add_argument(
        "changes", nargs="+", metavar="SECTION.KEY=VALUE", help="e.g. coordinator.min_clients=3"
    )
    return parser


def parse_changes(items: Sequence[str]) -> dict[str, str]:
    """``SECTION.KEY=VALUE`` arguments as {"section.key": "value"}; :class:`Usage` if bad."""
    changes: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise Usage(f"set: {item!r} is not SECTION.KEY=VALUE (e.g. coordinator.min_clients=3)")
        if not SETTING.match(name):
            raise Usage(f"set: {name!r} is not a SECTION.KEY name (e.g. learning.learning_rate)")
        if name in changes:
            raise Usage(f"set: {name} is given twice")
        changes[name] = value
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    config = _take_config(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (argparse has printed why)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    args.config = config
    as_json = bool(getattr(args, "json", False))

    def fail(code: ExitCode, wire: str, reason: str) -> int:
        if as_json:
            print(json.dumps({"ok": False, "verb": args.verb, "code": wire, "reason": reason}))
        else:
            err.print(f"fl-console ctl: {reason}", markup=False)
        return code

    try:
        target = _target(args)
        request = _request(args)
    except (Usage, ClientKeyError, KeyFileError) as exc:
        return fail(ExitCode.USAGE, "usage", str(exc))
    timeout = getattr(args, "timeout", None)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if not timeout > 0:
        return fail(ExitCode.USAGE, "usage", f"--timeout must be > 0 seconds, not {timeout:g}")
    try:
        reply = asyncio.run(_ask(target, request, timeout))
    except NoAnswer as exc:
        return fail(ExitCode.UNREACHABLE, "unreachable", str(exc))
    except DecodeError as exc:
        return fail(ExitCode.UNREACHABLE, "malformed", f"the console's answer is not ours: {exc}")
    if isinstance(reply, m.Error):
        code = ExitCode.DENIED if reply.code == ErrorCode.NOT_OPERATOR else ExitCode.REJECTED
        reason = f"{args.verb} refused ({reply.code}): {reply.reason}"
        if as_json:
            print(
                json.dumps(
                    {"ok": False, "verb": args.verb, "code": reply.code, "reason": reply.reason}
                )
            )
        else:
            err.print(f"fl-console ctl: {reason}", markup=False)
        return code
    if not isinstance(reply, m.OperatorReply):
        return fail(ExitCode.UNREACHABLE, "malformed", f"unexpected answer {reply.TYPE!r}")
    if as_json:
        print(json.dumps(reply_json(reply)))
    else:
        for line in reply_lines(reply):
            out.print(line, markup=False)
    return ExitCode.OK


WITH_VALUE = frozenset({"--timeout", "--key", "--server-key", "--connect", "--run-id"})


def _take_config(argv: list[str]) -> Path | None:
    """Remove and return the config file: the first positional argument before the verb."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg in VERBS:
            return None
        return Path(argv.pop(i))
    return None


def _target(args: argparse.Namespace) -> Target:
    connect = getattr(args, "connect", None)
    run_id = getattr(args, "run_id", None)
    key, server_key = getattr(args, "key", None), getattr(args, "server_key", None)
    if args.config is None:
        if connect is None or run_id is None:
            raise Usage("give the console's data.toml, or --connect ADDRESS and --run-id ID")
        curve = client_curve(key, server_key) if key is not None else None
        return Target(control=connect, run_id=run_id, curve=curve)
    from console.cli import load_or_report

    config = load_or_report(args.config)
    if config is None:
        raise Usage(f"{args.config}: not a valid config (see above)")
    target = target_from_config(config, key=key, server_key=server_key, connect=connect)
    if run_id is not None:
        target = Target(control=target.control, run_id=run_id, curve=target.curve)
    return target


def _request(args: argparse.Namespace) -> dict[str, Any]:
    verb = VERBS[args.verb]
    request: dict[str, Any] = {"verb": verb}
    if verb in ("kick", "unban"):
        try:
            request["node"] = check_node_id(args.node)
        except MessageError as exc:
            raise Usage(f"{args.verb}: {exc.reason}") from None
        request["ban"] = bool(getattr(args, "ban", False))
    if verb == "set":
        request["changes"] = parse_changes(args.changes)
    return request


async def _ask(target: Target, request: dict[str, Any], timeout: float) -> m.Message:
    async with ConsoleClient(target, timeout=timeout) as client:
        return await client.act(**request)


def reply_json(reply: m.OperatorReply) -> dict[str, Any]:
    data: dict[str, Any] = {"ok": True, **msgspec.to_builtins(reply)}
    data.pop("type", None)
    data.pop("v", None)
    if data.get("snapshot") is None:
        data.pop("snapshot", None)
    return data


def reply_lines(reply: m.OperatorReply) -> list[str]:
    lines = [reply.message]
    for key, old, new in reply.changed:
        lines.append(f"  {key}: {old} -> {new}")
    if reply.snapshot is not None:
        for client in reply.snapshot.clients:
            extra = f" ({client.drop_reason})" if client.drop_reason else ""
            lines.append(f"  {client.id:<24} {client.status}{extra}")
        may = "yes" if reply.operator else f"no: {reply.refusal}"
        lines.append(f"you ({reply.who}) may act: {may}")
    return lines
