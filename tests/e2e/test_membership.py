"""Membership end to end: joining, late joiners, wrong runs, dropped nodes, console restarts.

The console runs in-process (its own loop thread, real sockets on 127.0.0.1, port 0); nodes
are real ``fl-node`` processes or raw DEALERs speaking the wire protocol by hand.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from tests.e2e.conftest import Consoles, Processes
from tests.e2e.helpers import (
    RawClient,
    ServerThread,
    pending_replies,
    port_of,
    state_changes,
    status_of,
    wait_until,
)
from transport import messages as m
from transport.codec import encode
from transport.state import ClientStatus, RunSnapshot, RunState

HASH = "ab" * 32  # any well-formed model hash: raw members have no model

RawFactory = Callable[[str, str], RawClient]


def _essence(snap: RunSnapshot) -> RunSnapshot:
    """The snapshot without its timestamp: what a rejected request must not change."""
    return msgspec.structs.replace(snap, now=0.0)


def _join_raw_members(console: ServerThread, raw: RawFactory, count: int) -> list[RawClient]:
    members = []
    for i in range(count):
        member = raw(console.endpoints.control, f"member-{i}")
        assert isinstance(member.join(console.config.run_id), m.JoinAck)
        members.append(member)
    return members


def _raw_round_train(console: ServerThread, raw: RawFactory, count: int) -> list[RawClient]:
    """Raw members that join, warm up and vote: the run sits in RoundTrain of round 1."""
    members = _join_raw_members(console, raw, count)
    console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "Warmup")
    ids = [mb.identity for mb in members]
    for member in members:  # vote first: the last warmed_up starts round 1 at once
        vote = m.Vote(node_id=member.identity, round=1, candidates=tuple((i, 1) for i in ids))
        assert isinstance(member.request(vote), m.Ack)
        ack = member.request(m.WarmedUp(node_id=member.identity, epoch=0, model_hash=HASH))
        assert isinstance(ack, m.Ack), ack
    console.wait_for(lambda s: s.state is RunState.ROUND_TRAIN, 5, "RoundTrain")
    return members


# ----------------------------------------------------------------------------- fast: raw wire


def _logged_codes(rejects: list[dict[str, Any]]) -> Counter[str]:
    """Refusals by code in ``reject`` lines: one per line in full, ``refused`` per flood line."""
    tally: Counter[str] = Counter()
    for e in rejects:
        if e.get("code") == "flood":
            tally.update(e.get("refused", {}))
        else:
            tally[e["code"]] += 1
    return tally


def test_rejected_requests_change_nothing_and_get_exactly_one_error_each(
    consoles: Consoles, raw: RawFactory
) -> None:
    console = consoles.start(consoles.config(init_min_clients=2, health_timeout=60.0))
    members = _join_raw_members(console, raw, 2)
    console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "Warmup")
    run_id = console.config.run_id

    def header(**fields: Any) -> list[bytes]:
        return [json.dumps({"v": 1, **fields}).encode()]

    def wire(msg: m.Message) -> list[bytes]:
        return [bytes(f) for f in encode(msg)]

    bad_join = header(type="join", run_id=run_id, node_id="bad id!", gossip_endpoint="tcp://x:1")
    spoofed = m.Join(run_id=run_id, node_id=members[0].identity, gossip_endpoint="tcp://x:1")
    commit = m.Commit(node_id="member-1", round=1, hash=HASH, samples=1, metrics={})
    # (sender identity, frames, expected error code)
    cases: list[tuple[str, list[bytes], str]] = [
        ("noise", [os.urandom(48)], "malformed"),
        ("noise2", [b"\xff\xfe", os.urandom(1000), b""], "malformed"),
        ("empty", [b""], "malformed"),
        ("badid", bad_join, "malformed"),
        ("someone", wire(spoofed), "malformed"),
        ("future", [json.dumps({"v": 99, "type": "heartbeat"}).encode()], "wrong_version"),
        ("replier", wire(m.Ack(ref="join")), "malformed"),
        ("stranger", wire(m.Vote(node_id="stranger", round=1, candidates=())), "not_member"),
        ("member-1", wire(commit), "wrong_state"),  # a member, but a commit in Warmup
    ]
    before = console.snapshot()
    rejected_before = console.call(lambda s: s.rejected_messages)
    lines_before = len(console.events("reject"))
    senders = []
    for identity, frames, _ in cases:
        client = members[1] if identity == "member-1" else raw(console.endpoints.control, identity)
        client.send_frames(frames)
        senders.append(client)
    for client, (identity, _, code) in zip(senders, cases, strict=True):
        reply = client.reply()
        assert isinstance(reply, m.Error), f"{identity}: {reply}"
        assert reply.code == code, f"{identity}: {reply}"
        assert reply.reason.strip(), f"{identity}: an error must say why"
    extra = [c.identity for c in pending_replies(senders, within=0.3)]
    assert extra == [], f"a second reply went to {extra}"
    after = console.snapshot()
    assert _essence(after) == _essence(before)
    assert console.call(lambda s: s.rejected_messages) == rejected_before + len(cases)
    # every refusal is in the event log: in full (a quiet peer's first, a member's) or counted
    # by code in the aggregated line of its peer (flood control), within that line's interval
    expected = Counter(code for *_, code in cases)
    deadline = time.monotonic() + 8.0
    while True:
        logged = _logged_codes(console.events("reject")[lines_before:])
        if all(logged[code] >= n for code, n in expected.items()):
            break
        assert time.monotonic() < deadline, (logged, expected)
        time.sleep(0.1)


def test_late_joiner_gets_the_current_state_in_its_join_ack(
    consoles: Consoles, raw: RawFactory
) -> None:
    console = consoles.start(consoles.config(init_min_clients=2, health_timeout=60.0))
    _raw_round_train(console, raw, 2)

    late = raw(console.endpoints.control, "late-node")
    seq_before = console.call(lambda s: s.seq)
    ack = late.join(console.config.run_id)
    seq_after = console.call(lambda s: s.seq)
    assert isinstance(ack, m.JoinAck), ack
    now = console.snapshot()
    seen = ack.snapshot
    assert seen.state is now.state is RunState.ROUND_TRAIN
    assert (seen.epoch, seen.round) == (now.epoch, now.round) == (0, 1)
    assert status_of(seen, "late-node") is ClientStatus.PENDING  # in its own join reply
    assert status_of(now, "late-node") is ClientStatus.PENDING
    assert ack.state_endpoint == console.endpoints.state
    assert seq_before <= ack.seq <= seq_after  # the broadcast sequence it can follow from


def test_wrong_run_id_is_refused_with_a_reason_naming_both_ids(
    consoles: Consoles, raw: RawFactory
) -> None:
    console = consoles.start(consoles.config(run_id="right-run"))
    client = raw(console.endpoints.control, "intruder")
    client.send(m.Join(run_id="wrong-run", node_id="intruder", gossip_endpoint="tcp://127.0.0.1:9"))
    reply = client.reply()
    assert isinstance(reply, m.Error)
    assert (reply.ref, reply.code) == ("join", "wrong_run_id")
    assert "wrong-run" in reply.reason and "right-run" in reply.reason
    assert console.snapshot().client("intruder") is None


# ----------------------------------------------------------------------------- slow: fl-node


@pytest.mark.slow
def test_fl_nodes_join_and_walk_the_run_from_waiting_through_warmup_to_round_train(
    consoles: Consoles, processes: Processes
) -> None:
    console = consoles.start(consoles.config(init_min_clients=3, total_rounds=1))
    names = ["node-a", "node-b", "node-c"]
    nodes = [processes.node(n, console.endpoints.control, console.config.run_id) for n in names]
    assert console.snapshot().state is RunState.WAITING_FOR_MEMBERS

    snap = console.wait_for(
        lambda s: s.state is not RunState.WAITING_FOR_MEMBERS, 30, "the epoch to start"
    )
    assert {c.id for c in snap.clients} == set(names)
    console.wait_for(lambda s: s.round >= 1, 40, "round 1 to start")
    changes = state_changes(console.events())
    assert changes[:2] == [("WaitingForMembers", "Warmup"), ("Warmup", "RoundTrain")]
    joined = console.events("client_joined")
    assert sorted(e["client_id"] for e in joined) == names
    (epoch,) = [e for e in console.events("epoch_started") if e["epoch"] == 0]
    assert sorted(epoch["clients"]) == names
    first = console.call(lambda s: s.coordinator.rounds[0])
    assert set(first.train_set) <= set(names) and first.train_set
    assert set(first.witnesses) <= set(names) and len(first.witnesses) == 2

    final = console.wait_for(lambda s: s.state is RunState.FINISHED, 40, "the run to finish")
    assert final.accepted_rounds == 1
    assert sorted(c.id for c in final.live_clients) == names  # nobody dropped on the way
    for node in nodes:
        assert node.wait(timeout=15) == 0, node.output()[-2000:]
        assert "Traceback" not in node.output()


@pytest.mark.slow
def test_late_fl_node_is_pending_at_once_and_logs_the_current_state(
    consoles: Consoles, processes: Processes, raw: RawFactory
) -> None:
    console = consoles.start(consoles.config(init_min_clients=2, health_timeout=60.0))
    _raw_round_train(console, raw, 2)

    node = processes.node("late-node", console.endpoints.control, console.config.run_id)
    joined = console.wait_for_event(
        lambda e: e["kind"] == "client_joined" and e["client_id"] == "late-node",
        20,
        "the late node to join",
    )
    snap = console.snapshot()
    assert snap.state is RunState.ROUND_TRAIN
    assert status_of(snap, "late-node") is ClientStatus.PENDING
    # The reply to its join carried RoundTrain: the node logs the state it joined in.
    wait_until(lambda: "(state RoundTrain)" in node.output(), 5, "the node's join log line")
    assert joined["t"] <= snap.now
    assert node.alive


@pytest.mark.slow
def test_fl_node_with_wrong_run_id_exits_3_and_prints_the_reason(
    consoles: Consoles, processes: Processes
) -> None:
    console = consoles.start(consoles.config(run_id="right-run"))
    node = processes.node("wrong-node", console.endpoints.control, "wrong-run")
    assert node.wait(timeout=30) == 3
    output = node.output()
    assert "wrong_run_id" in output and "wrong-run" in output and "right-run" in output
    assert "Traceback" not in output
    assert console.snapshot().client("wrong-node") is None


@pytest.mark.slow
def test_sigkilled_node_is_dropped_within_health_timeout_and_round_does_not_wait_for_it(
    consoles: Consoles, processes: Processes
) -> None:
    health_timeout = 1.5
    config = consoles.config(
        init_min_clients=3,
        total_rounds=1,
        max_round_train_time=60.0,
        health_timeout=health_timeout,
        learning={"local_epochs": 3},
    )
    console = consoles.start(config)
    names = ["node-a", "node-b", "node-c"]
    nodes = {n: processes.node(n, console.endpoints.control, config.run_id) for n in names}

    snap = console.wait_for(lambda s: s.round >= 1, 60, "round 1 to start")
    killed_at = time.monotonic()
    assert snap.current is not None
    # Kill a trainer that is not a witness: witnesses must stop waiting for its model,
    # and trainers must stop pushing theirs to it.
    victims = [t for t in snap.current.train_set if t not in snap.current.witnesses]
    victim = victims[0] if victims else snap.current.train_set[0]
    os.kill(nodes[victim].pid, signal.SIGKILL)
    nodes[victim].wait(timeout=5)

    tick = config.coordinator.heartbeat_interval
    dropped = console.wait_for(
        lambda s: status_of(s, victim) is ClientStatus.DROPPED,
        health_timeout + tick + 2.0,
        f"{victim} to be dropped",
    )
    dropped_after = time.monotonic() - killed_at
    assert dropped_after <= health_timeout + tick + 1.0, dropped_after
    client = dropped.client(victim)
    assert client is not None and client.drop_reason
    assert any(e["client_id"] == victim for e in console.events("client_dropped"))

    ended = console.wait_for(
        lambda s: s.current is not None and s.current.ended is not None,
        20,
        "round 1 to end (60 s is the phase timeout)",
    )
    assert ended.current is not None
    assert ended.current.ended - ended.current.started < 15.0
    assert victim not in ended.current.accepted
    final = console.wait_for(lambda s: s.state is RunState.FINISHED, 30, "the run to finish")
    assert final.accepted_rounds == 1


@pytest.mark.slow
def test_restarted_console_is_rejoined_by_every_node_without_restarting_them(
    consoles: Consoles, processes: Processes
) -> None:
    settings: dict[str, Any] = {"init_min_clients": 3, "rounds_per_epoch": 1, "total_rounds": 6}
    first = consoles.start(consoles.config(**settings))
    names = ["node-a", "node-b", "node-c"]
    nodes = [processes.node(n, first.endpoints.control, first.config.run_id) for n in names]
    first.wait_for(lambda s: s.checkpoint is not None, 60, "the first epoch's checkpoint")
    pids = {n.name: n.pid for n in nodes}
    assert first.call(lambda s: {c: s.records.clients[c].pid for c in names}) == pids

    first.stop()  # the console goes away mid-run, its sockets with it
    time.sleep(1.0)  # down for a while: the nodes' requests go unanswered
    again = consoles.config(
        **settings,
        state_port=port_of(first.endpoints.state),
        control_port=port_of(first.endpoints.control),
    )
    second = consoles.start(again, resume=True)
    assert second.endpoints == first.endpoints
    # A request the old console took with it holds a node's link (and its heartbeats) for
    # the link's request timeout (10 s) before the node looks for the console again.
    second.wait_for(
        lambda s: {c.id for c in s.live_clients} == set(names),
        30,
        "every node to rejoin the restarted console",
    )
    assert second.call(lambda s: {c: s.records.clients[c].pid for c in names}) == pids
    assert all(n.alive and n.pid == pids[n.name] for n in nodes)

    # The resumed run starts its next epoch with the same node processes.
    resumed = second.wait_for_event(
        lambda e: e["kind"] == "epoch_started", 20, "the resumed run's next epoch"
    )
    assert sorted(resumed["clients"]) == names
    assert resumed["epoch"] >= 1
