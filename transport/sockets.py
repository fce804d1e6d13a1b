"""The one place sockets are made, and the helpers that move messages over them.

Every socket gets ``linger=0`` (closing never blocks on a gone peer) and ``MAXMSGSIZE`` (libzmq
drops a peer that sends a bigger frame; the codec's :class:`~transport.codec.Limits` cap the
frame count and the total). Control sockets default to 64 MiB, model-gossip sockets to 1 GiB
(at most 2 GiB) with small high-water marks, because HWMs count messages, not bytes.
Works with ``zmq.Context`` and ``zmq.asyncio.Context`` alike: the socket's type follows the
context's.

CURVE: pass a :class:`CurveConfig`. Binding sockets become CURVE servers, connecting sockets
CURVE clients; with an ``allowlist`` a ZAP handler (pyzmq's thread authenticator, which serves
sync and asyncio contexts alike) admits only the listed client keys, and reports each key it
refuses to ``on_refused``. Call :meth:`close`. A CURVE peer's key is on every frame it sends
(:func:`peer_key`); :class:`HandshakeWatch` tells why a handshake failed (a ZMQ-level refusal
is otherwise silent: the socket just never connects).
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Collection
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
    ``allowlist``: the client public keys a server admits, read at every handshake (a
    :class:`transport.keys.KeyAllowlist` may change while serving); ``None`` admits any key
    (traffic is still encrypted, but anyone who knows the server key may connect).
    ``on_refused(address, key)``: called from the ZAP thread for every refused key.
    """

    server_public: bytes
    server_secret: bytes | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    allowlist: Collection[bytes] | None = None
    on_refused: Callable[[str, bytes], None] | None = None


class _Authenticator(ThreadAuthenticator):
    """pyzmq's thread authenticator that admits only allowlisted CURVE keys and reports refusals.

    It is pyzmq's CURVE credentials provider as well (``callback``); the ZAP request's peer
    address is kept while the request is handled, so a refusal can say where it came from.
    """

    def __init__(self, context: Context, config: CurveConfig) -> None:
        super().__init__(context)  # type: ignore[arg-type]
        assert config.allowlist is not None
        self.keys = config.allowlist
        self.on_refused = config.on_refused
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if self.on_refused is not None:
            try:
                self.on_refused(self._address, key)
            except Exception:  # noqa: BLE001 - a reporting bug must not break the ZAP thread
                self.log.exception("on_refused failed")
        return False


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
        self,
        identity: str,
        connect: str,
        *,
        immediate: bool = True,
        max_bytes: int | None = None,
        before_connect: Callable[[zmq.Socket], object] | None = None,
    ) -> zmq.Socket:
        """A DEALER whose routing id is ``identity`` (a node id), connected to ``connect``.

        ``immediate``: nothing is queued while the connection is down, so a node that comes
        back does not flood the console with stale heartbeats; a send then waits until the
        connection is up, so bound it (``asyncio.wait_for``, or ``flags=zmq.NOBLOCK``).
        ``before_connect(sock)``: called just before connecting, e.g. to attach a
        :class:`HandshakeWatch` that must not miss the first handshake.
        """
        return self._connected(
            zmq.DEALER,
            connect,
            max_bytes or self.control_max_bytes,
            {zmq.ROUTING_ID: check_node_id(identity).encode(), zmq.IMMEDIATE: int(immediate)},
            before_connect=before_connect,
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

    def model_dealer(
        self, identity: str, connect: str, *, server_key: bytes | None = None
    ) -> zmq.Socket:
        """A DEALER that pushes models to one peer's gossip ROUTER (IMMEDIATE, bounded HWMs).

        With CURVE, ``server_key`` is that peer's public key (every peer has its own).
        """
        opts = {
            zmq.ROUTING_ID: check_node_id(identity).encode(),
            zmq.IMMEDIATE: 1,
            zmq.SNDHWM: self.model_hwm,
            zmq.RCVHWM: self.model_hwm,
        }
        return self._connected(
            zmq.DEALER, connect, self.model_max_bytes, opts, server_key=server_key
        )

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

    def _make(
        self,
        kind: int,
        max_bytes: int,
        opts: dict[int, Any],
        server: bool,
        server_key: bytes | None = None,
    ) -> zmq.Socket:
        sock = self.context.socket(kind)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
            for opt, value in opts.items():
                sock.setsockopt(opt, value)
            if self.security is not None:
                self._secure(sock, server, server_key)
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
        self,
        kind: int,
        connect: str,
        max_bytes: int,
        opts: dict[int, Any],
        *,
        server_key: bytes | None = None,
        before_connect: Callable[[zmq.Socket], object] | None = None,
    ) -> zmq.Socket:
        sock = self._make(kind, max_bytes, opts, server=False, server_key=server_key)
        try:
            if before_connect is not None:
                before_connect(sock)
            sock.connect(connect)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _secure(self, sock: zmq.Socket, server: bool, server_key: bytes | None = None) -> None:
        sec = self.security
        assert sec is not None
        if server:
            if sec.server_secret is None:
                raise ValueError("CURVE: a binding socket needs server_secret")
            if sec.allowlist is not None and self._auth is None:
                auth = _Authenticator(self.context, sec)
                auth.start()
                auth.configure_curve_callback("*", credentials_provider=auth)
                self._auth = auth
            sock.curve_secretkey = sec.server_secret
            sock.curve_publickey = sec.server_public
            sock.curve_server = True
        else:
            if sec.client_public is None or sec.client_secret is None:
                raise ValueError("CURVE: a connecting socket needs client_public and client_secret")
            sock.curve_secretkey = sec.client_secret
            sock.curve_publickey = sec.client_public
            sock.curve_serverkey = server_key or sec.server_public


# ----------------------------------------------------------------------------- helpers


def endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket last bound or connected to: the real port after binding port 0."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def peer_address(frame: zmq.Frame) -> str:
    """The IP address the peer that sent ``frame`` (``recv(copy=False)``) connected from, or "".

    libzmq's ``Peer-Address`` message property: set for TCP connections, absent otherwise.
    """
    try:
        return frame.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


def peer_key(frame: zmq.Frame) -> str:
    """The Z85 CURVE public key of the peer that sent ``frame`` (``recv(copy=False)``), or "".

    libzmq attaches the ZAP handler's User-Id, which pyzmq's authenticator sets to the client's
    public key, to every frame received over that connection; without ZAP there is none.
    """
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:
        return ""


# ----------------------------------------------------------------------------- handshakes

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True)
class Handshake:
    """One handshake outcome on a watched socket.

    ``outcome``: ``ok``; ``refused`` (the server's ZAP handler said no, ``detail`` is its
    status code); ``mechanism`` (one side uses CURVE, the other does not); ``crypto`` (the
    client does not hold the server's public key, or the keys are broken); ``failed`` (anything
    else; on a client, usually a wrong server key).
    """

    outcome: str
    detail: int = 0


def _handshake(event: int, value: int) -> Handshake:
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return Handshake("ok")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return Handshake("refused", value)
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return Handshake("mechanism", value)
        if value in (zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE):
            return Handshake("crypto", value)
    return Handshake("failed", value)


_WATCH_NUMBERS = itertools.count()


class HandshakeWatch:
    """Follows a socket's handshakes through its monitor; :meth:`drain` never blocks.

    The monitor pipe is a plain (sync) socket of the same context, so this works for sync and
    asyncio sockets alike. Close it before the socket it watches.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        # A fresh name each time: libzmq unbinds a stopped monitor's endpoint asynchronously,
        # and id(self) comes back as soon as the previous watch is freed.
        address = f"inproc://handshake-watch-{next(_WATCH_NUMBERS)}"
        sock.monitor(address, _HANDSHAKE_EVENTS)
        self._pipe = sock.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        self._pipe.linger = 0
        self._pipe.connect(address)

    def drain(self) -> list[Handshake]:
        """The handshakes reported since the last call, oldest first."""
        found: list[Handshake] = []
        if self._pipe.closed:
            return found
        while True:
            try:
                frames = self._pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return found
            if len(frames) >= 1 and len(frames[0]) >= 6:
                event = int.from_bytes(frames[0][:2], "little")
                value = int.from_bytes(frames[0][2:6], "little")
                found.append(_handshake(event, value))

    def close(self) -> None:
        if not self._sock.closed:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self._pipe.close(linger=0)


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
