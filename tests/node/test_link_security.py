"""A node's link to a CURVE console: a refused or mismatched handshake says why.

A real CURVE ROUTER on 127.0.0.1 plays the console (it never answers: the handshake is what
is tested); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio

from node.link import ConsoleLink, ConsoleUnreachable, KeyRefused
from transport.keys import KeyAllowlist
from transport.sockets import CurveConfig, SocketFactory, endpoint

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

CONSOLE_PUBLIC, CONSOLE_SECRET = zmq.curve_keypair()


@pytest.fixture
def console() -> Iterator[str]:
    """A CURVE ROUTER that admits no key at all; yields its endpoint."""
    ctx = zmq.Context()
    curve = CurveConfig(CONSOLE_PUBLIC, server_secret=CONSOLE_SECRET, allowlist=KeyAllowlist())
    factory = SocketFactory(ctx, security=curve)
    router = factory.router("tcp://127.0.0.1:0")
    yield endpoint(router)
    router.close(linger=0)
    factory.close()
    ctx.destroy(linger=0)


def join(address: str, security: CurveConfig | None, max_wait: float) -> tuple[Exception, float]:
    async def scenario() -> tuple[Exception, float]:
        ctx = zmq.asyncio.Context()
        link = ConsoleLink(
            node_id="n1",
            run_id="r",
            control_endpoint=address,
            gossip_endpoint="tcp://127.0.0.1:1",
            context=ctx,
            request_timeout=1.5,
            security=security,
        )
        started = time.monotonic()
        try:
            await asyncio.wait_for(link.start(max_wait=max_wait), 20)
        except (KeyRefused, ConsoleUnreachable) as exc:
            return exc, time.monotonic() - started
        finally:
            await link.close(leave=False)
            ctx.destroy(linger=0)
        raise AssertionError("joined a console that admits no key")

    return asyncio.run(scenario())


def node_keys(server: bytes = CONSOLE_PUBLIC) -> CurveConfig:
    public, secret = zmq.curve_keypair()
    return CurveConfig(server, client_public=public, client_secret=secret)


def test_an_unlisted_key_is_refused_at_once_and_the_node_is_told_its_key(console: str) -> None:
    keys = node_keys()

    error, took = join(console, keys, max_wait=30.0)

    assert isinstance(error, KeyRefused)
    assert keys.client_public is not None and keys.client_public.decode() in str(error)
    assert took < 5.0  # not after the join timeout: the refusal is definite


def test_a_node_without_curve_is_told_the_console_probably_uses_it(console: str) -> None:
    error, _ = join(console, None, max_wait=1.0)

    assert isinstance(error, ConsoleUnreachable)
    assert "probably uses CURVE" in str(error) and "--curve-key" in str(error)


def test_a_wrong_console_key_is_named_as_the_likely_cause(console: str) -> None:
    stranger_console, _ = zmq.curve_keypair()

    error, _ = join(console, node_keys(server=stranger_console), max_wait=1.0)

    assert isinstance(error, ConsoleUnreachable)
    assert "is --server-key the console's public key?" in str(error)
