"""``[security]`` on the console side: CURVE keys, the node allowlist, refusals the operator sees.

With ``curve = true`` every console socket is a CURVE server with the console's key pair and a
ZAP handler that admits only authorized node keys: the ``*.key`` files of
``authorized_keys``, the ``allowed`` list, and the fresh key pair of each node the console
spawns itself (made at spawn time in a private temporary directory, added to the allowlist in
memory, deleted at the end: nothing to set up for a local run, no secret left behind, and no
authorized key of a remote machine used up).

A refused connection is silent at the ZeroMQ level, so the refusals are reported here: the ZAP
handler's refusals (with the peer's address and key) and the handshakes that fail before it
(a node without CURVE, a node with the wrong console key) go to the event log, throttled, and
are counted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import zmq

from console.config import SecurityConfig
from console.record.eventlog import EventLog
from transport.keys import (
    KeyAllowlist,
    read_key_dir,
    read_keypair,
    short,
    write_keypair,
    write_public_key,
)
from transport.sockets import CurveConfig, HandshakeWatch, SocketFactory

log = logging.getLogger(__name__)

REPEAT_SECONDS = 30.0  # a refusal that keeps coming is logged again at most this often
CONSOLE_KEY_NAME = "console"

# Handshakes that fail before the ZAP handler sees a key, and what they mean. Others ("failed":
# the peer hung up mid-handshake) follow from these or from a refusal, and say nothing new.
_HANDSHAKE_REASONS = {
    "mechanism": "a connection without CURVE was refused "
    "(a node started without --curve-key and --server-key?)",
    "crypto": "a CURVE handshake failed: a node does not hold this console's public key "
    "(check its --server-key)",
}


class Throttle:
    """Say a recurring thing once, then at most every ``every`` seconds with a count."""

    def __init__(self, every: float = REPEAT_SECONDS) -> None:
        self.every = every
        self._last: dict[object, tuple[float, int]] = {}  # key -> (last said, unsaid since)

    def note(self, key: object, now: float) -> int | None:
        """None: stay quiet; else how many earlier occurrences went unsaid (0 the first time)."""
        said = self._last.get(key)
        if said is None or now - said[0] >= self.every:
            self._last[key] = (now, 0)
            return 0 if said is None else said[1]
        self._last[key] = (said[0], said[1] + 1)
        return None


class ConsoleSecurity:
    """The console's CURVE keys and allowlist; one per server. Call :meth:`close` at the end."""

    def __init__(self, config: SecurityConfig, events: EventLog) -> None:
        if config.server_key is None:
            raise ValueError("[security] curve = true needs server_key")
        self.public, self.secret = read_keypair(config.server_key)
        self.events = events
        self.names: dict[bytes, str] = {}  # authorized key -> where it came from
        if config.authorized_keys is not None:
            for file, key in read_key_dir(config.authorized_keys).items():
                self.names.setdefault(key, file.name)
        for i, text in enumerate(config.allowed):
            self.names.setdefault(text.encode("ascii"), f"[security] allowed[{i}]")
        # Operators (fl-console ctl, attach) are admitted too; only they may act.
        self.operators = frozenset(config.operators)
        for i, text in enumerate(config.operators):
            self.names.setdefault(text.encode("ascii"), f"[security] operators[{i}]")
        self.allowlist = KeyAllowlist(self.names)
        self.refused = 0  # connections refused: unlisted keys and failed handshakes
        self.bound: dict[str, str] = {}  # node id -> the key it joined with
        self._refusals = Throttle()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] | None = None
        self._watch: HandshakeWatch | None = None
        self._spawn_dir: Path | None = None

    # ----------------------------------------------------------------- sockets

    def socket_factory(
        self, context: zmq.asyncio.Context, clock: Callable[[], float]
    ) -> SocketFactory:
        """A factory whose sockets are CURVE servers admitting the allowlist (call on the loop)."""
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        curve = CurveConfig(
            server_public=self.public,
            server_secret=self.secret,
            allowlist=self.allowlist,
            on_refused=self._refused_from_zap_thread,
        )
        return SocketFactory(context, security=curve)

    def watch(self, sock: zmq.Socket) -> None:
        """Report the handshakes that fail on ``sock`` before the ZAP handler sees a key."""
        self._watch = HandshakeWatch(sock)

    def poll(self, now: float) -> None:
        """Log the failed handshakes seen since the last call (the server calls it each tick)."""
        if self._watch is None:
            return
        for shake in self._watch.drain():
            if shake.outcome not in _HANDSHAKE_REASONS:  # refusals come with their key from ZAP
                continue
            self.refused += 1
            unsaid = self._refusals.note(shake.outcome, now)
            if unsaid is not None:
                text = _HANDSHAKE_REASONS[shake.outcome] + _again(unsaid)
                self.events.write(now, "reject", text, level="warning", code="handshake")

    def _refused_from_zap_thread(self, address: str, key: bytes) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.refuse, address, key)
        except RuntimeError:  # the loop closed meanwhile: shutting down
            pass

    def refuse(self, address: str, key: bytes, now: float | None = None) -> None:
        """Count and (throttled) log one refused key."""
        if now is None:
            now = self._clock() if self._clock is not None else 0.0
        self.refused += 1
        unsaid = self._refusals.note((address, key), now)
        if unsaid is None:
            return
        text = key.decode("ascii", "replace")
        self.events.write(
            now,
            "reject",
            f"connection from {address or '?'} refused: key {text} is not authorized "
            "(add the node's .key file to [security] authorized_keys, or the key to allowed)"
            + _again(unsaid),
            level="warning",
            code="not_authorized",
            address=address,
            key=text,
        )

    # ----------------------------------------------------------------- who is who

    def check(self, node_id: str, key: str) -> str | None:
        """Why a request from ``node_id`` over a connection with ``key`` is refused, or None."""
        bound = self.bound.get(node_id)
        if bound is None or bound == key:
            return None
        return f"node id {node_id!r} joined with key {short(bound)}, not {short(key)}"

    def joined(self, node_id: str, key: str) -> None:
        self.bound[node_id] = key

    def operator_refusal(self, key: str) -> str | None:
        """Why the connection with ``key`` may not act as an operator, or None if it may."""
        if key in self.operators:
            return None
        return (
            f"key {short(key)} is not one of [security] operators "
            "(add its public key there to let it act; any admitted key may read the status)"
        )

    def name_of(self, key: str) -> str:
        return self.names.get(key.encode("ascii", "replace"), short(key))

    # ----------------------------------------------------------------- spawned nodes

    def spawn_args(self, name: str) -> tuple[str, ...]:
        """``fl-node`` arguments for a node this console spawns: a fresh key pair, allowed."""
        if self._spawn_dir is None:
            self._spawn_dir = Path(tempfile.mkdtemp(prefix="fl-console-keys-"))  # mode 0700
            write_public_key(self._spawn_dir / f"{CONSOLE_KEY_NAME}.key", self.public)
        public_file, secret_file = write_keypair(self._spawn_dir, name)
        key, _ = read_keypair(secret_file)
        self.names[key] = f"spawned {name}"
        self.allowlist.add(key)
        public_file.unlink()
        return (
            "--curve-key",
            str(secret_file),
            "--server-key",
            str(self._spawn_dir / f"{CONSOLE_KEY_NAME}.key"),
        )

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._spawn_dir is not None:
            shutil.rmtree(self._spawn_dir, ignore_errors=True)
            self._spawn_dir = None


def _again(unsaid: int) -> str:
    if not unsaid:
        return ""
    return f" (and {unsaid} more time{'s' if unsaid != 1 else ''} since it was last logged)"
