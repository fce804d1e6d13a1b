"""The one retry policy: waits grow to a cap, jitter stays in its band, no wait passes a deadline."""

from __future__ import annotations

import asyncio
import itertools
import random

from transport.retry import Backoff, pause


def test_waits_double_up_to_the_cap_without_jitter() -> None:
    waits = Backoff(first=0.1, cap=0.5, jitter=0.0).delays()
    assert [round(w, 6) for w in itertools.islice(waits, 5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_jitter_keeps_each_wait_within_its_band_and_varies_it() -> None:
    policy = Backoff(first=1.0, cap=1.0, jitter=0.5)
    waits = list(itertools.islice(policy.delays(random.Random(7)), 200))
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 100  # nodes that failed together do not retry together
    again = list(itertools.islice(policy.delays(random.Random(7)), 200))
    assert again == waits


def test_a_pause_never_sleeps_past_the_deadline() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        slept = await pause(iter([30.0]), deadline=started + 0.05)
        return slept, loop.time() - started

    slept, took = asyncio.run(main())
    assert slept <= 0.05 and took < 1.0
