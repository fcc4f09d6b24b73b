"""LM: a transformers causal LM with its own KV cache; forward() feeds only new tokens and crop() rolls the cache back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class LM:
    """A causal LM and one KV cache. forward() feeds only new tokens; crop() rolls the cache back."""

    def __init__(self, model: torch.nn.Module, name: str = "") -> None:
        from transformers import DynamicCache

        self.model = model.eval()
        self.name = name
        self._cache_cls = DynamicCache
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 32768))
        # the final hidden states of the last forward() (T, H), kept only while keep_hidden (helper heads read them)
        self.keep_hidden = False
        self.last_hidden: torch.Tensor | None = None
        norm = getattr(getattr(model, "model", None), "norm", None)
        if isinstance(norm, torch.nn.Module):
            norm.register_forward_hook(self._on_norm)
        self.reset()

    def _on_norm(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        if self.keep_hidden:
            self.last_hidden = out[0]

    def reset(self) -> None:
        self.cache = self._cache_cls(config=self.model.config)

    @property
    def length(self) -> int:
        """Tokens held in the KV cache."""
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def forward(self, ids: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed ids after the cached ones; logits of the last `keep` positions (all when None). -> (keep, V)"""
        x = torch.tensor([list(ids)], device=self.device)  # (1, T)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep or 0)
        return out.logits[0]  # (keep, V)

    def reserve(self, n: int) -> None:
        """The run ahead needs n positions (a dynamic cache needs no notice; StaticLM fixes its attention window)."""

    def with_layers(self, kept: Sequence[int], name: str = "layerskip") -> LM:
        """A draft running only decoder layers `kept` of this model, sharing its weights, with its own cache."""
        from specviz.backends.surgery import layer_view

        return LM(layer_view(self.model, kept), name)

    def crop(self, length: int) -> None:
        """Keep the first `length` cached tokens."""
        extra = self.length - length
        if extra > 0:
            self.cache.crop(-extra)

    @property
    def rows(self) -> int:
        """Rows (batch size) of the KV cache: 1 unless forward_rows() fed several."""
        return self.cache.layers[0].keys.shape[0] if self.length else 1

    @torch.inference_mode()
    def forward_rows(self, rows: Sequence[Sequence[int]], keep: int | None = None) -> torch.Tensor:
        """Feed M equally long continuations of the cached tokens at once, one cache row each; a one-row cache is
        repeated to M rows first (select_row() goes back to one). -> (M, keep, V)"""
        if len(rows) > 1 and self.rows == 1:
            self.cache.batch_repeat_interleave(len(rows))
        x = torch.tensor([list(r) for r in rows], device=self.device)  # (M, T)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep or 0)
        return out.logits

    def select_row(self, row: int) -> None:
        """Keep only cache row `row`."""
        if self.rows > 1:
            self.cache.batch_select_indices(torch.tensor([row], device=self.device))
