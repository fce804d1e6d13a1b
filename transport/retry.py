"""One retry policy: waits that grow to a cap, each with jitter, never past a deadline.

Every place that tries again (a node joining its console, a shard request, a gossip fetch or
push a peer cannot answer yet) declares a :class:`Backoff` and sleeps :func:`pause` between
attempts; Flower's ``retry_invoker`` keeps its policy in one place the same way. Jitter keeps
nodes that failed together from retrying together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    first: float  # seconds before the second attempt
    cap: float  # the longest wait (before jitter); ``cap == first``: a steady poll
    factor: float = 2.0  # each wait is the previous one times this, up to ``cap``
    jitter: float = 0.5  # each wait is drawn from [1 - jitter, 1 + jitter] times the wait

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between attempts, without end: the caller bounds the attempts."""
        uniform = (rng or random).uniform
        delay = self.first
        while True:
            yield delay * uniform(1 - self.jitter, 1 + self.jitter)
            delay = min(delay * self.factor, self.cap)


async def pause(waits: Iterator[float], deadline: float | None = None) -> float:
    """Sleep the next of ``waits``, cut at ``deadline`` (event-loop time); return the sleep."""
    wait = next(waits)
    if deadline is not None:
        wait = min(wait, max(0.0, deadline - asyncio.get_running_loop().time()))
    await asyncio.sleep(wait)
    return wait
