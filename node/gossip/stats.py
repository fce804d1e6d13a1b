"""What a node's gossip sent, received, refused and fetched (sent to the console with heartbeats)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GossipStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    pushes_sent: int = 0
    pushes_received: int = 0
    duplicates: int = 0  # pushes of an update this node already held (bytes spent for nothing)
    fetches: int = 0  # updates this node fetched because a relay on its path was gone
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    round_bytes: dict[int, list[int]] = field(default_factory=dict)  # round -> [up, down]
    receipts: dict[tuple[int, str], int] = field(default_factory=dict)  # (round, trainer) -> n

    def count(self, round: int, *, up: int = 0, down: int = 0) -> None:
        """Gossip bytes of ``round`` this node sent (``up``) and received (``down``)."""
        pair = self.round_bytes.setdefault(round, [0, 0])
        pair[0] += up
        pair[1] += down
        self.bytes_sent += up
        self.bytes_received += down

    def of_round(self, round: int) -> tuple[int, int]:
        up, down = self.round_bytes.get(round, (0, 0))
        return up, down
