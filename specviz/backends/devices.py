"""Where a model runs: the device and dtype a preset asks for, or the best this machine has; a device this machine
cannot give is a ConfigError that says so."""

from __future__ import annotations

import torch

from specviz.core.config import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    """auto: CUDA where there is one, else the CPU; or the device asked for, checked before anything is loaded."""
    if not requested or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {requested!r}: use auto, cpu or cuda (cuda:N for one of several GPUs)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} asked for, but this torch sees no CUDA GPU: use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {requested!r} is not supported: use auto, cpu or cuda")
    return dev


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on CUDA; float32 on CPU, where bf16 prefill measured about 4x slower."""
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ConfigError(f"unknown dtype {requested!r}; known: {', '.join(DTYPES)}, auto")
        return DTYPES[requested]
    return torch.bfloat16 if device.type == "cuda" else torch.float32
