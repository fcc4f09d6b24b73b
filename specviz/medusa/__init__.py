"""Trained helper heads (Medusa): the heads module and its file format, self-distilled training data, training, and
the lookup of a preset's shipped heads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from specviz.backends.kernels import PackedLinear, unpack_rows
from specviz.core.config import ConfigError
from specviz.core.presets import PACKAGE_DIR
from specviz.medusa.heads import MedusaHeads, load_heads


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The LM head's (V, H) float weight, whatever linear kernel holds it (dense, oneDNN, ours: unpacked, a copy)."""
    head = model.get_output_embeddings()
    w = head.weight
    return w.to_dense() if w.is_mkldnn else w.detach()


def lm_head_rows(model: torch.nn.Module) -> torch.Tensor | Callable[[torch.Tensor], torch.Tensor]:
    """What MedusaHeads.bind takes: the LM head's weight, or for our packed head a reader of some of its rows."""
    head = model.get_output_embeddings()
    if isinstance(head, PackedLinear):
        return lambda ids: unpack_rows(head.packed, ids.to(head.packed.device))
    return lm_head_weight(model)


def heads_for(pair: Any) -> MedusaHeads:
    """The pair's helper heads, loaded once from the preset's `heads: {file, sha256}` and bound to its LM head."""
    if getattr(pair, "heads", None) is not None:
        return pair.heads
    spec = getattr(pair, "info", {}).get("heads_spec")
    if not spec or not spec.get("file"):
        raise ConfigError(
            f"preset {pair.preset!r} has no trained helper heads: train them with "
            f"`python -m specviz train-heads --preset {pair.preset}` and add the file to specviz/presets/models.yaml"
        )
    path = Path(spec["file"])
    path = path if path.is_absolute() else PACKAGE_DIR / path  # relative to the specviz package
    cfg = pair.target.model.config
    heads = load_heads(path, cfg.hidden_size, cfg.vocab_size, pair.codec.vocab_key(), spec.get("sha256"))
    pair.heads = heads.bind(lm_head_rows(pair.target.model)).to(pair.target.device)
    return pair.heads


__all__ = ["MedusaHeads", "heads_for", "lm_head_rows", "lm_head_weight", "load_heads"]
