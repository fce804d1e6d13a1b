"""Driving the console app in a test: on a fixed snapshot, under Textual's pilot at a fixed
terminal size."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual.pilot import Pilot

from console.app.app import ConsoleApp
from console.app.backend import StaticBackend
from console.record.view import ConsoleView


def static_app(view: ConsoleView, *, refuse: str | None = None) -> tuple[StaticBackend, ConsoleApp]:
    """The app on a fixed snapshot (operator calls refused with ``refuse``), no refresh timer."""
    static = StaticBackend(view, refuse=refuse)
    return static, ConsoleApp(static, refresh_hz=0)


def run_console(
    app: ConsoleApp, scenario: Callable[[Pilot], Awaitable[None]], size: tuple[int, int] = (120, 40)
) -> None:
    """Run ``app`` headless at ``size``, let it settle, then play ``scenario`` on it."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await scenario(pilot)

    asyncio.run(main())
