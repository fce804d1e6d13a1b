"""The run header: run id, address, state with its countdown, epoch / round / total."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from console.app.cells import phase_line
from console.record.view import ConsoleView


class RunHeader(Widget):
    """Two fixed lines; a change repaints them without a layout pass."""

    DEFAULT_CSS = """
    RunHeader {
        height: 2;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._text = Text()

    def show(self, view: ConsoleView) -> None:
        text = render_header(view)
        if text == self._text:
            return
        self._text = text
        self.refresh()

    def render(self) -> Text:
        return self._text


def render_header(view: ConsoleView) -> Text:
    run = view.run
    replay = view.notes.get("replay")
    top = Text.assemble(
        (f" REPLAY {replay} ", "bold reverse yellow") if replay else ("fl-console", "bold"),
        "  run ",
        (run.run_id, "bold cyan"),
        "  control ",
        (view.address or "not bound", "cyan"),
        ("  seq ", "dim"),
        (str(view.seq), "dim"),
    )
    if view.rejected_messages:
        top.append(f"  {view.rejected_messages} rejected messages", style="yellow")
    if view.throttled_peers:
        peers = ", ".join(view.throttled_peers[:2]) + ("…" if len(view.throttled_peers) > 2 else "")
        top.append(f"  rate-limited: {peers}", style="bold red")
    if view.dropped_messages:
        top.append(f"  {view.dropped_messages} dropped", style="yellow")
    for key, value in sorted(view.notes.items()):
        if key != "replay":
            top.append(f"  {key}: ", style="dim")
            top.append(value)
    return Text("\n").join([top, Text.assemble(*phase_line(run))])
