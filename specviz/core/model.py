"""LanguageModel: what the engine and the proposers need of a model with its own KV cache (backends.lm.LM and
backends.static_lm.StaticLM both satisfy it), so the core never imports a backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM and the KV cache of one run. forward() feeds only the tokens after the cached ones."""

    name: str
    model: Any  # the underlying torch module (layer surgery and helper heads reach into it)
    device: torch.device
    vocab_size: int
    max_positions: int
    keep_hidden: bool  # keep the final hidden states of the last forward() in last_hidden (helper heads read them)
    last_hidden: torch.Tensor | None  # (T, H)

    def reset(self) -> None:
        """Empty the cache for a new run."""

    def reserve(self, n: int) -> None:
        """The run ahead needs n positions."""

    @property
    def length(self) -> int:
        """Tokens held in the cache."""
        ...

    @property
    def rows(self) -> int:
        """Rows (batch size) of the cache: 1 unless forward_rows() fed several."""
        ...

    def forward(self, ids: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed ids after the cached ones; logits of the last `keep` positions (all when None). -> (keep, V)"""
        ...

    def forward_tree(self, ids: Sequence[int], parents: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed a token tree in ONE pass: node t follows node parents[t] (-1: the cached tokens) and sees only the cache
        and its ancestors; its logits are bitwise those of the chain that holds it. -> (keep, V)"""
        ...

    def keep_path(self, base: int, path: Sequence[int]) -> None:
        """After a tree pass fed at `base` cached tokens, keep its nodes `path` (root first) and drop the rest."""

    def forward_rows(self, rows: Sequence[Sequence[int]], keep: int | None = None) -> torch.Tensor:
        """Feed M equally long continuations at once, one cache row each. -> (M, keep, V)"""
        ...

    def select_row(self, row: int) -> None:
        """Keep only cache row `row`."""

    def crop(self, length: int) -> None:
        """Keep the first `length` cached tokens (roll back rejected drafts)."""

    def with_layers(self, kept: Sequence[int], name: str = "layerskip") -> LanguageModel:
        """A view running only decoder layers `kept`, sharing the weights, with its own cache."""
        ...
