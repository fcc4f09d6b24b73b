"""Reading strategy knobs from GenConfig.options: each getter checks type and range and raises ConfigError naming the knob."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from specviz.core.config import ConfigError


def opt_int(opts: Mapping[str, Any], key: str, default: int, lo: int, hi: int, strategy: str) -> int:
    v = opts.get(key, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(
            f"option {key!r} of strategy {strategy!r} must be a whole number from {lo} to {hi}, got {v!r}"
        )
    return v


def opt_float(opts: Mapping[str, Any], key: str, default: float, lo: float, hi: float, strategy: str) -> float:
    """A number in [lo, hi)."""
    v = opts.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or not lo <= v < hi:
        raise ConfigError(f"option {key!r} of strategy {strategy!r} must be a number >= {lo} and < {hi}, got {v!r}")
    return float(v)


def opt_bool(opts: Mapping[str, Any], key: str, default: bool, strategy: str) -> bool:
    v = opts.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"option {key!r} of strategy {strategy!r} must be true or false, got {v!r}")
    return v


def opt_layers(opts: Mapping[str, Any], key: str, n_layers: int, strategy: str) -> list[int]:
    """A list of distinct layer indices in [0, n_layers), returned sorted."""
    v = opts.get(key, [])
    if isinstance(v, str | bytes) or not isinstance(v, list | tuple):
        raise ConfigError(f"option {key!r} of strategy {strategy!r} must be a list of layer indices, got {v!r}")
    out = []
    for i in v:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers:
            raise ConfigError(
                f"option {key!r} of strategy {strategy!r}: layer indices must be whole numbers from 0 to "
                f"{n_layers - 1} (the model has {n_layers} layers), got {i!r}"
            )
        if i in out:
            raise ConfigError(f"option {key!r} of strategy {strategy!r} lists layer {i} twice")
        out.append(i)
    return sorted(out)
