"""An embedded GGUF model turned into a float32 transformers model without transformers' GGUF loader, which spent most
of a cold start parsing the file's 300k vocabulary and merge strings again and again (measured: 108 s for the 0.5B
model, 14 s of it dequantising). Same config, tokenizer files and weights, bit for bit (a test compares them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from specviz.backends.gguf_reader import GGUFFile

# architectures whose GGUF tensors are transformers' weights renamed, with no permutation or split, and whose config
# needs nothing beyond transformers' key mapping; others go through transformers' own loader
FAST_ARCHS = frozenset({"qwen2"})


class NotConvertible(Exception):
    """This file needs transformers' own GGUF loader."""


def config_dict(g: GGUFFile) -> dict[str, Any]:
    """The transformers config of a GGUF file, as transformers' loader derives it from the metadata."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    out: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in g.tensors}
    for key, value in g.meta.items():
        prefix, _, rest = key.partition(".")
        name = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if name is not None and name != -1:
            out[name] = value
    if "vocab_size" not in out and "tokenizer.ggml.tokens" in g.meta:
        out["vocab_size"] = len(g.meta["tokenizer.ggml.tokens"])
    return out


def weight_names(g: GGUFFile, model: torch.nn.Module) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, through gguf's own table of names. Every tensor must find a
    parameter and every parameter a tensor (a tied output layer excepted), or NotConvertible."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == g.architecture), None)
    if arch is None:
        raise NotConvertible(f"gguf does not know architecture {g.architecture!r}")
    table = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    names: dict[str, str] = {}
    for hf in model.state_dict():
        base, _, suffix = hf.rpartition(".")
        mapped = table.get_name(base)
        if mapped is not None and f"{mapped}.{suffix}" in g.tensors:
            names[f"{mapped}.{suffix}"] = hf
        elif not (model.config.tie_word_embeddings and hf == "lm_head.weight"):
            raise NotConvertible(f"no GGUF tensor for {hf}")
    if set(names) != set(g.tensors):
        raise NotConvertible(f"GGUF tensors without a parameter: {sorted(set(g.tensors) - set(names))[:3]}")
    return names


def dequantise_all(g: GGUFFile, names: dict[str, str], workers: int) -> dict[str, torch.Tensor]:
    """Every tensor in float32 under its parameter name, `workers` tensors at a time, one torch thread each (their
    elementwise ops are too small to split well; a tensor per core is)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="specviz-dequant") as pool:
            return dict(zip(names.values(), pool.map(g.tensor, names), strict=True))
    finally:
        torch.set_num_threads(threads)


def convert(gguf_path: Path, progress: Callable[[float, str], None]) -> tuple[Any, Any, dict[str, float]]:
    """(float32 model, tokenizer, seconds per stage) from a GGUF file; NotConvertible for what needs transformers'."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoTokenizer

    times: dict[str, float] = {}
    t = time.perf_counter()
    g = GGUFFile(gguf_path)
    try:
        if g.architecture not in FAST_ARCHS:
            raise NotConvertible(f"architecture {g.architecture!r}")
        config = AutoConfig.for_model(**config_dict(g))
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        with torch.device("meta"):
            shell = cls(config)
        names = weight_names(g, shell)
        del shell
        times["metadata_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # tokenizer_type names the class directly: without it transformers derives the config from the GGUF again
        tok = AutoTokenizer.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, tokenizer_type=config.model_type
        )
        times["tokenizer_s"] = time.perf_counter() - t
        progress(0.45, "dequantising GGUF")
        t = time.perf_counter()
        state = dequantise_all(g, names, workers=max(1, torch.get_num_threads()))
        times["dequantise_s"] = time.perf_counter() - t
    finally:
        g.close()
    t = time.perf_counter()
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32)
    times["build_s"] = time.perf_counter() - t
    return model, tok, {k: round(v, 1) for k, v in times.items()}
