"""Random-weight models: tiny Qwen2 pairs built from a config (tests, the UI without real weights) and real shapes with random weights (GPU timing)."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from specviz.backends.codecs import CharCodec, Codec
from specviz.core.config import ConfigError
from specviz.core.presets import PRESETS_DIR


def tiny_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, init: float = 0.02) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        initializer_range=init,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def tiny_model(vocab_size: int, seed: int, dtype: torch.dtype = torch.float32, **cfg: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(vocab_size, **cfg)).to(dtype).eval()


def shapes_model(src: dict[str, Any], dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Random weights with a real model's exact configuration (presets/shapes/*.json): every pass costs what the real
    model's costs, with no weights to ship. Built on `device` directly (initialising 1.5B weights on a CPU is slow)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = PRESETS_DIR / src["config"]
    try:
        config = AutoConfig.for_model(**json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model shape file {path}: {e}") from e
    torch.manual_seed(int(src.get("seed", 0)))
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def perturbed_copy(model: torch.nn.Module, noise: float, seed: int) -> torch.nn.Module:
    """A draft that resembles the target: its weights plus Gaussian noise of relative size `noise`."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * noise * p.std().clamp_min(1e-3))
    return draft


def tiny_pair(spec: dict[str, Any], dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module | None, Codec]:
    codec = CharCodec()
    t = spec["target"]
    shape = {k: t[k] for k in ("hidden", "layers", "heads", "init") if k in t}
    target = tiny_model(codec.vocab_size, t.get("seed", 0), dtype, **shape)
    d = spec.get("draft") or {}
    draft = perturbed_copy(target, d.get("noise", 0.3), d.get("seed", 1)) if d else None
    return target, draft, codec
