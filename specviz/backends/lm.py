"""LM: a transformers causal LM with its own KV cache; forward() feeds only new tokens (a chain, or a token tree under a
tree mask: forward_tree), keep_path() keeps a tree's accepted path and crop() rolls the cache back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from specviz.backends.attention import Visibility, exact_enabled, install, window_for


class LM:
    """A causal LM and one KV cache. forward() feeds only new tokens; crop() rolls the cache back."""

    def __init__(self, model: torch.nn.Module, name: str = "", exact: bool = True) -> None:
        from transformers import DynamicCache

        self.model = model.eval()
        install(self.model)
        # exact attention after the prefill: a row's result never depends on the other rows of its pass. A draft only
        # guesses (the target checks every guess), so it takes the model's own attention, faster in few-row passes.
        self.exact = exact
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
        self._tree: tuple[int, list[tuple[list[int], int]]] | None = None  # the last pass's tree (forward_tree)
        self._window = 0  # exact attention's key window for this run (reserve())

    @property
    def length(self) -> int:
        """Tokens held in the KV cache."""
        return self.cache.get_seq_length()

    def forward(self, ids: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed ids after the cached ones; logits of the last `keep` positions (all when None). -> (keep, V)"""
        return self.forward_tree(ids, list(range(-1, len(ids) - 1)), keep)

    @torch.inference_mode()
    def forward_tree(
        self, ids: Sequence[int], parents: Sequence[int], keep: int | None = None, extend: bool = False
    ) -> torch.Tensor:
        """Feed a token tree after the cached ones in ONE pass: node t (ids[t]) follows node parents[t], or the cached
        tokens when -1, and sees only the cache before the tree and its ancestors (a chain: parents [-1, 0, 1, ...]).
        extend: the nodes continue the previous tree pass, numbered after its nodes (a draft grows its tree level by
        level). Nodes are cached in the order fed; keep_path() then keeps the accepted path. -> logits (keep, V)"""
        return self._pass([list(ids)], parents, keep, extend)[0]

    @torch.inference_mode()
    def keep_path(self, base: int, path: Sequence[int]) -> None:
        """After a tree pass fed at `base` cached tokens, keep nodes `path` (pass indices, root first) as the tokens
        after the first `base`, and drop the rest."""
        path = list(path)
        if path != list(range(len(path))):  # a chain's prefix is already in place
            idx = torch.tensor([base + i for i in path], device=self.device)
            for layer in self.cache.layers:
                layer.keys[:, :, base : base + len(path)] = layer.keys.index_select(2, idx)
                layer.values[:, :, base : base + len(path)] = layer.values.index_select(2, idx)
        self.crop(base + len(path))

    def _pass(self, rows: list[list[int]], parents: Sequence[int], keep: int | None, extend: bool = False) -> torch.Tensor:
        """One forward of M rows sharing one tree shape. The prompt's pass (an empty cache) runs the model's own
        causal attention; every later pass runs exact attention over each row's visible keys, or (exact off) the
        model's own attention, with the tree as a dense mask. -> (M, keep, V)"""
        if not extend or self._tree is None:
            self._tree = (self.length, [])
        base, nodes = self._tree  # nodes: per node of the tree so far, (its visible slots after base, its depth)
        start, slot = len(nodes), self.length
        for t, par in enumerate(parents):
            if not -1 <= par < start + t:
                raise ValueError(f"node {start + t}'s parent {par} is not an earlier node of the tree (or -1)")
            seen, depth = nodes[par] if par >= 0 else ([], 0)
            nodes.append((seen + [slot + t], depth + 1))
        x = torch.tensor(rows, device=self.device)  # (M, T)
        kw: dict[str, Any] = {}
        chain = parents == list(range(-1, len(parents) - 1)) and start == 0
        exact = self.exact and exact_enabled()
        if (base and exact) or not chain:
            new = nodes[start:]
            pos = torch.tensor([base + d - 1 for _, d in new], device=self.device).expand(len(rows), -1)
            window = max(self._window, window_for(slot + len(parents)))
            vis = Visibility([[*range(base), *seen] for seen, _ in new], window, self.device)
            mask: object = vis if exact else vis.dense(slot + len(parents), self.model.dtype)
            kw = {"position_ids": pos, "attention_mask": {"full_attention": mask, "sliding_attention": mask}}
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep or 0, **kw)
        return out.logits  # (M, keep, V)

    def reserve(self, n: int) -> None:
        """The run ahead needs n positions: exact attention then attends over one window length in every pass of
        the run (so a row's result does not depend on how long the cache was when it was verified)."""
        self._window = window_for(n + 64)  # room for a tree pass past the last position

    def with_layers(self, kept: Sequence[int], name: str = "layerskip") -> LM:
        """A draft running only decoder layers `kept` of this model, sharing its weights, with its own cache."""
        from specviz.backends.surgery import layer_view

        return LM(layer_view(self.model, kept), name, exact=False)

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
        return self._pass([list(r) for r in rows], list(range(-1, len(rows[0]) - 1)), keep)

    def select_row(self, row: int) -> None:
        """Keep only cache row `row`."""
        if self.rows > 1:
            self.cache.batch_select_indices(torch.tensor([row], device=self.device))
