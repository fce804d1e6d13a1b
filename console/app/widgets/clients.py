"""The clients table: one row per client, keyed by its id, cells updated in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from operator import attrgetter

from console.app.cells import CLIENT_COLUMNS, HEARTBEAT, client_cells, heartbeat_cell
from console.app.widgets.table import KeyedTable
from console.record.view import ClientRow

_all_but_heartbeat = attrgetter(*(f.name for f in fields(ClientRow) if f.name != "heartbeat_age"))


class ClientsTable(KeyedTable):
    DEFAULT_CSS = """
    ClientsTable { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(CLIENT_COLUMNS, **kwargs)
        self._rows: dict[str, ClientRow] = {}

    def show(self, rows: Sequence[ClientRow]) -> int:
        """Render ``rows``. A row equal to last time costs one comparison and no formatting;
        a row whose heartbeat age alone moved (every live row, every refresh) gets only that
        cell formatted again."""
        previous = self._rows
        keyed = []
        for row in rows:
            before = previous.get(row.id)
            cells = self._cells.get(row.id) if before is not None else None
            if cells is None:
                cells = client_cells(row)
            elif before != row:
                if _all_but_heartbeat(before) == _all_but_heartbeat(row):
                    cells = (
                        *cells[:HEARTBEAT],
                        heartbeat_cell(row.heartbeat_age),
                        *cells[HEARTBEAT + 1 :],
                    )
                else:
                    cells = client_cells(row)
            keyed.append((row.id, cells))
        self._rows = {row.id: row for row in rows}
        live = sum(1 for row in rows if row.status in ("pending", "active"))
        self.set_title(f"clients {live} live / {len(rows)}")
        return self.sync(keyed)

    @property
    def selected(self) -> ClientRow | None:
        key = self.cursor_key
        return None if key is None else self._rows.get(key)
