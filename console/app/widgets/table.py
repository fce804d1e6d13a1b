"""A DataTable kept in step with a list of keyed rows: only changed cells are written.

Rows keep their keys across refreshes (``update_cell``, never ``clear()``), so the cursor and
the scroll position stay where the operator left them and nothing flickers. Rows come in the
order they should be shown; the table re-sorts only when a row was added or removed out of
that order.

A narrow table leaves out its least important columns (``columns_that_fit``): when a resize
changes which columns fit, and only then, the table is built again from the cells it keeps
for every column.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist, RowKey

from console.app.cells import Cell
from console.app.columns import Column, columns_that_fit


class KeyedTable(DataTable[Text]):
    """A row-cursor table whose rows are ``(key, cells)``; the first cell's text is the key."""

    def __init__(self, columns: Sequence[Column], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._specs = tuple(columns)
        self._right = tuple(spec.right for spec in self._specs)
        self._shown = tuple(range(len(self._specs)))  # indices of the columns on screen
        self._cells: dict[str, tuple[Cell, ...]] = {}  # every column's cell, shown or not
        self._order: list[str] = []
        self.cells_written = 0  # for the benchmark: how many cells the last sync wrote

    def on_mount(self) -> None:
        self._shown = columns_that_fit(self._specs, self._width_for_columns())
        self._add_columns()

    def on_resize(self, event: events.Resize) -> None:
        shown = columns_that_fit(self._specs, self._width_for_columns())
        if shown != self._shown:
            self._shown = shown
            self._rebuild()

    @property
    def shown_columns(self) -> tuple[str, ...]:
        """The keys of the columns on screen, in order."""
        return tuple(self._specs[i].key for i in self._shown)

    def _width_for_columns(self) -> int:
        """The content width less a vertical scrollbar's, whether or not one shows (a
        scrollbar that comes and goes must not take a column with it)."""
        return self.size.width - self.styles.scrollbar_size_vertical

    def _add_columns(self) -> None:
        for i in self._shown:
            key, label, width, right, _ = self._specs[i]
            header = Text(label, justify="right" if right else "left")
            self.add_column(header, key=key, width=width)

    def _rebuild(self) -> None:
        """Build the table again with the columns now shown, keeping the cursor's row."""
        keep = self.cursor_key
        self.clear(columns=True)
        self._add_columns()
        for key in self._order:
            self.add_row(*self._row_texts(self._cells[key]), key=key)
        if keep is not None and keep in self._cells:
            self.move_cursor(row=self.get_row_index(keep), scroll=False)

    def _row_texts(self, cells: tuple[Cell, ...]) -> list[Text]:
        return [self._text(i, cells[i]) for i in self._shown]

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
        shown = set(self._shown)  # a hidden column's cells are kept, not written
        for key, cells in rows:
            old = self._cells.get(key)
            if old is None:
                self.add_row(*self._row_texts(cells), key=key)
                written += len(self._shown)
                added.append(key)
            elif old != cells:
                for i, (before, after) in enumerate(zip(old, cells, strict=True)):
                    if before != after and i in shown:
                        changes.append((key, i, after))
            self._cells[key] = cells
        self._write(changes)
        written += len(changes)
        order = [key for key, _ in rows]
        moved = False
        if added or stale:
            kept = [key for key in self._order if key in incoming] + added
            if kept != order:
                position = {key: i for i, key in enumerate(order)}
                self.sort(self._specs[0].key, key=lambda cell: position.get(cell.plain, 0))
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
            if self._specs[index].width is None:
                self.update_cell(
                    key, self._specs[index].key, self._text(index, cell), update_width=True
                )
            else:
                data[RowKey(key)][ColumnKey(self._specs[index].key)] = self._text(index, cell)
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
