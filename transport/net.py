"""Hosts and endpoints: the one place that says which hosts are loopback or every interface.

A socket bound on every interface reports ``tcp://0.0.0.0:PORT`` (or ``*``, ``::``, ``[::]``),
which no peer can connect to: this machine uses loopback (:func:`connect_address`), a peer
elsewhere the host it already reaches that machine at (:func:`connectable`, :func:`announced_from`).
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]"})


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_HOSTS


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the run on this machine (``localhost``, 127.x, ``::1``)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def endpoint_host(endpoint: str) -> str:
    """The host of ``scheme://host:port`` (IPv6 keeps its brackets), or "" if there is none."""
    return endpoint.partition("://")[2].rpartition(":")[0]


def with_host(endpoint: str, host: str) -> str:
    """``endpoint`` with its host replaced by ``host`` (a bare IPv6 address gets brackets)."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{endpoint.partition('://')[0]}://{host}:{endpoint.rpartition(':')[2]}"


def connectable(announced: str, via: str) -> str:
    """``announced`` with a wildcard host replaced by the host of ``via`` (where the peer reaches
    that machine, e.g. the console's control endpoint), or by loopback where ``via`` has none."""
    if not is_wildcard(endpoint_host(announced)):
        return announced
    via_host = endpoint_host(via)
    return with_host(announced, LOOPBACK if not via_host or is_wildcard(via_host) else via_host)


def connect_address(endpoint: str) -> str:
    """An endpoint a process on this machine can connect to (a wildcard bind becomes loopback)."""
    return connectable(endpoint, "")


def announced_from(announced: str, peer_address: str) -> str:
    """A wildcard ``announced`` (a node's gossip socket on every interface) at the address its
    join came from (:func:`transport.sockets.peer_address`); unchanged when that is unknown."""
    if not peer_address or not is_wildcard(endpoint_host(announced)):
        return announced
    return with_host(announced, peer_address)
