"""Which columns a table has, and which of them fit the width it is given.

No Textual here. A table declares its columns in the order they are shown; each has a
``priority``: 0 for a column that is always shown, else its rank when space is short (1 is
kept first). A narrow terminal keeps the always-shown columns and then adds the others,
most important first, while they fit; the rest are left out until the terminal widens
(the operator can still read every figure in the summary, the CSV and a wider replay).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

CELL_PADDING = 1  # DataTable's padding on each side of each cell
FIT_RESERVE = 16  # what a fit-to-content column (the note) is given when space is counted


class Column(NamedTuple):
    key: str
    label: str
    width: int | None  # None: fit the content
    right: bool = False  # right-aligned
    priority: int = 0  # 0: always shown; else kept first when narrow (1), then 2, ...


def column_width(column: Column) -> int:
    """The cells ``column`` takes on screen, padding included."""
    content = column.width if column.width is not None else max(len(column.label), FIT_RESERVE)
    return content + 2 * CELL_PADDING


def columns_that_fit(columns: Sequence[Column], width: int) -> tuple[int, ...]:
    """Indices of the columns to show in ``width`` cells, in their declared order.

    The always-shown columns are kept even when they alone do not fit (the table scrolls);
    ``width <= 0`` (not laid out yet) shows every column.
    """
    if width <= 0:
        return tuple(range(len(columns)))
    shown = {i for i, column in enumerate(columns) if column.priority == 0}
    used = sum(column_width(columns[i]) for i in shown)
    optional = sorted((c.priority, i) for i, c in enumerate(columns) if c.priority > 0)
    for _, i in optional:
        cost = column_width(columns[i])
        if used + cost <= width:
            shown.add(i)
            used += cost
    return tuple(sorted(shown))
