"""What the end-to-end tests drive: an in-process console and raw clients (processes are
:class:`tests.e2e.child.Child` s).

Everything binds or connects on 127.0.0.1 with free ports, every wait has a deadline, and
everything started here can be stopped (the fixtures in ``conftest.py`` do it).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq

from console.config import CheckpointConfig, Config, LocalConfig, ServerConfig
from console.server.server import ConsoleServer, Endpoints
from transport import messages as m
from transport.codec import DecodeError, decode, encode
from transport.state import ClientStatus, RunSnapshot

T = TypeVar("T")


# ----------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(poll)


# ----------------------------------------------------------------------------- config


def make_config(
    tmp_path: Path,
    *,
    run_id: str = "e2e-run",
    state_port: int = 0,
    control_port: int = 0,
    learning: dict[str, Any] | None = None,
    **coordinator: Any,
) -> Config:
    """A small, fast run: loopback, port 0 (free ports), checkpoints under ``tmp_path``."""
    base = Config()
    timings: dict[str, Any] = {
        "init_min_clients": 3,
        "min_clients": 2,
        "witness_nodes": 2,
        "waiting_for_members_extra_time": 0.0,
        "warmup_time": 60.0,
        "max_round_train_time": 60.0,
        "round_witness_time": 5.0,
        "cooldown_time": 5.0,
        "rounds_per_epoch": 1,
        "total_rounds": 1,
        "heartbeat_interval": 0.25,
        "health_timeout": 1.5,
    }
    timings.update(coordinator)
    learn = {"train_set_size": 3, "optimizer": "adam", "learning_rate": 0.01}
    learn.update(learning or {})
    return replace(
        base,
        run_id=run_id,
        server=ServerConfig(
            host="127.0.0.1", state_port=state_port, control_port=control_port, data_port=0
        ),
        coordinator=replace(base.coordinator, **timings),
        learning=msgspec.structs.replace(base.learning, **learn),
        local=LocalConfig(spawn=0),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------- console


class ServerThread:
    """A :class:`ConsoleServer` serving on its own asyncio loop in a background thread.

    Reads go through :meth:`call`, which runs on the server's loop, so the test thread never
    sees the coordinator half-way through a request.
    """

    def __init__(self, config: Config, run_dir: Path, *, resume: bool = False) -> None:
        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.server: ConsoleServer | None = None
        self.endpoints = Endpoints("", "")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopped = False

    def start(self) -> Endpoints:
        self._thread.start()

        async def boot() -> Endpoints:
            self.server = ConsoleServer(self.config, run_dir=self.run_dir, resume=self.resume)
            return self.server.start()

        self.endpoints = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self.endpoints

    def call(self, fn: Callable[[ConsoleServer], T], timeout: float = 10.0) -> T:
        """Run ``fn(server)`` on the server's loop and return its result."""
        server = self.server
        assert server is not None, "not started"

        async def on_loop() -> T:
            return fn(server)

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(timeout)

    def snapshot(self) -> RunSnapshot:
        return self.call(lambda s: s.coordinator.snapshot(s.clock()))

    def wait_for(
        self, predicate: Callable[[RunSnapshot], bool], timeout: float, what: str
    ) -> RunSnapshot:
        """The first snapshot (polled every 20 ms) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                clients = {c.id: c.status.value for c in snap.clients}
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}; "
                    f"state {snap.state}, round {snap.round}, clients {clients}"
                )
            time.sleep(0.02)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.run_dir / "events.jsonl", kind)

    def wait_for_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if predicate(e)), None)

        return wait_until(found, timeout, what, poll=0.05)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.server is not None and self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()


def read_events(
    path: Path, kind: str | None = None, *, views: bool = False
) -> list[dict[str, Any]]:
    """The event log's records, optionally of one kind; the console's recorded views only
    with ``views`` (a line being written right now is left for the next read)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if record.get("kind") == "view" and not views:
            continue
        if kind is None or record.get("kind") == kind:
            out.append(record)
    return out


def state_changes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in events if e["kind"] == "state_changed"]


def status_of(snap: RunSnapshot, client_id: str) -> ClientStatus | None:
    client = snap.client(client_id)
    return None if client is None else client.status


# ----------------------------------------------------------------------------- raw client


class RawClient:
    """A bare DEALER on the console's control socket: send frames, read every reply."""

    def __init__(self, context: zmq.Context, endpoint: str, identity: str) -> None:
        self.identity = identity
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, identity.encode())
        self.sock.connect(endpoint)

    def send(self, msg: m.Message) -> None:
        self.sock.send_multipart(encode(msg), copy=False)

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def reply(self, timeout: float = 5.0) -> m.Message:
        """The next reply (fails after ``timeout`` seconds, or if it does not decode)."""
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"{self.identity}: no reply within {timeout}s")
        try:
            return decode(self.sock.recv_multipart(copy=False))
        except DecodeError as exc:  # the console must never send this
            raise AssertionError(f"{self.identity}: undecodable reply: {exc}") from exc

    def request(self, msg: m.Message, timeout: float = 5.0) -> m.Message:
        """Send one request; return its reply."""
        self.send(msg)
        return self.reply(timeout)

    def join(self, run_id: str, gossip_endpoint: str = "tcp://127.0.0.1:9") -> m.Message:
        return self.request(
            m.Join(
                run_id=run_id,
                node_id=self.identity,
                gossip_endpoint=gossip_endpoint,
                pid=os.getpid(),
                host="test",
            )
        )

    def close(self) -> None:
        self.sock.close(linger=0)


def pending_replies(clients: list[RawClient], within: float) -> list[RawClient]:
    """The clients that receive anything more within ``within`` seconds (one shared wait)."""
    poller = zmq.Poller()
    for client in clients:
        poller.register(client.sock, zmq.POLLIN)
    ready = dict(poller.poll(int(within * 1000)))
    return [c for c in clients if c.sock in ready]


class RawClients:
    """Makes :class:`RawClient` s on one context and closes them all."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self._clients: list[RawClient] = []

    def __call__(self, endpoint: str, identity: str) -> RawClient:
        client = RawClient(self.context, endpoint, identity)
        self._clients.append(client)
        return client

    def __iter__(self) -> Iterator[RawClient]:
        return iter(self._clients)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.context.destroy(linger=0)
