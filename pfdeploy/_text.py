"""Plain-text pieces every command shares: a left-aligned table and lists of positive integers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pfdeploy.errors import PfdeployError


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned plain-text table of `rows` (dicts) restricted to `columns`, with a rule under the header."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def positive_ints(text: str | Sequence[int], what: str, example: str = "1,8,32") -> tuple[int, ...]:
    """'1, 8,32' (or a sequence of integers) -> (1, 8, 32); anything but positive integers is a
    one-line PfdeployError naming the option `what` and an `example`."""
    items = str(text).split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise PfdeployError(f"{what} {text!r}: give comma-separated positive integers, e.g. {example}")
    return values
