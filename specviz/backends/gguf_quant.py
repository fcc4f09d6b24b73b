"""A GGUF model built straight from its quantised blocks: transformers' module tree (so the engine, exact attention
and layer surgery see the usual model) with every quantised matrix a QuantLinear or QuantEmbedding of our kernel,
repacked from the memory-mapped file at start, and the norms and biases in float32. No float32 copy, no float32 cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from specviz.backends.gguf_reader import GGUFFile
from specviz.backends.kernels import quant as qk
from specviz.backends.weights import CorruptCache, checksum_file, folder_checksums, rebuild_buffers

MODEL_FILE = "model.gguf"  # the GGUF inside its cache folder (cache.py)


class NotQuantisable(Exception):
    """This GGUF holds a tensor our kernel does not take (another type, or a row width it cannot split): the model
    takes the float32 path instead."""


@dataclass
class Blocks:
    """One GGUF file read for the kernel: each quantised matrix repacked (uint8), the rest float32, by GGUF name;
    int8: the names repacked in the int8 path's layout."""

    architecture: str
    packed: dict[str, tuple[torch.Tensor, int, tuple[int, ...]]] = field(default_factory=dict)  # (blocks, type, shape)
    plain: dict[str, torch.Tensor] = field(default_factory=dict)
    int8: set[str] = field(default_factory=set)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def tensors(self) -> set[str]:
        return set(self.packed) | set(self.plain)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() for t, _, _ in self.packed.values()) + sum(4 * t.numel() for t in self.plain.values())


def check_quantisable(g: GGUFFile) -> None:
    """NotQuantisable unless every matrix is of a type and width our kernel takes (vectors may be F32/F16/BF16)."""
    for t in g.tensors.values():
        if len(t.shape) == 2 and not qk.supported(t.ggml_type, t.shape[1]):
            raise NotQuantisable(f"{t.name}: ggml type {t.ggml_type}, rows of {t.shape[1]}")
        if len(t.shape) != 2 and t.ggml_type in qk.TYPES:
            raise NotQuantisable(f"{t.name}: a quantised tensor of {len(t.shape)} dimensions")


def read_blocks(
    path: Path, expect: dict[str, Any] | None = None, threads: int = 0, int8: bool | None = None
) -> Blocks:
    """Every tensor of a GGUF file, repacked for the kernel (in C++, which releases the GIL, so this may run beside
    the main thread's imports; threads=1: on this thread alone, 0: on all of torch's). expect: the file's checksum
    record (the cache's manifest); the file is checked against it first, and CorruptCache raised on any difference.
    int8 (default: SPECVIZ_QUANT=int8): the matrices the int8 path takes in its layout, the rest as before."""
    int8 = qk.int8_mode() if int8 is None else int8
    t0 = time.perf_counter()
    if expect is not None and checksum_file(path, expect.get("algo"), expect.get("piece")) != expect:
        raise CorruptCache(f"{path}: its bytes fail their checksum: the cache is rebuilt")
    t1 = time.perf_counter()
    g = GGUFFile(path)
    try:
        check_quantisable(g)
        out = Blocks(g.architecture)
        for name, t in g.tensors.items():
            if len(t.shape) == 2:
                n, k = t.shape
                on8 = int8 and qk.takes_int8(t.ggml_type, k)
                packed = qk.repack(g.raw(name), t.ggml_type, n, k, threads, int8=on8)
                out.packed[name] = (packed, t.ggml_type, t.shape)
                if on8:
                    out.int8.add(name)
            else:
                out.plain[name] = g.tensor(name)  # a float32 copy
            g.release(name)  # its pages leave this process's resident memory: one tensor's worth at a time
    finally:
        g.close()
    out.times = {"checksum_s": round(t1 - t0, 2), "repack_s": round(time.perf_counter() - t1, 2)}
    return out


def shell(config: Any) -> torch.nn.Module:
    """The transformers causal LM of `config` on the meta device (importing its code: seconds, done while the blocks
    are still being repacked)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    with torch.device("meta"):
        return cls(config)


def build_model(blocks: Blocks, config: Any, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The transformers causal LM of `config` (or the meta-device `model` given), its linear layers and embedding
    replaced by the kernel's modules over `blocks` and its other weights taken from them; a tied LM head shares the
    embedding's blocks."""
    from specviz.backends.gguf_convert import NotConvertible, weight_names

    model = model if model is not None else shell(config)
    try:
        names = weight_names(SimpleNamespace(architecture=blocks.architecture, tensors=blocks.tensors), model)
    except NotConvertible as e:
        raise NotQuantisable(str(e)) from e
    for gguf_name, hf_name in sorted(names.items(), key=lambda kv: kv[1].endswith(".bias")):  # weights, then biases
        path, _, attr = hf_name.rpartition(".")
        parent, _, child = path.rpartition(".")
        module = model.get_submodule(path)
        if gguf_name in blocks.packed:
            packed, kind, (n, k) = blocks.packed[gguf_name]
            layer = qk.QuantLinear(packed, kind, n, k, None, int8=gguf_name in blocks.int8)
            if isinstance(module, torch.nn.Embedding):
                layer = qk.QuantEmbedding(layer, module.padding_idx)
            elif not isinstance(module, torch.nn.Linear) or attr != "weight":
                raise NotQuantisable(f"{hf_name}: a quantised tensor for a {type(module).__name__}")
            setattr(model.get_submodule(parent), child, layer)
        else:
            setattr(module, attr, torch.nn.Parameter(blocks.plain[gguf_name], requires_grad=False))
    if config.tie_word_embeddings:  # no output.weight: the head reads the embedding's blocks
        emb = model.get_input_embeddings()
        table = emb.table if isinstance(emb, qk.QuantEmbedding) else None
        if not isinstance(table, qk.QuantLinear):
            raise NotQuantisable("a tied LM head over an embedding the kernel does not hold")
        model.set_input_embeddings(qk.QuantEmbedding(table, emb.padding_idx, tied=True))
        model.set_output_embeddings(table)
    rebuild_buffers(model)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise NotQuantisable("the GGUF left parts of the model unset")
    return model.eval()


def read_cached_blocks(path: Path, threads: int = 0, int8: bool | None = None) -> Blocks:
    """A cache folder's GGUF read for the kernel, checked against the checksum its folder's manifest holds."""
    sums = folder_checksums(path.parent)
    if sums is not None and path.name not in sums:
        raise CorruptCache(f"{path} is not in its folder's manifest: the cache is rebuilt")
    return read_blocks(path, None if sums is None else sums[path.name], threads, int8)


def read_in_background(path: Path) -> Blocks:
    """read_cached_blocks for the start's background reader: repacked on its own thread, as the main thread keeps the
    other core busy importing transformers (two threads each would only take turns)."""
    return read_cached_blocks(path, threads=1)


def quant_model(folder: Path, blocks: Callable[[], Blocks | None] | None = None) -> torch.nn.Module:
    """The model of an embedded cache folder (model.gguf, config.json, generation_config.json) on our kernel; blocks:
    gives its file's blocks (read in the background: asked for once the model's shell is built), or None, when it
    is read now, checked against the folder's manifest."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    empty = shell(config)
    got = blocks() if blocks is not None else None
    model = build_model(got if got is not None else read_cached_blocks(folder / MODEL_FILE), config, empty)
    if (folder / "generation_config.json").is_file():  # eos ids and defaults, as from_pretrained(folder) reads them
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    return model


def to_float32(model: torch.nn.Module) -> torch.nn.Module:
    """The float32 path's model, from a quantised one, in place: each QuantLinear becomes the float32 kernel's
    PackedLinear over its exactly dequantised weight (one at a time, so the float32 copy is made once), the embedding
    an nn.Embedding of its dequantised table (a tied one reads the packed head): the numbers SPECVIZ_QUANT=0 runs."""
    from specviz.backends.kernels import PackedEmbedding, PackedLinear

    emb = model.get_input_embeddings()
    tied = isinstance(emb, qk.QuantEmbedding) and isinstance(emb.table, list)
    tables = {id(m.layer()) for m in model.modules() if isinstance(m, qk.QuantEmbedding) and not tied}
    for name, mod in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(mod, qk.QuantLinear) and id(mod) not in tables:
            with torch.device("meta"):
                lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            lin.weight = torch.nn.Parameter(mod.weight, requires_grad=False)
            if mod.bias is not None:
                lin.bias = mod.bias
            setattr(model.get_submodule(parent), child, PackedLinear(lin))
        elif isinstance(mod, qk.QuantEmbedding) and not tied:
            table = torch.nn.Embedding.from_pretrained(mod.weight, freeze=True, padding_idx=mod.padding_idx)
            setattr(model.get_submodule(parent), child, table)
    if tied:
        model.set_input_embeddings(PackedEmbedding(model.get_output_embeddings(), emb.padding_idx))
    return model


def describe(model: torch.nn.Module) -> str:
    """'specviz quantised kernel (avx512; Q4_K, Q6_K)': the path and the block types a model runs ('int8 path' and
    its ISA where its layers take it)."""
    layers = [m for m in model.modules() if isinstance(m, qk.QuantLinear)]
    kinds = sorted({qk.TYPES[m.ggml_type] for m in layers})
    ops, _ = qk.quant_kernel()
    isa = qk.isa_name(ops.isa) if ops is not None else "?"
    int8 = sorted({qk.TYPES[m.ggml_type] for m in layers if m.int8})
    if int8 and ops is not None:
        rest = [k for k in kinds if k not in int8]
        exact = f"; exact {isa}: {', '.join(rest)}" if rest else ""
        return f"specviz quantised kernel, int8 path ({qk.isa_name(ops.isa8)}; {', '.join(int8)}{exact})"
    return f"specviz quantised kernel ({isa}; {', '.join(kinds)})"


def is_quant(model: torch.nn.Module) -> bool:
    return any(isinstance(m, qk.QuantLinear) for m in model.modules())
