"""Exact attention: each query row attends to exactly the keys it may see (the prefix, its ancestors, itself), in one
fixed order and with the same tensor shapes however many other rows share the pass, so a token's result is bitwise
the same decoded alone, verified in a chain, or verified as one node of a token tree under a tree mask."""

from __future__ import annotations

import os

import torch

NAME = "specviz_exact"  # the attention implementation's name in transformers' registry


MIN_WINDOW = 256


def window_for(n: int) -> int:
    """The key window of a pass over n cache positions: a power of two from MIN_WINDOW (fixed for a whole run by
    LM.reserve(), so every pass of the run attends over windows of one length)."""
    w = MIN_WINDOW
    while w < n:
        w *= 2
    return w


class Visibility:
    """Which cached keys each of a pass's T query rows sees, in order: rows[t], slots of the KV cache. A token tree's
    node after `base` cached tokens sees [0, base), then its ancestors' slots by depth, then its own slot (a chain's
    row t: [0, base + t]). As tensors: index (T, window), the slots padded with slot 0, and valid (T, window)."""

    def __init__(self, rows: list[list[int]], window: int, device: torch.device) -> None:
        self.rows = rows
        self.window = max(window, max(len(r) for r in rows))
        self.index = torch.zeros(len(rows), self.window, dtype=torch.long)
        self.valid = torch.zeros(len(rows), self.window, dtype=torch.bool)
        for t, r in enumerate(rows):
            self.index[t, : len(r)] = torch.tensor(r, dtype=torch.long)
            self.valid[t, : len(r)] = True
        self.index, self.valid = self.index.to(device), self.valid.to(device)

    def dense(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """The same visibility as an additive (1, 1, T, length) mask, for attention implementations that take one."""
        mask = torch.full((len(self.rows), length), torch.finfo(dtype).min, dtype=dtype, device=self.index.device)
        for t, r in enumerate(self.rows):
            mask[t, r] = 0
        return mask[None, None]


def exact_enabled() -> bool:
    """Exact attention after the prefill (SPECVIZ_EXACT_ATTENTION=0: the model's own attention with a dense mask,
    which may round a row differently when other rows share the pass)."""
    return os.environ.get("SPECVIZ_EXACT_ATTENTION", "1") != "0"


def exact_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: object,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface. query (B, H, T, D), key/value (B, KVH, S, D) -> (B, T, H, D). With a
    Visibility as mask, row by row over exactly the visible keys; any other mask (the prefill's) goes to SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, Visibility):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)  # type: ignore[arg-type]
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("exact attention does not implement sliding windows")
    b, h, t, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    scale = scaling if scaling is not None else d**-0.5
    # each row gathers its own keys into a window of fixed length: one batch entry per (row, kv head), whose shapes
    # never depend on the pass (its other rows, its length), only on the run's window
    k = key[:, :, attention_mask.index]  # (B, KVH, T, W, D)
    v = value[:, :, attention_mask.index]
    q = query.view(b, kvh, g, t, d).transpose(2, 3).contiguous()  # (B, KVH, T, G, D)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, KVH, T, G, W)
    s = s.masked_fill(~attention_mask.valid[None, None, :, None, :], float("-inf"))
    wts = torch.softmax(s, dim=-1, dtype=torch.float32 if s.dtype != torch.float64 else torch.float64).to(v.dtype)
    o = torch.matmul(wts, v)  # (B, KVH, T, G, D)
    return o.permute(0, 2, 1, 3, 4).reshape(b, t, h, d), None


def install(model: torch.nn.Module) -> None:
    """Route the model's attention through exact_attention (prefill passes still run SDPA inside it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, exact_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg._attn_implementation = NAME
