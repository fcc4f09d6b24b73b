"""Exact attention: each query row attends to exactly the keys it may see (the prefix, its ancestors, itself), in one
fixed order and with the same tensor shapes however many other rows share the pass, so a token's result is bitwise
the same decoded alone, verified in a chain, or verified as one node of a token tree under a tree mask."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

NAME = "specviz_exact"  # the attention implementation's name in transformers' registry


@dataclass(frozen=True)
class Visibility:
    """Which cached keys each of a pass's T query rows sees, in order: rows[t] (n_t,) long, on the model's device.
    A token tree's node after `base` cached tokens sees [0, base), then its ancestors' cache slots by depth, then its
    own slot (a chain's row t: [0, base + t])."""

    rows: tuple[torch.Tensor, ...]

    def dense(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """The same visibility as an additive (1, 1, T, length) mask, for attention implementations that take one."""
        mask = torch.full((len(self.rows), length), torch.finfo(dtype).min, dtype=dtype, device=self.rows[0].device)
        for t, idx in enumerate(self.rows):
            mask[t, idx] = 0
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
    scale = scaling if scaling is not None else d**-0.5
    out = query.new_empty(b, t, h, d)
    for r, idx in enumerate(attention_mask.rows):
        # every operand is made contiguous and shaped by this row alone (n visible keys), never by the pass
        q = query[:, :, r].contiguous().view(b, kvh, h // kvh, d)  # (B, KVH, G, D)
        k = key.index_select(2, idx)  # (B, KVH, n, D)
        v = value.index_select(2, idx)
        s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, KVH, G, n)
        w = torch.softmax(s, dim=-1, dtype=torch.float32 if s.dtype != torch.float64 else torch.float64).to(v.dtype)
        out[:, r] = torch.matmul(w, v).view(b, h, d)
    return out, None


def install(model: torch.nn.Module) -> None:
    """Route the model's attention through exact_attention (prefill passes still run SDPA inside it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, exact_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg._attn_implementation = NAME
