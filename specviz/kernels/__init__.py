"""Our float32 few-row linear kernel (small_linear.cpp), built once with the local C++ compiler on first use, and the
module that uses it for decode and verification passes; anything else (prefill, no compiler, no AVX2) falls back."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("small_linear.cpp")
MAX_ROWS = 16  # above this a pass is compute-bound (prefill) and BLAS wins


@functools.cache
def small_linear_op() -> tuple[object | None, str]:
    """(the compiled op or None, why not). SPECVIZ_KERNEL=0 turns it off."""
    if os.environ.get("SPECVIZ_KERNEL", "1") == "0":
        return None, "off (SPECVIZ_KERNEL=0)"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, f"CPU capability {torch.backends.cpu.get_cpu_capability()} lacks AVX2"
    try:
        from torch.utils.cpp_extension import load

        mod = load(
            name="specviz_small_linear",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-mavx2", "-mfma", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        return mod.small_linear, "compiled"
    except Exception as e:  # no compiler, no ninja, a build error: the model still runs on BLAS
        return None, f"build failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"


class SmallLinear(torch.nn.Module):
    """nn.Linear (float32, CPU) whose passes of at most MAX_ROWS rows run our kernel; longer ones run torch's."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(linear.weight.detach().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._empty = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = small_linear_op()[0]
        if op is not None and x.numel() <= MAX_ROWS * self.in_features and x.dtype == torch.float32:
            return op(x, self.weight, self._empty if self.bias is None else self.bias)  # type: ignore[operator]
        return torch.nn.functional.linear(x, self.weight, self.bias)


def swap_linears(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Every nn.Linear not named in `skip` becomes a SmallLinear sharing its weight, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and name not in skip:
            setattr(module, name, SmallLinear(child))
        else:
            swap_linears(child, skip)
    return module
