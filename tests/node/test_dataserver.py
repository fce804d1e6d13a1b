"""The data server ([data] serve = true): who gets a shard, what it holds, and who is refused.

The socket tests run the data server's sockets in-process on an asyncio loop, following a
test PUB that plays the console; one test runs the real process the console starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
import torch
import zmq
import zmq.asyncio

from console.server.spawn import DataServerError, start_data_server
from node.data import Dataset, load_dataset, shard
from node.datafetch import (
    DataFetchError,
    data_endpoint,
    fetch_shard,
    request_data,
    served_data,
)
from node.dataserver import DataRequests, DataServer
from tests.factories import run_snapshot
from transport import messages as m
from transport.codec import decode, encode
from transport.flood import FloodGuard
from transport.spec import DataSpec, RunSpec
from transport.state import ClientStatus, ClientView, RunSnapshot, RunState
from transport.tensors import TensorPayload

torch.set_num_threads(1)
T = TypeVar("T")

SPEC = RunSpec(
    run_id="serve-test",
    seed=7,
    data=DataSpec(
        source="synthetic", samples=400, features=6, classes=3, partition="iid", serve=True
    ),
)
MEMBERS = ("node-0", "node-1")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(SPEC.data, seed=SPEC.seed, base_dir=None)


def snapshot(
    state: RunState = RunState.WARMUP, epoch: int = 1, run_id: str = SPEC.run_id
) -> RunSnapshot:
    active = state is not RunState.WAITING_FOR_MEMBERS
    status = ClientStatus.ACTIVE if active else ClientStatus.PENDING
    clients = tuple(ClientView(id=c, status=status) for c in MEMBERS)
    return run_snapshot(
        run_id=run_id,
        state=state,
        epoch=epoch,
        total_rounds=3,
        rounds_per_epoch=3,
        clients=(*clients, ClientView(id="node-9", status=ClientStatus.PENDING)),
    )


def request(node_id: str, epoch: int = 1) -> list[bytes | memoryview]:
    return encode(m.DataRequest(node_id=node_id, epoch=epoch))


# ----------------------------------------------------------------------------- sockets


class Console:
    """Plays the console's state PUB: publishes the current snapshot every 20 ms."""

    def __init__(self, context: zmq.asyncio.Context, snap: RunSnapshot) -> None:
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind("tcp://127.0.0.1:0")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.snap = snap
        self.seq = 0

    async def run(self) -> None:
        while True:
            self.seq += 1
            update = m.StateUpdate(seq=self.seq, snapshot=self.snap.to_dict())
            await self.pub.send_multipart(encode(update))
            await asyncio.sleep(0.02)


@asynccontextmanager
async def serving(
    dataset: Dataset, snap: RunSnapshot
) -> AsyncIterator[tuple[DataServer, Console, zmq.asyncio.Context]]:
    context = zmq.asyncio.Context()
    console = Console(context, snap)
    publishing = asyncio.create_task(console.run())
    service = DataServer(context, state_endpoint=console.endpoint, bind="tcp://127.0.0.1:0")
    service.start(DataRequests(SPEC, dataset))
    try:
        await asyncio.wait_for(service.following.wait(), 5.0)
        yield service, console, context
    finally:
        publishing.cancel()
        await service.close()
        console.pub.close(linger=0)
        context.destroy(linger=0)


def run(scenario: Callable[[], T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 30.0))  # type: ignore[arg-type]


def test_members_get_their_own_disjoint_shards_and_the_held_out_split(dataset: Dataset) -> None:
    async def scenario() -> list:
        async with serving(dataset, snapshot()) as (service, _, context):
            target = lambda: (service.endpoint, 1)  # noqa: E731
            return [await fetch_shard(target, node, context=context) for node in MEMBERS]

    served = run(scenario)
    rows = []
    for k, data in enumerate(served):
        local = shard(dataset, k, len(MEMBERS), SPEC.data, SPEC.seed)
        assert torch.equal(data.shard.x, local.x) and torch.equal(data.shard.y, local.y)
        assert torch.equal(data.dataset.x_test, dataset.x_test)
        assert torch.equal(data.dataset.y_test, dataset.y_test)
        assert (data.dataset.features, data.dataset.classes) == (6, 3)
        rows.append({tuple(r.tolist()) for r in data.shard.x})
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    assert sum(len(r) for r in rows) == dataset.x_train.shape[0]


def test_non_member_and_wrong_epoch_are_refused_and_counted(dataset: Dataset) -> None:
    async def scenario() -> tuple[m.Message | None, m.Message | None, int]:
        async with serving(dataset, snapshot(epoch=1)) as (service, _, context):
            outsider = await request_data(context, service.endpoint, "node-9", 1, timeout=5.0)
            stale = await request_data(context, service.endpoint, "node-0", 0, timeout=5.0)
            return outsider, stale, service.server.stats.rejected

    outsider, stale, rejected = run(scenario)
    assert isinstance(outsider, m.Error) and outsider.code == "not_member"
    assert "node-9" in outsider.reason
    assert isinstance(stale, m.Error) and stale.code == "wrong_state"
    assert "not this epoch" in stale.reason
    assert rejected == 2


def test_a_flooding_stranger_is_rate_limited_and_members_still_get_their_shard(
    dataset: Dataset,
) -> None:
    limit = 20

    async def scenario() -> tuple[list[m.Message], m.Message | None, int]:
        async with serving(dataset, snapshot(epoch=1)) as (service, _, context):
            assert service.server is not None
            service.server.flood = FloodGuard(limit=limit, backoff=30.0)
            stranger = context.socket(zmq.DEALER)
            stranger.linger = 0
            stranger.setsockopt(zmq.ROUTING_ID, b"stranger")
            stranger.connect(service.endpoint)
            try:
                for _ in range(500):
                    await stranger.send_multipart([b"garbage"])
                replies = []
                while await stranger.poll(1000, zmq.POLLIN):
                    replies.append(decode(await stranger.recv_multipart()))
            finally:
                stranger.close(linger=0)
            member = await request_data(context, service.endpoint, "node-0", 1, timeout=5.0)
            return replies, member, service.server.flood.dropped

    replies, member, dropped = run(scenario)
    codes = [r.code for r in replies if isinstance(r, m.Error)]
    assert len(codes) == len(replies) == limit + 1
    assert codes[-1] == "rate_limited" and set(codes[:-1]) == {"malformed"}
    assert dropped == 500 - limit - 1
    assert isinstance(member, m.DataReply) and member.epoch == 1


def test_fetch_retries_until_the_data_server_sees_the_epoch(dataset: Dataset) -> None:
    async def scenario() -> tuple[int, int]:
        async with serving(dataset, snapshot(RunState.WAITING_FOR_MEMBERS)) as (
            service,
            console,
            context,
        ):
            fetching = asyncio.create_task(
                fetch_shard(lambda: (service.endpoint, 1), "node-1", context=context)
            )
            await asyncio.sleep(0.3)  # the node saw Warmup before the data server did
            assert not fetching.done()
            console.snap = snapshot(RunState.WARMUP)
            data = await fetching
            return data.shard.samples, service.server.stats.by_code["unavailable"]

    samples, unavailable = run(scenario)
    assert samples == shard(dataset, 1, 2, SPEC.data, SPEC.seed).samples
    assert unavailable >= 1


def test_fetch_gives_up_with_the_reason_when_refused_for_good(dataset: Dataset) -> None:
    async def scenario() -> None:
        async with serving(dataset, snapshot()) as (service, _, context):
            await fetch_shard(
                lambda: (service.endpoint, 1), "node-9", attempts=3, budget=2.0, context=context
            )

    with pytest.raises(DataFetchError, match="not_member"):
        run(scenario)


# ----------------------------------------------------------------------------- no sockets


def test_before_any_epoch_the_answer_is_unavailable(dataset: Dataset) -> None:
    server = DataRequests(SPEC, dataset)
    first = server.answer("node-0", request("node-0"))
    server.observe(snapshot(RunState.WAITING_FOR_MEMBERS))
    waiting = server.answer("node-0", request("node-0"))
    assert isinstance(first, m.Error) and first.code == "unavailable"
    assert isinstance(waiting, m.Error) and waiting.code == "unavailable"
    server.observe(snapshot(RunState.FINISHED))
    finished = server.answer("node-0", request("node-0"))
    assert isinstance(finished, m.Error) and finished.code == "unavailable"
    assert server.stats.rejected == 3 and server.stats.served == 0


def test_other_runs_broadcasts_are_ignored(dataset: Dataset) -> None:
    server = DataRequests(SPEC, dataset)
    server.observe(snapshot(run_id="another-run"))
    reply = server.answer("node-0", request("node-0"))
    assert isinstance(reply, m.Error) and reply.code == "unavailable"


def test_a_request_in_another_nodes_name_is_malformed(dataset: Dataset) -> None:
    server = DataRequests(SPEC, dataset)
    server.observe(snapshot())
    reply = server.answer("node-1", request("node-0"))
    junk = server.answer("node-1", [b"not json"])
    assert isinstance(reply, m.Error) and reply.code == "malformed"
    assert isinstance(junk, m.Error) and junk.code == "malformed"


def test_served_digits_keep_their_image_shape_and_all_classes() -> None:
    spec = msgspec.structs.replace(
        SPEC, data=DataSpec(source="digits", partition="dirichlet", alpha=0.1, serve=True)
    )
    digits = load_dataset(spec.data, seed=spec.seed, base_dir=None)
    server = DataRequests(spec, digits)
    server.observe(snapshot())
    reply = server.answer("node-0", request("node-0"))
    assert isinstance(reply, m.DataReply)
    served = served_data(reply)
    assert served.dataset.image_shape == (8, 8) and served.dataset.features == 64
    assert served.dataset.classes == 10
    local = shard(digits, 0, 2, spec.data, spec.seed)
    assert torch.equal(served.shard.x, local.x)


def test_the_data_address_comes_from_the_broadcast_and_a_wildcard_takes_the_consoles_host() -> None:
    announced = msgspec.structs.replace(snapshot(), data_server="tcp://0.0.0.0:7001")
    assert data_endpoint(SPEC, announced, "tcp://10.1.2.3:5556") == "tcp://10.1.2.3:7001"
    from_join = msgspec.structs.replace(SPEC, data_endpoint="tcp://192.168.0.9:7002")
    assert data_endpoint(from_join, snapshot(), "tcp://10.1.2.3:5556") == "tcp://192.168.0.9:7002"
    assert data_endpoint(SPEC, None, "tcp://127.0.0.1:5556") == ""


def _payload(name: str, t: torch.Tensor) -> TensorPayload:
    from node.weights import to_payloads

    return to_payloads({name: t})[0]


@pytest.mark.parametrize(
    ("y", "y_test", "match"),
    [
        (torch.zeros(4), torch.zeros(2, dtype=torch.int64), "y is float32"),
        (torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), "one label"),
        (torch.full((4,), 5, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), "0..2"),
    ],
)
def test_a_reply_that_does_not_hold_together_is_refused(
    y: torch.Tensor, y_test: torch.Tensor, match: str
) -> None:
    reply = m.DataReply(
        epoch=1,
        classes=3,
        tensors=(
            _payload("x", torch.zeros(4, 6)),
            _payload("y", y),
            _payload("x_test", torch.zeros(2, 6)),
            _payload("y_test", y_test),
        ),
    )
    with pytest.raises(DataFetchError, match=match):
        served_data(reply)


# ----------------------------------------------------------------------------- the process


@pytest.mark.slow
def test_the_console_starts_serves_and_stops_the_real_data_server(tmp_path: Path) -> None:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    stop = threading.Event()

    def publish() -> None:  # the console's broadcast (the server only says ready once following)
        seq = 0
        while not stop.wait(0.05):
            seq += 1
            pub.send_multipart(encode(m.StateUpdate(seq=seq, snapshot=snapshot().to_dict())))

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    process = start_data_server(
        SPEC,
        state_endpoint=pub.getsockopt_string(zmq.LAST_ENDPOINT),
        bind="tcp://127.0.0.1:0",
        log_dir=tmp_path,
    )
    try:
        address = process.wait_ready(timeout=60)

        async def fetch() -> int:
            return (await fetch_shard(lambda: (address, 1), "node-0")).shard.samples

        assert asyncio.run(fetch()) == SPEC.data.samples // 2
        # A second server on the same port says why it cannot start.
        clash = start_data_server(
            SPEC, state_endpoint="tcp://127.0.0.1:1", bind=address, log_dir=tmp_path / "clash"
        )
        try:
            with pytest.raises(DataServerError, match="exited"):
                clash.wait_ready(timeout=60)
        finally:
            clash.stop()
    finally:
        process.stop()
        stop.set()
        publisher.join(5)
        pub.close(linger=0)
        context.term()
    assert process.process is not None and process.process.returncode == 0
    log = (tmp_path / "dataserver.log").read_text()
    assert "served node-0 its shard" in log and "served 1 shards" in log
