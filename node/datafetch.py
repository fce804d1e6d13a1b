"""A node's side of the data server: fetch this epoch's shard instead of loading the data.

With ``[data] serve = true`` the console runs a data server (``node/dataserver.py``) and
announces its address in every snapshot (``RunSnapshot.data_server``, and the join reply's
``RunSpec.data_endpoint``). In Warmup, :func:`fetch_served_data` sends ``data_request{node_id,
epoch}`` over a DEALER and builds the node's :class:`~node.data.Dataset` (train split = its
shard) and :class:`~node.data.Shard` from the reply's ``x``, ``y``, ``x_test``, ``y_test``.

Every attempt is bounded; refusals that a broadcast racing our request explains
(``unavailable``, ``not_member``, ``wrong_state``, ``wrong_round``: the data server has not
seen the epoch start yet) and timeouts are retried with backoff, re-reading the latest
snapshot for the epoch and the address. Anything else, or a reply whose tensors do not hold
together, raises :class:`DataFetchError`.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import zmq
import zmq.asyncio

from node.data import Dataset, Shard
from node.workflow import NodeContext
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.fields import ErrorCode
from transport.net import connectable
from transport.retry import Backoff, pause
from transport.sockets import MODEL_MAX_BYTES, SocketFactory
from transport.spec import RunSpec
from transport.state import ClientStatus, RunSnapshot
from transport.tensors import TensorPayload

log = logging.getLogger(__name__)

ATTEMPTS = 8
ATTEMPT_TIMEOUT = 10.0  # seconds for one request's reply
BUDGET = 45.0  # seconds for all attempts together
FETCH_BACKOFF = Backoff(first=0.1, cap=2.0)
RETRY_CODES = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.NOT_MEMBER, ErrorCode.WRONG_STATE, ErrorCode.WRONG_ROUND}
)
REPLY_LIMITS = Limits(max_frames=8, max_header_bytes=64 << 10, max_total_bytes=2 << 30)
_NAMES = ("x", "y", "x_test", "y_test")

Target = Callable[[], tuple[str, int]]  # () -> (data server endpoint, epoch), re-read per attempt


class DataFetchError(RuntimeError):
    """The node could not get a usable shard from the data server."""


@dataclass(frozen=True, eq=False)
class ServedData:
    dataset: Dataset  # x_train / y_train: this node's shard
    shard: Shard


def data_endpoint(spec: RunSpec, snap: RunSnapshot | None, console: str) -> str:
    """Where to fetch: the broadcast's address, else the join reply's.

    A wildcard bind (``tcp://0.0.0.0:PORT``) becomes the host we reach the ``console`` at.
    """
    address = (snap.data_server if snap is not None else None) or spec.data_endpoint
    return connectable(address, console) if address else ""


async def fetch_served_data(ctx: NodeContext, snap: RunSnapshot) -> None:
    """Fetch this epoch's shard into ``ctx`` (once per epoch membership, like a local cut)."""
    members = tuple(sorted(c.id for c in snap.clients if c.status is ClientStatus.ACTIVE))
    if ctx.shard is not None and ctx.shard_key == members:
        return

    def target() -> tuple[str, int]:
        latest = ctx.link.latest
        now = latest.snapshot if latest is not None else snap
        return data_endpoint(ctx.spec, now, ctx.link.control_endpoint), now.epoch

    served = await fetch_shard(target, ctx.node_id)
    ctx.dataset, ctx.shard, ctx.shard_key = served.dataset, served.shard, members
    ds = served.dataset
    log.info(
        "got a shard of %d samples (%d held out, %d classes) from the data server %s",
        served.shard.samples,
        ds.y_test.shape[0],
        ds.classes,
        target()[0],
    )


async def fetch_shard(
    target: Target,
    node_id: str,
    *,
    attempts: int = ATTEMPTS,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    budget: float = BUDGET,
    context: zmq.asyncio.Context | None = None,
) -> ServedData:
    """Request the shard, retrying what a retry can fix; :class:`DataFetchError` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    waits = FETCH_BACKOFF.delays()
    why = "no attempt made"
    own = context is None
    zctx = zmq.asyncio.Context() if context is None else context
    try:
        for attempt in range(1, attempts + 1):
            address, epoch = target()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not address or address.endswith(":0"):
                why = "the console has not announced a data server"
            else:
                reply = await request_data(
                    zctx, address, node_id, epoch, timeout=min(attempt_timeout, remaining)
                )
                if isinstance(reply, m.DataReply):
                    return served_data(reply)
                if isinstance(reply, m.Error):
                    why = f"{reply.code}: {reply.reason}"
                    if reply.code not in RETRY_CODES:
                        raise DataFetchError(f"the data server {address} refused us ({why})")
                elif reply is None:
                    why = f"no reply from {address} in {min(attempt_timeout, remaining):.1f}s"
                else:
                    raise DataFetchError(f"the data server {address} sent a {reply.TYPE}")
            log.info("shard request %d/%d for epoch %d: %s", attempt, attempts, epoch, why)
            if attempt == attempts:
                break
            await pause(waits, deadline)
    finally:
        if own:
            zctx.destroy(linger=0)
    raise DataFetchError(f"no shard from the data server after {attempts} attempts ({why})")


async def request_data(
    context: zmq.asyncio.Context, address: str, node_id: str, epoch: int, *, timeout: float
) -> m.Message | None:
    """One ``data_request`` on a fresh DEALER; the decoded reply, or None on timeout."""
    factory = SocketFactory(context)
    sock = factory.dealer(node_id, address, immediate=False, max_bytes=MODEL_MAX_BYTES)
    try:
        await sock.send_multipart(encode(m.DataRequest(node_id=node_id, epoch=epoch)))
        if not await sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        frames = await sock.recv_multipart(copy=False)
    finally:
        sock.close(linger=0)
    try:
        return decode(frames, REPLY_LIMITS)
    except DecodeError as exc:
        raise DataFetchError(f"unreadable reply from the data server: {exc.reason}") from exc


def served_data(reply: m.DataReply) -> ServedData:
    """Check the reply's tensors and build the node's dataset and shard from them."""
    by_name = {t.name: t for t in reply.tensors}
    if sorted(by_name) != sorted(_NAMES):
        raise DataFetchError(f"data reply holds tensors {sorted(by_name)}; expected {list(_NAMES)}")
    x, x_test = by_name["x"], by_name["x_test"]
    y, y_test = by_name["y"], by_name["y_test"]
    for t, dtype in ((x, "float32"), (x_test, "float32"), (y, "int64"), (y_test, "int64")):
        if t.dtype != dtype:
            raise DataFetchError(f"data reply: {t.name} is {t.dtype}, expected {dtype}")
    if len(x.shape) not in (2, 3) or x.shape[1:] != x_test.shape[1:]:
        raise DataFetchError(
            f"data reply: x {list(x.shape)} and x_test {list(x_test.shape)} must be (N, F) or "
            "(N, H, W) with the same trailing dimensions"
        )
    for xs, ys in ((x, y), (x_test, y_test)):
        if len(ys.shape) != 1 or ys.shape[0] != xs.shape[0]:
            raise DataFetchError(
                f"data reply: {ys.name} {list(ys.shape)} must be ({xs.shape[0]},), one label per "
                f"row of {xs.name}"
            )
    image_shape = (x.shape[1], x.shape[2]) if len(x.shape) == 3 else None
    features = x.shape[1] * (x.shape[2] if image_shape else 1)
    xs, xt = _tensor(x, torch.float32), _tensor(x_test, torch.float32)
    ys, yt = _tensor(y, torch.int64), _tensor(y_test, torch.int64)
    for t, name in ((xs, "x"), (xt, "x_test")):
        if not bool(torch.isfinite(t).all()):
            raise DataFetchError(f"data reply: {name} holds NaN or inf")
    top = int(max(int(ys.max()), int(yt.max()))) + 1
    classes = reply.classes or top
    if int(min(int(ys.min()), int(yt.min()))) < 0 or top > classes or classes < 2:
        raise DataFetchError(f"data reply: labels must lie in 0..{classes - 1} with >= 2 classes")
    xs, xt = xs.reshape(xs.shape[0], features), xt.reshape(xt.shape[0], features)
    dataset = Dataset(xs, ys, xt, yt, features, classes, image_shape)
    return ServedData(dataset, Shard(xs, ys))


def _tensor(payload: TensorPayload, dtype: torch.dtype) -> torch.Tensor:
    view = memoryview(payload.data).cast("B")
    with warnings.catch_warnings():
        # frombuffer warns on read-only buffers (zmq frames); the clone is ours to write.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(view, dtype=torch.uint8)
    return raw.clone().view(dtype).reshape(payload.shape)
