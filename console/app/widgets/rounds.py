"""The rounds table (one row per round) and the witnesses of the selected round."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from console.app.cells import (
    ROUND_COLUMNS,
    rate,
    reference_hashes,
    round_cells,
    round_traffic,
    short_hash,
)
from console.app.widgets.table import KeyedTable
from console.record.view import RoundRow


class RoundsTable(KeyedTable):
    """Follows the newest round while the cursor is on the last row; stays put otherwise."""

    DEFAULT_CSS = """
    RoundsTable { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(ROUND_COLUMNS, **kwargs)
        self._rows: dict[str, RoundRow] = {}

    def show(self, rows: Sequence[RoundRow]) -> int:
        follow = self.is_last_selected()
        previous = self._rows
        keyed = []
        for row in rows:
            key = str(row.round)
            cells = self._cells.get(key) if previous.get(key) == row else None
            keyed.append((key, cells if cells is not None else round_cells(row)))
        self._rows = {str(row.round): row for row in rows}
        accepted = sum(1 for row in rows if row.outcome == "accepted")
        self.set_title(f"rounds {accepted} accepted / {len(rows)}")
        written = self.sync(keyed)
        if follow and keyed and self.cursor_key != keyed[-1][0]:
            self.move_cursor(row=len(keyed) - 1)
        return written

    @property
    def selected(self) -> RoundRow | None:
        key = self.cursor_key
        return None if key is None else self._rows.get(key)


class WitnessPanel(Static):
    """Each witness of one round: the hash it attested per trainer, and whether it agrees."""

    DEFAULT_CSS = """
    WitnessPanel { height: auto; max-height: 8; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._shown: RoundRow | None | bool = False

    def show(self, row: RoundRow | None) -> None:
        if row == self._shown:
            return
        self._shown = row
        if row is None:
            self.border_title = "witnesses"
        else:
            title = f"round {row.round} witnesses · quorum {row.quorum} of {row.witnesses_elected}"
            traffic = round_traffic(row)
            title = f"{title} · {traffic}" if traffic else title
            if row.learning_rate is not None:  # the lr column is the first a narrow table drops
                title += f" · lr {rate(row.learning_rate)}"
            self.border_title = title
        self.update(render_witnesses(row))


def render_witnesses(row: RoundRow | None) -> RenderableType:
    if row is None:
        return Text("no round yet", style="dim")
    if not row.witness_rows:
        return Text("no witnesses elected", style="dim")
    reference = reference_hashes(row)
    trainers = sorted({t for w in row.witness_rows for t in w.attested} | set(row.train_set))
    table = Table(box=None, padding=(0, 1), show_edge=False, expand=False, header_style="bold")
    table.add_column("witness", no_wrap=True)
    table.add_column("", no_wrap=True)
    for trainer in trainers:
        style = "green" if trainer in row.accepted else "red" if trainer in row.rejected else ""
        table.add_column(Text(trainer, style=style), no_wrap=True)
    for w in row.witness_rows:
        if not w.reported:
            verdict = Text("waiting", style="yellow")
        elif w.agrees:
            verdict = Text("agrees", style="green")
        else:
            verdict = Text("DISAGREES", style="bold red")
        cells: list[Text] = []
        for trainer in trainers:
            h = w.attested.get(trainer)
            if h is None:
                cells.append(Text("·", style="dim"))
            elif trainer not in reference:
                cells.append(Text(short_hash(h)))
            elif reference[trainer] == h:
                cells.append(Text(short_hash(h), style="green"))
            else:
                cells.append(Text(short_hash(h), style="bold red reverse"))
        table.add_row(Text(w.witness, style="bold"), verdict, *cells)
    return table
