"""The one plain-text table layout every command prints (and the report's table block): headers, a rule of
dashes, then rows, text columns left-aligned and number columns right-aligned."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """A table of preformatted cells; columns `numeric_from` up to (not including) `numeric_to` hold numbers
    and are right-aligned."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric_from: int = 1
    numeric_to: int | None = None

    def is_numeric(self, column: int) -> bool:
        """Whether a column holds numbers (right-aligned)."""
        end = len(self.headers) if self.numeric_to is None else self.numeric_to
        return self.numeric_from <= column < end


def format_table(table: Table) -> str:
    """A table as aligned plain text for the terminal."""
    widths = [max(len(cell) for cell in column) for column in zip(table.headers, *table.rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if table.is_numeric(index) else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(table.headers), line(["-" * width for width in widths]), *map(line, table.rows)])
