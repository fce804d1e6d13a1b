"""The operator's connection to a running console: ``fl-console ctl`` and ``fl-console attach``.

A :class:`ConsoleClient` holds a DEALER to the console's control ROUTER (one request at a time,
each answered within ``timeout`` or :class:`NoAnswer`) and, for an attached screen, a SUB to
its state PUB. With ``[security] curve`` both are CURVE clients with the operator's key pair and
the console's public key; a handshake the console refuses is told apart from silence.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from console.config import Config
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.keys import read_keypair, read_public_key
from transport.net import connect_address, connectable
from transport.sockets import CurveConfig, HandshakeWatch, SocketFactory

DEFAULT_TIMEOUT = 5.0  # seconds a request waits for the console's answer
# A view reply carries every round's row and the log's tail: allow a long run's worth.
REPLY_LIMITS = Limits(max_frames=4, max_header_bytes=60 << 20, max_total_bytes=60 << 20)

_HANDSHAKE_HINTS = {
    "refused": "the console refused this operator key (is its public key in [security] "
    "operators of the console's data.toml, or in its authorized keys?)",
    "mechanism": "the console and this client disagree on CURVE (one side has it on)",
    "crypto": "the CURVE handshake failed: --server-key is not this console's public key",
    "failed": "the CURVE handshake failed: --server-key is not this console's public key?",
}


class NoAnswer(ConnectionError):
    """The console did not answer in time (not running, wrong address, or a refused key)."""


class ClientKeyError(ValueError):
    """Operator keys missing or unreadable; the message says which and what to pass."""


@dataclass(frozen=True)
class Target:
    """Where the console is: its control endpoint, run id and (CURVE) the keys to use."""

    control: str
    run_id: str
    curve: CurveConfig | None = None


def target_from_config(
    config: Config,
    *,
    key: Path | None = None,
    server_key: Path | None = None,
    connect: str | None = None,
) -> Target:
    """The console ``data.toml`` describes: its control port (on loopback when it binds every
    interface), its run id, and with ``curve = true`` the operator's key pair (``key``, a
    ``*.key_secret`` file) and the console's public key (``server_key``; default: the
    config's own ``server_key`` file, which holds the public key too)."""
    server = config.server
    control = connect or connect_address(server.endpoint(server.control_port))
    curve = None
    if config.security.curve or key is not None:
        curve = client_curve(key, server_key or config.security.server_key)
    return Target(control=control, run_id=config.run_id, curve=curve)


def client_curve(key: Path | None, server_key: Path | None) -> CurveConfig:
    """The CURVE client config of an operator: its key pair and the console's public key."""
    if key is None:
        raise ClientKeyError(
            "this console uses CURVE: pass --key FILE, the operator's secret key file "
            "(fl-console keygen writes NAME.key_secret; its public key goes in the console's "
            "[security] operators)"
        )
    if server_key is None:
        raise ClientKeyError("pass --server-key FILE, the console's public key file")
    public, secret = read_keypair(key)
    return CurveConfig(
        server_public=read_public_key(server_key), client_public=public, client_secret=secret
    )


class ConsoleClient:
    """Requests to one console; call :meth:`close` at the end (or use ``async with``)."""

    def __init__(self, target: Target, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self.context = zmq.asyncio.Context()
        self.factory = SocketFactory(self.context, security=target.curve)
        self._dealer: zmq.asyncio.Socket | None = None
        self._watch: HandshakeWatch | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- requests

    async def request(self, msg: m.Message) -> m.Message:
        """Send ``msg`` and return the console's reply (``error`` included), or raise
        :class:`NoAnswer` after ``timeout`` seconds; a reply that does not decode raises
        :class:`DecodeError`."""
        async with self._lock:
            dealer = self._connect()
            try:
                async with asyncio.timeout(self.timeout):
                    await dealer.send_multipart(encode(msg), copy=False)
                    frames = await dealer.recv_multipart(copy=False)
            except TimeoutError:
                why = self._handshake_failure()
                self._disconnect()  # a late answer must not be taken for the next one's
                raise NoAnswer(
                    f"no console answered at {self.target.control} within {self.timeout:g} s"
                    + (f": {why}" if why else " (is it running? is this its address?)")
                ) from None
            return decode(frames, REPLY_LIMITS)

    async def status(self) -> m.Message:
        return await self.request(m.OperatorRequest(run_id=self.target.run_id, verb="status"))

    async def act(
        self,
        verb: str,
        *,
        node: str | None = None,
        ban: bool = False,
        changes: dict[str, str] | None = None,
    ) -> m.Message:
        msg = m.OperatorRequest(
            run_id=self.target.run_id, verb=verb, node=node, ban=ban, changes=changes or {}
        )
        return await self.request(msg)

    async def view(self, *, rounds_from: int = 0) -> m.Message:
        return await self.request(m.ViewRequest(run_id=self.target.run_id, rounds_from=rounds_from))

    # ----------------------------------------------------------------- the state broadcast

    def subscribe(self, state_endpoint: str) -> zmq.asyncio.Socket:
        """A SUB to the console's state PUB (``state_endpoint`` as the console bound it)."""
        if self._sub is None:
            self._sub = self.factory.sub(connectable(state_endpoint, self.target.control))
        return self._sub

    # ----------------------------------------------------------------- sockets

    def _connect(self) -> zmq.asyncio.Socket:
        if self._dealer is None:
            identity = f"ctl-{os.getpid()}-{os.urandom(4).hex()}"  # never a node's id
            self._dealer = self.factory.dealer(
                identity, self.target.control, before_connect=self._watch_handshakes
            )
        return self._dealer

    def _watch_handshakes(self, sock: zmq.Socket) -> None:
        if self.target.curve is not None:
            self._watch = HandshakeWatch(sock)

    def _handshake_failure(self) -> str:
        if self._watch is None:
            return ""
        failed = [s.outcome for s in self._watch.drain() if s.outcome != "ok"]
        return _HANDSHAKE_HINTS.get(failed[-1], "") if failed else ""

    def _disconnect(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None

    def close(self) -> None:
        self._disconnect()
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        self.factory.close()
        self.context.destroy(linger=0)


__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientKeyError",
    "ConsoleClient",
    "DecodeError",
    "NoAnswer",
    "Target",
    "client_curve",
    "target_from_config",
]
