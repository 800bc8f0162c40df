"""Markdown tables: the one helper every report, result file and the README's tables are written with."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table"]


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")  # keep one Markdown row per row


def markdown_table(head: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; cells are escaped so that each row stays one row."""
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
