"""The settings screen: every data.toml setting, its value and the file's comment; edit one live.

It renders rows the backend gives (:class:`console.config.edit.Setting`) and hands an edit to
the backend's ``set_settings`` (the server checks, writes and applies it); the result's one
line is shown under the table, a refusal included. Escape leaves the edit, then the screen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from console.config.edit import Setting

Apply = Callable[[str, str], tuple[bool, str]]  # (key, value as typed) -> (ok, one line)
_WHEN = {"now": "waiting/paused", "next warmup": "next warmup", "": "restart"}
VALUE_WIDTH = 28  # a longer value (a path, a key list) is cut here; editing shows it whole


def _cell(value: str) -> str:
    return value if len(value) <= VALUE_WIDTH else value[: VALUE_WIDTH - 1] + "…"


class SettingsScreen(ModalScreen[None]):
    """``rows()``: the settings as they are now; ``apply``: change one (see the module doc)."""

    DEFAULT_CSS = """
    SettingsScreen { align: center middle; }
    SettingsScreen > Vertical {
        width: 100; max-width: 100%; height: 90%; border: thick $primary;
        background: $surface; padding: 0 1;
    }
    SettingsScreen #settings-title { text-style: bold; }
    SettingsScreen DataTable { height: 1fr; }
    SettingsScreen #setting-help { height: auto; min-height: 2; color: $text-muted; }
    SettingsScreen Input { display: none; }
    SettingsScreen Input.-editing { display: block; }
    SettingsScreen #setting-result { height: auto; }
    """
    BINDINGS = [Binding("escape", "back", "Close", show=False)]

    def __init__(self, rows: Callable[[], Sequence[Setting]], apply: Apply) -> None:
        super().__init__()
        self._rows = rows
        self._apply = apply
        self._shown: dict[str, Setting] = {}
        self.editing: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("settings (data.toml) - enter edits the selected one", id="settings-title")
            yield DataTable(id="settings-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="setting-help")
            yield Input(id="setting-value")
            yield Static("", id="setting-result")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("setting", key="key")
        table.add_column("value", key="value")
        table.add_column("applies", key="when")
        self.reload()
        table.focus()

    def reload(self) -> None:
        table = self.query_one(DataTable)
        rows = list(self._rows())
        if not table.row_count:
            for s in rows:
                table.add_row(s.key, _cell(s.value), _WHEN[s.live], key=s.key)
        else:
            for s in rows:
                if self._shown.get(s.key) != s:
                    table.update_cell(s.key, "value", _cell(s.value))
        self._shown = {s.key: s for s in rows}
        self._show_help()

    @property
    def selected(self) -> Setting | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._shown.get(str(key))

    def _show_help(self) -> None:
        s = self.selected
        self.query_one("#setting-help", Static).update(s.help if s is not None else "")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_help()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        s = self.selected
        if s is None:
            return
        if not s.live:
            self._result(False, f"{s.key} cannot change while the run is going; edit data.toml")
            return
        box = self.query_one(Input)
        box.value = s.value
        box.add_class("-editing")
        box.focus()
        self.editing = s.key
        self._result(True, f"{s.key}: type the new value (TOML), enter applies, escape leaves")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.editing is None:
            return
        ok, message = self._apply(self.editing, event.value.strip())
        self._result(ok, message)
        if ok:
            self._stop_editing()
            self.reload()

    def _result(self, ok: bool, message: str) -> None:
        style = "green" if ok else "bold red"
        self.query_one("#setting-result", Static).update(Text(message, style=style))

    def _stop_editing(self) -> None:
        self.editing = None
        self.query_one(Input).remove_class("-editing")
        self.query_one(DataTable).focus()

    def action_back(self) -> None:
        if self.editing is not None:
            self._stop_editing()
        else:
            self.dismiss(None)
