"""Hosts and endpoints: the one place that says which hosts are loopback or every interface.

A socket bound on every interface (``0.0.0.0``, ``*``, ``::`` or ``[::]``) reports
``tcp://0.0.0.0:PORT``, which no peer can connect to: a process on this machine uses
loopback (:func:`connect_address`), a peer on another machine the host it already reaches
that machine at (:func:`connectable`, :func:`announced_from`).
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]"})


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface."""
    return host in WILDCARD_HOSTS


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the run on this machine (``localhost``, 127.x, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def endpoint_host(endpoint: str) -> str:
    """The host of ``scheme://host:port`` (IPv6 keeps its brackets), or "" if there is none."""
    return endpoint.partition("://")[2].rpartition(":")[0]


def with_host(endpoint: str, host: str) -> str:
    """``endpoint`` with its host replaced by ``host`` (a bare IPv6 address gets brackets)."""
    scheme, _, rest = endpoint.partition("://")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{rest.rpartition(':')[2]}"


def connectable(announced: str, via: str) -> str:
    """``announced`` as a peer can connect to it.

    A wildcard host becomes the host of ``via`` (the address the peer already reaches that
    machine at, e.g. the console's control endpoint), or loopback where ``via`` has none or is
    a wildcard itself. Any other endpoint is returned unchanged.
    """
    if not is_wildcard(endpoint_host(announced)):
        return announced
    via_host = endpoint_host(via)
    return with_host(announced, LOOPBACK if not via_host or is_wildcard(via_host) else via_host)


def connect_address(endpoint: str) -> str:
    """An endpoint a process on this machine can connect to (a wildcard bind becomes loopback)."""
    return connectable(endpoint, "")


def announced_from(announced: str, peer_address: str) -> str:
    """``announced`` as other peers can connect to it, given the address it was announced from.

    A node whose gossip socket is bound on every interface (``--gossip-host 0.0.0.0``) announces
    ``tcp://0.0.0.0:PORT``, which no peer can use; the console knows where the node's join came
    from (:func:`transport.sockets.peer_address`) and passes that on instead. Any other
    endpoint, or an unknown ``peer_address`` (""), leaves ``announced`` unchanged.
    """
    if not peer_address or not is_wildcard(endpoint_host(announced)):
        return announced
    return with_host(announced, peer_address)
