"""How long jobs report progress: model loading as (fraction, message), experiments as (message, fraction or None)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # loading: (fraction 0..1, message)
SweepLog = Callable[[str, float | None], None]  # lab sweeps: (message, fraction 0..1, or None when unknown)
