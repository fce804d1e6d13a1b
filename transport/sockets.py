"""The one place sockets are made, and the helpers that move messages over them.

Every socket gets ``linger=0`` (closing never blocks on a gone peer) and ``MAXMSGSIZE`` (libzmq
drops a peer that sends a bigger frame; the codec's :class:`~transport.codec.Limits` cap the
frame count and the total). Control sockets default to 64 MiB, model-gossip sockets to 1 GiB
(at most 2 GiB) with small high-water marks, because HWMs count messages, not bytes.
Works with ``zmq.Context`` and ``zmq.asyncio.Context`` alike: the socket's type follows the
context's.

CURVE: pass a :class:`CurveConfig`. Binding sockets become CURVE servers, connecting sockets
CURVE clients; with an ``allowlist`` a ZAP handler (pyzmq's thread authenticator, which serves
sync and asyncio contexts alike) admits only the listed client keys. Call :meth:`close`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.thread import ThreadAuthenticator

from transport.codec import encode
from transport.fields import check_node_id
from transport.messages import Message

CONTROL_MAX_BYTES = 64 << 20
MODEL_MAX_BYTES = 1 << 30
MODEL_MAX_BYTES_CAP = 2 << 30
MODEL_HWM = 4

Context = zmq.Context | zmq.asyncio.Context


class PeerUnreachable(ConnectionError):
    """ROUTER_MANDATORY: the routing id names no connected peer (it left, or never came)."""

    def __init__(self, identity: bytes) -> None:
        super().__init__(f"no connected peer {identity!r:.80}")
        self.identity = identity


@dataclass(frozen=True)
class CurveConfig:
    """CURVE keys, Z85-encoded (40 bytes each), as ``zmq.curve_keypair()`` returns them.

    The binding side needs ``server_public`` and ``server_secret``; a connecting side needs
    ``server_public`` (the server it trusts) and its own ``client_public``/``client_secret``.
    ``allowlist``: the client public keys a server admits; ``None`` admits any key (traffic is
    still encrypted, but anyone who knows the server key may connect).
    """

    server_public: bytes
    server_secret: bytes | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    allowlist: frozenset[bytes] | None = None


class _Allowlist:
    """pyzmq's CURVE credentials provider: admit only listed Z85 public keys."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class SocketFactory:
    """Make sockets with safe options. One factory per context when CURVE has an allowlist."""

    def __init__(
        self,
        context: Context,
        *,
        security: CurveConfig | None = None,
        control_max_bytes: int = CONTROL_MAX_BYTES,
        model_max_bytes: int = MODEL_MAX_BYTES,
        model_hwm: int = MODEL_HWM,
    ) -> None:
        if not 0 < model_max_bytes <= MODEL_MAX_BYTES_CAP:
            raise ValueError(f"model_max_bytes must be in 1..{MODEL_MAX_BYTES_CAP}")
        if control_max_bytes <= 0 or model_hwm <= 0:
            raise ValueError("control_max_bytes and model_hwm must be positive")
        if security is not None and not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE support")
        self.context = context
        self.security = security
        self.control_max_bytes = control_max_bytes
        self.model_max_bytes = model_max_bytes
        self.model_hwm = model_hwm
        self._auth: ThreadAuthenticator | None = None

    # ------------------------------------------------------------------ control sockets

    def router(
        self,
        bind: str,
        *,
        mandatory: bool = True,
        handover: bool = True,
        max_bytes: int | None = None,
    ) -> zmq.Socket:
        """A bound ROUTER. ``mandatory``: sending to an unknown peer raises (see send_to)."""
        return self._bound(
            zmq.ROUTER,
            bind,
            max_bytes or self.control_max_bytes,
            {zmq.ROUTER_MANDATORY: int(mandatory), zmq.ROUTER_HANDOVER: int(handover)},
        )

    def dealer(
        self, identity: str, connect: str, *, immediate: bool = True, max_bytes: int | None = None
    ) -> zmq.Socket:
        """A DEALER whose routing id is ``identity`` (a node id), connected to ``connect``.

        ``immediate``: nothing is queued while the connection is down, so a node that comes
        back does not flood the console with stale heartbeats; a send then waits until the
        connection is up, so bound it (``asyncio.wait_for``, or ``flags=zmq.NOBLOCK``).
        """
        return self._connected(
            zmq.DEALER,
            connect,
            max_bytes or self.control_max_bytes,
            {zmq.ROUTING_ID: check_node_id(identity).encode(), zmq.IMMEDIATE: int(immediate)},
        )

    def pub(self, bind: str) -> zmq.Socket:
        return self._bound(zmq.PUB, bind, self.control_max_bytes, {})

    def sub(self, connect: str) -> zmq.Socket:
        """A SUB subscribed to everything."""
        return self._connected(zmq.SUB, connect, self.control_max_bytes, {zmq.SUBSCRIBE: b""})

    # ------------------------------------------------------------------ model gossip

    def model_router(self, bind: str) -> zmq.Socket:
        """A node's gossip ROUTER: bounded HWMs, mandatory routing, big MAXMSGSIZE."""
        hwm = {zmq.SNDHWM: self.model_hwm, zmq.RCVHWM: self.model_hwm}
        opts = {zmq.ROUTER_MANDATORY: 1, zmq.ROUTER_HANDOVER: 1, **hwm}
        return self._bound(zmq.ROUTER, bind, self.model_max_bytes, opts)

    def model_dealer(self, identity: str, connect: str) -> zmq.Socket:
        """A DEALER that pushes models to one peer's gossip ROUTER (IMMEDIATE, bounded HWMs)."""
        opts = {
            zmq.ROUTING_ID: check_node_id(identity).encode(),
            zmq.IMMEDIATE: 1,
            zmq.SNDHWM: self.model_hwm,
            zmq.RCVHWM: self.model_hwm,
        }
        return self._connected(zmq.DEALER, connect, self.model_max_bytes, opts)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the ZAP authenticator, if any. Sockets belong to their callers."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> SocketFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _make(self, kind: int, max_bytes: int, opts: dict[int, Any], server: bool) -> zmq.Socket:
        sock = self.context.socket(kind)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
            for opt, value in opts.items():
                sock.setsockopt(opt, value)
            if self.security is not None:
                self._secure(sock, server)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _bound(self, kind: int, bind: str, max_bytes: int, opts: dict[int, Any]) -> zmq.Socket:
        sock = self._make(kind, max_bytes, opts, server=True)
        try:
            sock.bind(bind)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _connected(
        self, kind: int, connect: str, max_bytes: int, opts: dict[int, Any]
    ) -> zmq.Socket:
        sock = self._make(kind, max_bytes, opts, server=False)
        try:
            sock.connect(connect)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _secure(self, sock: zmq.Socket, server: bool) -> None:
        sec = self.security
        assert sec is not None
        if server:
            if sec.server_secret is None:
                raise ValueError("CURVE: a binding socket needs server_secret")
            if sec.allowlist is not None and self._auth is None:
                auth = ThreadAuthenticator(self.context)  # type: ignore[arg-type]
                auth.start()
                auth.configure_curve_callback("*", credentials_provider=_Allowlist(sec.allowlist))
                self._auth = auth
            sock.curve_secretkey = sec.server_secret
            sock.curve_publickey = sec.server_public
            sock.curve_server = True
        else:
            if sec.client_public is None or sec.client_secret is None:
                raise ValueError("CURVE: a connecting socket needs client_public and client_secret")
            sock.curve_secretkey = sec.client_secret
            sock.curve_publickey = sec.client_public
            sock.curve_serverkey = sec.server_public


# ----------------------------------------------------------------------------- helpers


def endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket last bound or connected to: the real port after binding port 0."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "[::]", "::"})


def connectable(announced: str, via: str) -> str:
    """``announced`` as a peer can connect to it.

    A socket bound on every interface reports ``tcp://0.0.0.0:PORT``; a peer on another machine
    must use the address it already reaches that machine at: the host of ``via`` (e.g. the
    console's control endpoint). Any other endpoint is returned unchanged.
    """
    scheme, sep, rest = announced.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or host not in WILDCARD_HOSTS:
        return announced
    via_host = via.partition("://")[2].rpartition(":")[0]
    if not via_host or via_host in WILDCARD_HOSTS:
        via_host = "127.0.0.1"
    return f"{scheme}://{via_host}:{port}"


def _size(frames: list[bytes | memoryview]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


async def send(sock: zmq.asyncio.Socket, msg: Message) -> int:
    """Send ``msg`` zero-copy; returns the bytes sent."""
    frames = encode(msg)
    await sock.send_multipart(frames, copy=False)
    return _size(frames)


def send_sync(sock: zmq.Socket, msg: Message, flags: int = 0) -> int:
    frames = encode(msg)
    sock.send_multipart(frames, flags=flags, copy=False)
    return _size(frames)


async def send_to(sock: zmq.asyncio.Socket, identity: bytes | str, msg: Message) -> int:
    """ROUTER send to one peer; raises :class:`PeerUnreachable` for an unknown routing id."""
    ident = identity.encode() if isinstance(identity, str) else identity
    frames = encode(msg)
    try:
        await sock.send_multipart([ident, *frames], copy=False)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EHOSTUNREACH:
            raise PeerUnreachable(ident) from exc
        raise
    return _size(frames)


def send_to_sync(sock: zmq.Socket, identity: bytes | str, msg: Message, flags: int = 0) -> int:
    ident = identity.encode() if isinstance(identity, str) else identity
    frames = encode(msg)
    try:
        sock.send_multipart([ident, *frames], flags=flags, copy=False)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EHOSTUNREACH:
            raise PeerUnreachable(ident) from exc
        raise
    return _size(frames)


async def recv(sock: zmq.asyncio.Socket) -> list[zmq.Frame]:
    """One message's frames, zero-copy (decode them with transport.codec.decode)."""
    return await sock.recv_multipart(copy=False)


def recv_sync(sock: zmq.Socket, timeout_ms: int | None = None) -> list[zmq.Frame] | None:
    """One message's frames, or None when ``timeout_ms`` passes first (None: wait forever)."""
    if timeout_ms is not None and not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv_multipart(copy=False)


async def recv_from(sock: zmq.asyncio.Socket) -> tuple[bytes, list[zmq.Frame]]:
    """ROUTER receive: (sender routing id, the message's frames)."""
    frames = await sock.recv_multipart(copy=False)
    return frames[0].bytes, frames[1:]


def recv_from_sync(
    sock: zmq.Socket, timeout_ms: int | None = None
) -> tuple[bytes, list[zmq.Frame]] | None:
    frames = recv_sync(sock, timeout_ms)
    if frames is None:
        return None
    return frames[0].bytes, frames[1:]
