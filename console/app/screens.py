"""The modal screens: the keys (help) and the kick confirmation."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from console.record.view import ClientRow

KeyHelp = tuple[str, str]  # (keys, what they do)


class HelpScreen(ModalScreen[None]):
    """Lists the keys the console answers to; escape, ? or f1 closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    HelpScreen #help-title { text-style: bold; margin-bottom: 1; }
    HelpScreen #help-keys { height: auto; }
    HelpScreen #help-hint { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [
        Binding("escape,question_mark,f1", "dismiss", "Close", show=False),
    ]

    def __init__(self, keys: Iterable[KeyHelp], *, title: str = "fl-console keys") -> None:
        super().__init__()
        self._keys = list(keys)
        self._title = title

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for keys, what in self._keys:
            table.add_row(keys, what)
        with Vertical():
            yield Static(self._title, id="help-title")
            yield Static(table, id="help-keys")
            yield Static("escape closes this help", id="help-hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class KickConfirm(ModalScreen[str | None]):
    """Asks before kicking a client: y kicks, b kicks and bans, n or escape cancels (the focus
    starts on Cancel). Dismissed with "kick", "ban" or None."""

    DEFAULT_CSS = """
    KickConfirm { align: center middle; }
    KickConfirm > Vertical {
        width: 76; max-width: 100%; height: auto; border: thick $error; background: $surface;
        padding: 1 2;
    }
    KickConfirm #kick-question { margin-bottom: 1; }
    KickConfirm Horizontal { height: auto; align-horizontal: right; }
    KickConfirm Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("y", "confirm", "Kick", show=False),
        Binding("b", "ban", "Kick and ban", show=False),
        Binding("n,escape", "cancel", "Cancel", show=False),
    ]

    def __init__(self, client: ClientRow) -> None:
        super().__init__()
        self.client = client

    def compose(self) -> ComposeResult:
        client = self.client
        question = Text.assemble(
            "Kick ",
            (client.id, "bold"),
            f" ({client.address or 'no address'})?\n\n",
            "It is removed from the run at once and its node exits; a round it trains or "
            "witnesses carries on without it. A ban also refuses its joins, after a restart "
            "too, until it is unbanned.",
        )
        with Vertical():
            yield Static(question, id="kick-question")
            with Horizontal():
                yield Button("Cancel (n)", id="cancel", variant="default")
                yield Button("Kick (y)", id="kick", variant="error")
                yield Button("Kick and ban (b)", id="ban", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id if event.button.id in ("kick", "ban") else None)

    def action_confirm(self) -> None:
        self.dismiss("kick")

    def action_ban(self) -> None:
        self.dismiss("ban")

    def action_cancel(self) -> None:
        self.dismiss(None)
