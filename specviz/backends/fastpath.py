"""CPU fast paths, chosen by measurement on our 2-core AVX2 machine: our packed-weight kernel (specviz/backends/kernels) for
every pass of the target (float32 weights) and of the draft model (bfloat16 weights, float32 arithmetic); where the
kernel cannot be built, oneDNN linear layers, and for the draft bf16 weights in its few-row passes."""

from __future__ import annotations

import os

import torch

# Above this many rows a draft linear uses its float32 oneDNN weight: without native bf16 instructions (AVX2 only)
# bf16 matmuls lose to float32 once the pass is compute-bound (prefill). Measured on 1536x8960: bf16 dense took
# 1.25 / 3.05 / 3.38 / 7.6 ms for 1 / 2 / 4 / 6 rows, float32 oneDNN 2.6 / 5.7 / 4.3 / 6.0 ms.
BF16_MAX_ROWS = 4
MIN_PARAMS = 50_000_000


def use_cpu_fast_path(device: torch.device, dtype: torch.dtype) -> bool:
    """Fast linear layers on CPU float32 (SPECVIZ_MKLDNN=0 turns them all off: plain torch linear layers)."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and os.environ.get("SPECVIZ_MKLDNN", "1") != "0"
    )


def use_bf16_draft(device: torch.device, dtype: torch.dtype) -> bool:
    """bf16 decode weights for the draft on CPU float32 (SPECVIZ_DRAFT_BF16=0 turns them off)."""
    return use_cpu_fast_path(device, dtype) and os.environ.get("SPECVIZ_DRAFT_BF16", "1") != "0"


def target_fast_path(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The target's linear layers on CPU float32: our kernel when it builds (it streams the weights once for all rows,
    so a 5-token verification costs little more than a 1-token pass; it holds only the packed weights), else oneDNN.
    -> (model, what was used)"""
    from specviz.backends.kernels import kernel, swap_linears

    ops, why = kernel()
    if ops is not None:
        return swap_linears(model), "specviz packed kernel"
    return cpu_fast_path(model), f"mkldnn (kernel {why})"


def cpu_fast_path(model: torch.nn.Module) -> torch.nn.Module:
    """Swap nn.Linear for oneDNN's blocked-weight linear. Measured on our 2-core CPU: MKL's dense GEMM costs twice a
    one-token pass for 2..9 tokens (it repacks the weights each call), which made verification passes slow;
    oneDNN keeps the cost of k tokens lower. Same dtype (float32), so results match plain decoding."""
    from torch.utils import mkldnn

    return mkldnn.to_mkldnn(model)


class DraftLinear(torch.nn.Module):
    """Where our kernel cannot be built, a draft model's linear layer holding its weight twice: bf16 (dense) for passes
    of at most BF16_MAX_ROWS rows, where streaming half the bytes makes a decode step about twice as fast, and float32
    oneDNN for longer passes.
    Inputs and outputs stay float32. Only drafts use it: a draft only guesses, and every guess is verified by the
    float32 target, so output stays identical; the cost is a slightly different q (shown as such)."""

    def __init__(self, linear: torch.nn.Linear, wide: bool = True) -> None:
        from torch.utils.mkldnn import MkldnnLinear

        super().__init__()
        self.wide = MkldnnLinear(linear, torch.float32) if wide else None
        self.register_buffer("weight16", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias16", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > BF16_MAX_ROWS and self.wide is not None:
            return self.wide(x)
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight16, self.bias16).to(x.dtype)


def draft_fast_path(model: torch.nn.Module, min_params: int = MIN_PARAMS) -> tuple[torch.nn.Module, str]:
    """A float32 draft's linear layers: our kernel over bf16 weights for every pass when it builds (half the bytes to
    stream, a quarter of the float32 + bf16 memory); else a DraftLinear each (bf16 for few rows, oneDNN float32 for
    more; the LM head keeps no float32 copy: the draft asks it for one row at a time). Drafts under min_params are
    treated as a target (float32): bf16 saves nothing where a pass is overhead-bound. -> (model, what was used)"""
    from specviz.backends.kernels import kernel, swap_linears

    if sum(p.numel() for p in model.parameters()) < min_params:
        return target_fast_path(model)
    if kernel()[0] is not None:
        return swap_linears(model, dtype=torch.bfloat16), "specviz packed kernel, bf16 weights"
    _swap(model)
    return model, f"bf16 decode + oneDNN float32 for longer passes (kernel {kernel()[1]})"


def _swap(module: torch.nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, DraftLinear(child, wide=name != "lm_head"))
        else:
            _swap(child)
