"""Stopping socket loops: every task is cancelled and awaited, whatever it raises."""

from __future__ import annotations

import asyncio

from transport.tasks import cancel_and_wait


def test_every_task_is_cancelled_and_ended_even_one_that_fails_while_stopping() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("socket already closed") from None

    async def scenario() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(forever()), asyncio.create_task(fails_on_cancel())]
        await asyncio.sleep(0)
        await cancel_and_wait(tasks)
        return tasks

    tasks = asyncio.run(scenario())
    assert all(t.done() for t in tasks)
    assert tasks[0].cancelled()
    assert isinstance(tasks[1].exception(), RuntimeError)
