"""The GPU fast path: StaticLM runs a Qwen2/Llama-style decoder with our own forward over a static KV cache and replays
each few-token pass as one CUDA graph, so a decode step is one launch instead of about a thousand kernel launches.

It satisfies core.model.LanguageModel, as backends.lm.LM does (forward, crop, reset, length, forward_rows,
select_row, keep_hidden), and shares every weight with the transformers model it wraps. Passes of up to `pad` tokens
run padded to exactly `pad` rows, at one attention window per run (reserve()): every such pass then runs the same
kernels on the same shapes, so a token's logits do not depend on how many tokens were verified beside it, and
speculative greedy output stays identical to plain greedy output in bf16 too. Longer passes (the prompt) run eagerly
at their own length; both kinds of run share them. A token tree (forward_tree) runs the same padded passes, `pad`
nodes at a time: every padded row gathers exactly the keys it may see (the prefix, its ancestors, itself), in that
order, into a window of its own, so a node's logits are bitwise those of the chain that holds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("qwen2", "llama")
MIN_WINDOW = 256
MAX_ROWS = 8  # rows of the multi-row cache under CUDA graphs (multidraft's most candidates), allocated once


def unsupported(model: torch.nn.Module) -> str | None:
    """Why StaticLM cannot run this model, or None when it can."""
    cfg = model.config
    inner = getattr(model, "model", None)
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return f"model type {getattr(cfg, 'model_type', '?')!r} (supported: {', '.join(SUPPORTED)})"
    if getattr(cfg, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
    ):
        return "sliding-window attention"
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
        return "no model.model.layers / rotary_emb"
    return None


def _bucket(n: int, cap: int) -> int:
    """The attention window for n positions: a power of two from MIN_WINDOW, at most cap."""
    w = MIN_WINDOW
    while w < n:
        w *= 2
    return min(w, cap)


class StaticLM:
    """A causal LM over a static KV cache (rows x context), CUDA graphs on CUDA (graphs=None: on CUDA only).
    layers: the decoder layers to run (a layer-skip draft shares its target's weights); use_compile: torch.compile the
    one-row pass before capturing it (fuses the ~50 small kernels of each layer; about half a minute per model and
    attention window, paid by warm() for the usual window). One-row passes use a one-row cache; multi-row passes
    (multidraft's candidates) a cache of their own, captured uncompiled, so the compiled graphs never see it."""

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "",
        context: int | None = None,
        pad: int = 16,
        graphs: bool | None = None,
        layers: Sequence[int] | None = None,
        use_compile: bool = False,
    ) -> None:
        why = unsupported(model)
        if why:
            raise ValueError(f"StaticLM cannot run this model: {why}")
        self.model = model.eval()
        self.name = name
        cfg = model.config
        inner = model.model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.vocab_size = cfg.vocab_size
        self.layer_ids = list(range(len(inner.layers))) if layers is None else list(layers)
        self.layers = [inner.layers[i] for i in self.layer_ids]
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        model_max = int(getattr(cfg, "max_position_embeddings", 32768))
        context = context or int(os.environ.get("SPECVIZ_GPU_CONTEXT", "4096"))
        self.max_positions = min(model_max, context)
        self.pad = pad
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.use_compile = use_compile
        self.keep_hidden = False
        self.last_hidden: torch.Tensor | None = None
        with torch.no_grad():
            pos = torch.arange(self.max_positions + pad, device=self.device)[None]
            cos, sin = inner.rotary_emb(torch.empty(0, device=self.device, dtype=self.dtype), pos)
        self.cos, self.sin = cos[0], sin[0]  # (positions, head_dim), in the model's dtype as transformers has them
        self._graphs: dict[tuple[int, int], tuple[Any, list[torch.Tensor], Any]] = {}
        self._pool: Any = None
        self.k, self.v = self._cache(1)
        self.km: list[torch.Tensor] = []  # the multi-row cache, made at the first multi-row pass
        self.vm: list[torch.Tensor] = []
        self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False) if use_compile else None
        self._views: dict[tuple[int, ...], StaticLM] = {}
        self.reset()

    # ------------------------------------------------------------ the LM interface

    def reset(self) -> None:
        self._len, self._rows, self._window = 0, 1, None
        self._tree: tuple[int, list[tuple[list[int], int]]] | None = None  # the last tree pass (as LM's)

    def reserve(self, n: int) -> None:
        """The run ahead needs n positions: fix one attention window for all its padded passes."""
        self._window = _bucket(min(n, self.max_positions) + self.pad, self.max_positions + self.pad)

    def warm(self, n: int = 384) -> None:
        """Capture (and compile) the one-row pass for runs of up to n positions now, so that no visitor's timed run
        pays for it (a longer run compiles its window once, when it first needs it)."""
        self.reset()
        self.reserve(n)
        with torch.inference_mode():
            self.forward([0])
        self.reset()

    @property
    def length(self) -> int:
        return self._len

    @property
    def rows(self) -> int:
        return self._rows

    def crop(self, length: int) -> None:
        self._len = min(self._len, length)  # positions past it are overwritten before anything reads them

    def with_layers(self, kept: Sequence[int], name: str = "layerskip") -> StaticLM:
        """A draft running only decoder layers `kept` of this model, sharing its weights, with its own cache (one per
        layer set, kept: its graphs are captured once)."""
        key = tuple(kept)
        if key not in self._views:
            self._views[key] = StaticLM(
                self.model, name, self.max_positions, self.pad, self.graphs, kept, self.use_compile
            )
        return self._views[key]

    @torch.inference_mode()
    def forward(self, ids: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed ids after the cached ones; logits of the last `keep` positions (all when None). -> (keep, V)"""
        return self.forward_tree(ids, list(range(-1, len(ids) - 1)), keep)

    @torch.inference_mode()
    def forward_tree(
        self, ids: Sequence[int], parents: Sequence[int], keep: int | None = None, extend: bool = False
    ) -> torch.Tensor:
        """Feed a token tree in one go (as LM.forward_tree: parents -1 follow the cache, extend continues the last
        tree): `pad` nodes per padded pass, each row over exactly its visible keys. -> (keep, V)"""
        return self._forward([list(ids)], keep, parents, extend)[0]

    @torch.inference_mode()
    def keep_path(self, base: int, path: Sequence[int]) -> None:
        """After a tree pass fed at `base` cached tokens, keep nodes `path` (root first) and drop the rest."""
        path = list(path)
        if path != list(range(len(path))):
            idx = torch.tensor([base + i for i in path], device=self.device)
            for k, v in zip(self.k, self.v, strict=True):
                k[:, :, base : base + len(path)] = k.index_select(2, idx)
                v[:, :, base : base + len(path)] = v.index_select(2, idx)
        self.crop(base + len(path))

    @torch.inference_mode()
    def forward_rows(self, rows: Sequence[Sequence[int]], keep: int | None = None) -> torch.Tensor:
        """Feed M equally long continuations at once, one cache row each (a one-row cache is repeated first). -> (M, keep, V)"""
        m = len(rows)
        if m > 1 and self._rows == 1:
            if m > (self.km[0].shape[0] if self.km else 0):
                if self.graphs and m > MAX_ROWS:  # graphs hold the multi-row cache: it is made once, never regrown
                    raise ValueError(f"{m} rows fed to a static cache of {MAX_ROWS}")
                self.km, self.vm = self._cache(MAX_ROWS if self.graphs else m)
            for k1, v1, k, v in zip(self.k, self.v, self.km, self.vm, strict=True):
                k[:m, :, : self._len] = k1[:, :, : self._len]
                v[:m, :, : self._len] = v1[:, :, : self._len]
            self._rows = m
        return self._forward([list(r) for r in rows], keep)

    def select_row(self, row: int) -> None:
        if self._rows > 1:
            with torch.inference_mode():
                for k1, v1, k, v in zip(self.k, self.v, self.km, self.vm, strict=True):
                    k1[0, :, : self._len] = k[row, :, : self._len]
                    v1[0, :, : self._len] = v[row, :, : self._len]
            self._rows = 1

    # ------------------------------------------------------------ internals

    def _cache(self, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of every layer for `rows` rows (the pad's positions past the context are scratch)."""
        shape = (rows, self.n_kv, self.max_positions + self.pad, self.head_dim)
        k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        return k, v

    def _forward(
        self, rows: list[list[int]], keep: int | None, parents: Sequence[int] | None = None, extend: bool = False
    ) -> torch.Tensor:
        r, t = len(rows), len(rows[0])
        if r != self._rows:
            raise ValueError(f"{r} rows fed to a cache holding {self._rows}")
        if self._len + t > self.max_positions:
            raise ValueError(f"{self._len + t} positions exceed this model's static cache of {self.max_positions}")
        parents = list(range(-1, t - 1)) if parents is None else list(parents)
        keep = keep or t
        if self._len == 0 and parents == list(range(-1, t - 1)) and t > self.pad:  # the prompt: eager, at its length
            ids = torch.tensor(rows, device=self.device)
            pos = torch.arange(0, t, device=self.device)
            logits, hidden = self._step(ids, pos, pos, t, keep)
            self._len, self._tree = t, (0, [(list(range(i + 1)), i + 1) for i in range(t)])
        else:
            seen = self._grow(parents, extend)
            window = self._window or _bucket(self._len + self.pad, self.max_positions + self.pad)
            window = max(window, _bucket(self._len + t + self.pad, self.max_positions + self.pad))
            outs = []
            for a in range(0, t, self.pad):  # pad nodes a pass; later ones see the earlier ones in the cache
                chunk = [row[a : a + self.pad] for row in rows]
                logits, hidden = self._padded(chunk, seen[a : a + self.pad], window)
                outs.append((logits[:, : len(chunk[0])].clone(), hidden[:, : len(chunk[0])].clone()))
                self._len += len(chunk[0])
            logits = torch.cat([o[0] for o in outs], 1)[:, -keep:]
            hidden = torch.cat([o[1] for o in outs], 1)
        if self.keep_hidden:
            self.last_hidden = hidden[0]
        return logits

    def _grow(self, parents: Sequence[int], extend: bool) -> list[tuple[list[int], int]]:
        """Record a tree pass's nodes after the cache; per new node (its visible slots, its rope position)."""
        if not extend or self._tree is None:
            self._tree = (self._len, [])
        base, nodes = self._tree
        start = len(nodes)
        for i, par in enumerate(parents):
            if not -1 <= par < start + i:
                raise ValueError(f"node {start + i}'s parent {par} is not an earlier node of the tree (or -1)")
            vis, depth = nodes[par] if par >= 0 else ([], 0)
            nodes.append((vis + [self._len + i], depth + 1))
        return [([*range(base), *vis], base + depth - 1) for vis, depth in nodes[start:]]

    def _padded(self, rows: list[list[int]], seen: list[tuple[list[int], int]], window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of `pad` rows per cache row (ids padded with 0 past the real ones) at attention window `window`:
        row i is written at cache slot length + i and sees the slots seen[i][0] at rope position seen[i][1] (padding
        rows: a causal row of their own)."""
        r, t = len(rows), len(rows[0])
        ids = torch.zeros(r, self.pad, dtype=torch.long)
        ids[:, :t] = torch.tensor(rows)
        slots = torch.arange(self._len, self._len + self.pad)
        rope = slots.clone()
        idx = torch.zeros(self.pad, window, dtype=torch.long)
        vis = torch.zeros(self.pad, window, dtype=torch.bool)
        for i in range(self.pad):
            keys, pos = seen[i] if i < t else (list(range(self._len + i + 1)), self._len + i)
            idx[i, : len(keys)] = torch.tensor(keys)
            vis[i, : len(keys)] = True
            rope[i] = pos
        inputs = [ids, slots, rope, idx, vis]
        if not self.graphs:
            return self._step_fn(r)(*(x.to(self.device) for x in inputs), window, self.pad, True)
        graph, bufs, outs = self._graph(r, window)
        for buf, x in zip(bufs, inputs, strict=True):
            buf.copy_(x, non_blocking=True)
        graph.replay()
        return outs

    def _graph(self, r: int, window: int) -> Any:
        key = (r, window)
        if key not in self._graphs:
            # warm-up and capture write the scratch positions past max_positions, which no real token uses
            scratch = torch.arange(self.max_positions, self.max_positions + self.pad, device=self.device)
            bufs = [
                torch.zeros(r, self.pad, dtype=torch.long, device=self.device),
                scratch.clone(),
                scratch.clone(),
                torch.zeros(self.pad, window, dtype=torch.long, device=self.device),
                torch.ones(self.pad, window, dtype=torch.bool, device=self.device),
            ]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            step = self._step_fn(r)
            with torch.cuda.stream(stream):
                for _ in range(2):
                    step(*bufs, window, self.pad, True)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outs = step(*bufs, window, self.pad, True)
            self._graphs[key] = (graph, bufs, outs)
        return self._graphs[key]

    def _step_fn(self, rows: int) -> Any:
        return self._compiled if self._compiled is not None and rows == 1 else self._step

    def _step(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        rope: torch.Tensor,
        idx: torch.Tensor | int,
        vis: torch.Tensor | int,
        window: int | None = None,
        keep: int | None = None,
        gather: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder over ids (R, T) written at cache slots (T,), rotated to positions rope (T,); writes the cache.
        gather: row i attends to cache slots idx[i] where vis[i] (T, window), its own keys in a window of their own;
        else (the prompt) every row attends causally to slots [0, window), window = idx. -> logits (R, keep, V),
        final hidden states (R, T, H)"""
        if not gather:  # the prompt's call: _step(ids, slots, rope, window, keep)
            window, keep = int(idx), int(vis)  # type: ignore[arg-type]
        assert window is not None and keep is not None
        inner = self.model.model
        r, t = ids.shape
        x = inner.embed_tokens(ids)  # (R, T, H)
        cos, sin = self.cos[rope][None, None], self.sin[rope][None, None]  # (1, 1, T, hd)
        mask = torch.arange(window, device=ids.device)[None, :] <= slots[:, None]  # (T, window), the prompt's
        keys, values = (self.k, self.v) if r == 1 else (self.km, self.vm)
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = _rms(x, layer.input_layernorm.weight, self.eps)
            q = attn.q_proj(h).view(r, t, self.n_heads, self.head_dim).transpose(1, 2)  # (R, nh, T, hd)
            k = attn.k_proj(h).view(r, t, self.n_kv, self.head_dim).transpose(1, 2)  # (R, nkv, T, hd)
            v = attn.v_proj(h).view(r, t, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            kc, vc = keys[li][:r], values[li][:r]
            kc.index_copy_(2, slots, k)
            vc.index_copy_(2, slots, v)
            if gather:
                o = _gathered(q, kc, vc, idx, vis, attn.scaling)  # type: ignore[arg-type]
            else:
                o = F.scaled_dot_product_attention(
                    q, kc[:, :, :window], vc[:, :, :window], attn_mask=mask, scale=attn.scaling, enable_gqa=True
                ).transpose(1, 2)
            x = x + attn.o_proj(o.reshape(r, t, -1))
            x = x + layer.mlp(_rms(x, layer.post_attention_layernorm.weight, self.eps))
        x = _rms(x, inner.norm.weight, self.eps)
        return self.model.lm_head(x[:, -keep:]), x


def _gathered(
    q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, idx: torch.Tensor, vis: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of each row over its own gathered keys: q (R, nh, T, hd), caches (R, nkv, S, hd), idx / vis (T, W).
    Each of the R*T rows is its own batch entry of one query, so its result never depends on the other rows.
    -> (R, T, nh, hd)"""
    r, nh, t, hd = q.shape
    w = idx.shape[1]
    kg = kc[:, :, idx].permute(0, 2, 1, 3, 4).reshape(r * t, kc.shape[1], w, hd)  # (R*T, nkv, W, hd)
    vg = vc[:, :, idx].permute(0, 2, 1, 3, 4).reshape(r * t, vc.shape[1], w, hd)
    qg = q.transpose(1, 2).reshape(r * t, nh, 1, hd)
    m = vis[None].expand(r, t, w).reshape(r * t, 1, 1, w)
    o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m, scale=scale, enable_gqa=True)  # (R*T, nh, 1, hd)
    return o.reshape(r, t, nh, hd)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen2/Llama RMSNorm, op for op: normalise in float32, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
