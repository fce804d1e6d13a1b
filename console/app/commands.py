"""The operator's commands in the command palette (ctrl+p): the same actions as the keys.

A command is offered only while its action applies (``ConsoleApp.command_allowed``), so the
palette never lists "resume" for a running run, or operator actions during a replay.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from console.app.app import ConsoleApp

# action, palette name, help text
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("pause", "Pause the run", "Pause now, or after the epoch's Cooldown if a round is running"),
    ("resume", "Resume the run", "Leave Paused and wait for members again"),
    ("kick", "Kick the selected client", "Remove (or ban) the client under the cursor; asks first"),
    ("settings", "Settings", "Every data.toml setting with its help; change one live"),
    ("end_phase", "End the current phase now", "Act as if the phase's deadline were reached"),
    ("replay_toggle", "Replay: play / pause", "Play the recorded run, or stop playing"),
    ("replay_step(1)", "Replay: step forward", "Show the next recorded view"),
    ("replay_step(-1)", "Replay: step back", "Show the previous recorded view"),
    ("replay_seek(0)", "Replay: go to start", "Show the first recorded view"),
    ("replay_seek(-1)", "Replay: go to end", "Show the last recorded view"),
    ("help", "Show the keys", "List every key the console answers to"),
    ("quit", "Quit", "Stop the spawned nodes and the server, then exit"),
)


class OperatorCommands(Provider):
    def _available(self) -> list[tuple[str, str, str]]:
        app: ConsoleApp = self.app  # type: ignore[assignment]
        out = []
        for action, name, help_text in COMMANDS:
            bare = action.split("(", 1)[0]
            if app.command_allowed(bare):
                out.append((action, name, help_text))
        return out

    def _run(self, action: str) -> None:
        self.app.call_later(self.app.run_action, action)

    async def discover(self) -> Hits:
        for action, name, help_text in self._available():
            yield DiscoveryHit(name, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action, name, help_text in self._available():
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(name), partial(self._run, action), help=help_text
                )
