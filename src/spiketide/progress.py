"""The one progress-bar policy: tqdm on stderr, shown only when asked for and stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["bar"]


def bar(total: int | None, desc: str = "", *, enabled: bool = True, unit: str = "batch", leave: bool = False) -> tqdm:
    """A progress bar over `total` units; silent when `enabled` is False or stderr is not a terminal (logs, CI)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
                disable=not (enabled and sys.stderr.isatty()))
