"""The run header: run id, address, state with its countdown, epoch / round / total."""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from console.app.cells import phase_line
from console.record.view import ConsoleView


class RunHeader(Widget):
    """The run's fields, packed into as many lines as the width needs (two on a wide terminal):
    a field is never cut, so the last one is still there at 80 columns."""

    DEFAULT_CSS = """
    RunHeader {
        height: auto;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._view: ConsoleView | None = None
        self._text = Text()

    def show(self, view: ConsoleView) -> None:
        before = self._lines(self.content_size.width)
        self._view = view
        text = self._lines(self.content_size.width)
        if text == before and self._text == text:
            return
        self._text = text
        self.refresh(layout=text.plain.count("\n") != before.plain.count("\n"))

    def _lines(self, width: int) -> Text:
        return Text() if self._view is None else render_header(self._view, width)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(2, self._lines(width).plain.count("\n") + 1)

    def render(self) -> Text:
        return self._lines(self.content_size.width)


Field = list[tuple[str, str]]  # one field of the header: styled pieces kept on one line


def render_header(view: ConsoleView, width: int = 0) -> Text:
    """The header's text; ``width`` > 0 packs its fields into lines no wider (0: two lines)."""
    run = view.run
    replay = view.notes.get("replay")
    top: list[Field] = [
        [(f" REPLAY {replay} ", "bold reverse yellow")] if replay else [("fl-console", "bold")],
        [("run ", ""), (run.run_id, "bold cyan")],
        [("control ", ""), (view.address or "not bound", "cyan")],
        [("seq ", "dim"), (str(view.seq), "dim")],
    ]
    if view.rejected_messages:
        top.append([(f"{view.rejected_messages} rejected messages", "yellow")])
    if view.delta is not None:  # [privacy] dp: the worst epsilon any node has spent
        spent = "·" if view.epsilon is None else f"{view.epsilon:.2f}"
        top.append([("ε ", "dim"), (spent, "bold magenta"), (f" at δ {view.delta:g}", "dim")])
    for key, value in sorted(view.notes.items()):
        if key != "replay":
            top.append([(f"{key}: ", "dim"), (value, "")])
    phase = [[(text, str(style))] for text, style in phase_line(run)]
    return Text("\n").join([*_pack(top, width, "  "), *_pack(phase, width, "")])


def _pack(fields: list[Field], width: int, gap: str) -> list[Text]:
    """Fields into lines of at most ``width`` cells (0: one line); a field that starts a line
    other than the first loses its leading separator (spaces and "·")."""
    lines: list[Text] = []
    line = Text()
    for field in fields:
        piece = Text.assemble(*field)
        joined = Text(gap) + piece if line.plain else piece
        if line.plain and width > 0 and line.cell_len + joined.cell_len > width:
            lines.append(line)
            stripped = piece.plain.lstrip(" ·")
            piece = piece[len(piece.plain) - len(stripped) :]
            line = piece
        else:
            line = line + joined if line.plain else piece
    lines.append(line)
    return lines
