"""Layer surgery: a view of a decoder that runs only some of its layers, sharing every weight (the layer-skip draft)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from specviz.core.config import ConfigError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer list of a transformers causal LM (model.model.layers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"layer skip needs a decoder with model.model.layers; {type(model).__name__} has none")
    return layers


def _shallow(module: torch.nn.Module) -> torch.nn.Module:
    """A copy sharing parameters, buffers and children, with its own child table (so children can be swapped)."""
    c = copy.copy(module)
    c.__dict__["_modules"] = dict(module._modules)
    return c


def layer_view(model: torch.nn.Module, kept: Sequence[int]) -> torch.nn.Module:
    """The model running only layers `kept` (in order), sharing all weights; its config has len(kept) layers."""
    layers = decoder_layers(model)
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    view_layers = []
    for new_idx, i in enumerate(kept):
        layer = _shallow(layers[i])
        attn = copy.copy(layer.self_attn)
        attn.layer_idx = new_idx  # the cache slot this layer writes: slots must follow the kept layers 0..k-1
        layer._modules["self_attn"] = attn
        view_layers.append(layer)
    inner = _shallow(model.model)
    inner._modules["layers"] = torch.nn.ModuleList(view_layers)
    inner.config = cfg
    outer = _shallow(model)
    outer._modules["model"] = inner
    outer.config = cfg
    return outer


def relative_cost(model: torch.nn.Module, kept: Sequence[int]) -> float:
    """Cost of a draft pass over a target pass, by weights read: (kept layers + LM head) / (all layers + LM head)."""
    sizes = [_weights(layer) for layer in decoder_layers(model)]
    head = _weights(model.get_output_embeddings())
    return (sum(sizes[i] for i in kept) + head) / (sum(sizes) + head)


def _weights(module: torch.nn.Module) -> int:
    """Parameters and buffers (oneDNN's fast path turns Linear weights into buffers)."""
    return sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())
