"""A DataTable kept in step with a list of keyed rows: only changed cells are written.

Rows keep their keys across refreshes (``update_cell``, never ``clear()``), so the cursor and
the scroll position stay where the operator left them and nothing flickers. Rows come in the
order they should be shown; the table re-sorts only when a row was added or removed out of
that order.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist, RowKey

from console.app.cells import Cell

ColumnSpec = tuple[str, str, int | None, bool]  # key, label, width, right-aligned


class KeyedTable(DataTable[Text]):
    """A row-cursor table whose rows are ``(key, cells)``; the first cell's text is the key."""

    def __init__(self, columns: Sequence[ColumnSpec], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._specs = tuple(columns)
        self._right = tuple(spec[3] for spec in self._specs)
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []
        self.cells_written = 0  # for the benchmark: how many cells the last sync wrote

    def on_mount(self) -> None:
        for key, label, width, right in self._specs:
            header = Text(label, justify="right" if right else "left")
            self.add_column(header, key=key, width=width)

    @property
    def cursor_key(self) -> str | None:
        if not self._order or self.cursor_row < 0:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except (CellDoesNotExist, RowDoesNotExist):
            return None

    def _text(self, index: int, cell: Cell) -> Text:
        text, style = cell
        return Text(
            text,
            style=style,
            justify="right" if self._right[index] else "left",
            no_wrap=True,
            overflow="ellipsis",
        )

    def sync(self, rows: Sequence[tuple[str, tuple[Cell, ...]]]) -> int:
        """Make the table show ``rows``; returns how many cells it wrote."""
        written = 0
        keep = self.cursor_key
        incoming = {key for key, _ in rows}
        stale = [key for key in self._order if key not in incoming]
        for key in stale:
            self.remove_row(key)
            del self._cells[key]
        added: list[str] = []
        changes: list[tuple[str, int, Cell]] = []
        columns = [spec[0] for spec in self._specs]
        for key, cells in rows:
            old = self._cells.get(key)
            if old is None:
                self.add_row(*(self._text(i, c) for i, c in enumerate(cells)), key=key)
                written += len(cells)
                added.append(key)
            elif old != cells:
                for i, (before, after) in enumerate(zip(old, cells, strict=True)):
                    if before != after:
                        changes.append((key, i, after))
            self._cells[key] = cells
        self._write(changes)
        written += len(changes)
        order = [key for key, _ in rows]
        moved = False
        if added or stale:
            shown = [key for key in self._order if key in incoming] + added
            if shown != order:
                position = {key: i for i, key in enumerate(order)}
                self.sort(columns[0], key=lambda cell: position.get(cell.plain, 0))
            moved = True
        self._order = order
        if moved and keep is not None and keep in self._cells:
            row = self.get_row_index(keep)
            if row != self.cursor_row:
                self.move_cursor(row=row, scroll=False)
        self.cells_written = written
        return written

    def _write(self, changes: Sequence[tuple[str, int, Cell]]) -> None:
        """``update_cell`` for many cells with one repaint.

        ``DataTable.update_cell`` repaints the whole table once per cell, which is most of
        the cost of a refresh with a thousand changed heartbeats. Fixed-width columns are
        written the way it writes them (the cell into ``_data``, then ``_update_count``
        bumped so the render caches miss); a fit-to-content column goes through
        ``update_cell(update_width=True)`` so the column can grow.
        """
        if not changes:
            return
        data = self._data
        for key, index, cell in changes:
            if self._specs[index][2] is None:
                self.update_cell(
                    key, self._specs[index][0], self._text(index, cell), update_width=True
                )
            else:
                data[RowKey(key)][ColumnKey(self._specs[index][0])] = self._text(index, cell)
        self._update_count += 1
        self.refresh()

    def set_title(self, title: str) -> None:
        if title != self.border_title:  # setting it repaints, even to the same text
            self.border_title = title

    def select_key(self, key: str) -> None:
        if key in self._cells:
            self.move_cursor(row=self.get_row_index(key))

    def is_last_selected(self) -> bool:
        return not self._order or self.cursor_row >= len(self._order) - 1
