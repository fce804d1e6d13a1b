"""Loopback and wildcard hosts, and endpoints rewritten so a peer can connect to them."""

from __future__ import annotations

import pytest

from transport.net import announced_from, connect_address, connectable, is_loopback, is_wildcard


@pytest.mark.parametrize(
    ("host", "loopback", "wildcard"),
    [
        *((h, False, True) for h in ("0.0.0.0", "*", "::", "[::]")),
        *((h, True, False) for h in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]")),
        *((h, False, False) for h in ("10.0.0.5", "fd00::3", "[fd00::3]", "example.org", "")),
    ],
)
def test_each_host_is_loopback_wildcard_or_neither(
    host: str, loopback: bool, wildcard: bool
) -> None:
    assert (is_loopback(host), is_wildcard(host)) == (loopback, wildcard)


@pytest.mark.parametrize("bound", ["tcp://0.0.0.0:9", "tcp://*:9", "tcp://[::]:9", "tcp://:::9"])
def test_a_wildcard_bind_is_reached_at_the_peers_host_or_loopback(bound: str) -> None:
    assert connectable(bound, "tcp://10.0.0.5:5556") == "tcp://10.0.0.5:9"
    assert connectable(bound, "tcp://[fd00::3]:5556") == "tcp://[fd00::3]:9"
    assert connectable(bound, "tcp://0.0.0.0:5556") == "tcp://127.0.0.1:9"
    assert connect_address(bound) == "tcp://127.0.0.1:9"


@pytest.mark.parametrize("endpoint", ["tcp://10.0.0.9:9", "tcp://[fd00::9]:9", "ipc:///tmp/s", ""])
def test_an_endpoint_with_a_real_host_is_left_alone(endpoint: str) -> None:
    assert connectable(endpoint, "tcp://10.0.0.5:5556") == endpoint
    assert connect_address(endpoint) == endpoint
    assert announced_from(endpoint, "10.0.0.5") == endpoint


def test_a_wildcard_gossip_endpoint_is_announced_at_the_address_its_join_came_from() -> None:
    assert announced_from("tcp://0.0.0.0:5", "10.213.7.3") == "tcp://10.213.7.3:5"
    assert announced_from("tcp://*:5", "10.213.7.3") == "tcp://10.213.7.3:5"
    assert announced_from("tcp://[::]:5", "fd00::3") == "tcp://[fd00::3]:5"  # IPv6 gets brackets
    assert announced_from("tcp://0.0.0.0:5", "") == "tcp://0.0.0.0:5"  # not TCP: unknown
