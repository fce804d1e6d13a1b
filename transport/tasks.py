"""Stopping a side's socket loops: the one shutdown both the console and the nodes use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[object]]) -> None:
    """Cancel every task, then wait for each to end; what they raise while stopping is logged
    at debug level and dropped, because the caller is shutting down and its sockets close next."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - shutting down: nothing left to do about it
            log.debug("%r ended with %r while stopping", task, exc)
