"""The progress callback that long jobs (model loading, sweeps) report through: (fraction 0..1, message)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # (fraction 0..1, message)
