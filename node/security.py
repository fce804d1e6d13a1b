"""A node's CURVE keys: ``fl-node --curve-key NODE.key_secret --server-key CONSOLE.key``.

With them every socket of the node is encrypted and authenticated: its DEALER and SUB to the
console are CURVE clients that trust the console's public key; its gossip ROUTER is a CURVE
server with the node's own key pair; its DEALERs to peers are CURVE clients that trust each
peer's public key.

Peers learn each other's keys from the console's broadcast: the console records, for every
client, the key its connection authenticated with (not a key the node claims), and a node's
gossip ROUTER admits exactly the keys of the run's live clients in the latest broadcast. So a
node admits only peers that the console admitted and that are in the run now, and no node ever
needs the console's allowlist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transport.keys import KeyAllowlist, read_keypair, read_public_key
from transport.sockets import CurveConfig
from transport.state import LIVE_STATUSES, RunSnapshot


@dataclass(frozen=True)
class NodeKeys:
    public: bytes
    secret: bytes
    console: bytes  # the console's public key
    secret_file: Path


def load_node_keys(curve_key: Path, server_key: Path) -> NodeKeys:
    """Read ``--curve-key`` (this node's ``.key_secret``) and ``--server-key`` (the console's
    ``.key``); raises :class:`transport.keys.KeyFileError` saying which file is wrong."""
    public, secret = read_keypair(curve_key)
    return NodeKeys(public, secret, read_public_key(server_key), curve_key)


class NodeSecurity:
    """The node's CURVE settings for its console link and its gossip, kept current with the run."""

    def __init__(self, keys: NodeKeys) -> None:
        self.keys = keys
        self.peers = KeyAllowlist()  # the gossip ROUTER admits these
        self.peer_keys: dict[str, bytes] = {}  # live client id -> its public key

    def console(self) -> CurveConfig:
        """For the DEALER and SUB to the console."""
        k = self.keys
        return CurveConfig(server_public=k.console, client_public=k.public, client_secret=k.secret)

    def gossip(self) -> CurveConfig:
        """For the gossip ROUTER (server: own keys, the run's live keys) and DEALERs to peers
        (client: own keys; each DEALER is given its peer's key as the server key)."""
        k = self.keys
        return CurveConfig(
            server_public=k.public,
            server_secret=k.secret,
            client_public=k.public,
            client_secret=k.secret,
            allowlist=self.peers,
        )

    def follow(self, snapshot: RunSnapshot) -> None:
        """Take the live clients' keys from a broadcast (a ``ConsoleLink.on_snapshot`` callback)."""
        keys = {
            c.id: c.public_key.encode("ascii")
            for c in snapshot.clients
            if c.status in LIVE_STATUSES and c.public_key
        }
        if keys != self.peer_keys:
            self.peer_keys = keys
            self.peers.replace(keys.values())
