"""Plain-text tables: one aligned markdown-table formatter, and the strategy bench's columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """An aligned markdown table of already formatted cells."""
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(list(header)), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def format_rows(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    """A markdown table of the chosen columns (floats with 3 decimals, None as '-')."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    return markdown_table(cols, [[cell(r.get(c)) for c in cols] for r in rows])


def _fmt(col: str, fmt: str, value: Any) -> str:
    if col == "by_position":  # acceptance at draft positions 1, 2, ... (medusa: heads 1, 2, ...), in percent
        return " ".join(f"{v:.0%}" for v in value)
    return fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The strategy bench's totals, one row per (group, strategy)."""
    cols = [
        ("group", "{}"),
        ("strategy", "{}"),
        ("prompts", "{}"),
        ("tokens", "{}"),
        ("steps", "{}"),
        ("mean_accepted", "{:.2f}"),
        ("tokens_per_step", "{:.2f}"),
        ("nodes_per_step", "{:.1f}"),
        ("acceptance", "{:.1%}"),
        ("tokens_per_s", "{:.2f}"),
        ("speedup", "{:.2f}x"),
        ("c", "{:.2f}"),
        ("identical", "{}"),
        ("by_position", "{}"),
    ]
    if any("engine" in r for r in rows):  # rows of several engines (bench --vllm-url): each says whose it is
        cols.insert(0, ("engine", "{}"))
    cells = [[("-" if not r.get(c) and r.get(c) != 0 else _fmt(c, f, r[c])) for c, f in cols] for r in rows]
    return markdown_table([c for c, _ in cols], cells)
