"""Our linear kernel over packed float32 or bfloat16 weights (packed_linear.cpp), built once with the local C++ compiler
on first use, and the modules that use it: linear layers (and a tied input embedding) holding only the packed weight."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import torch

SOURCE = Path(__file__).with_name("packed_linear.cpp")
LANES = 16  # outputs per packed block (packed_linear.cpp)


_prebuild: threading.Thread | None = None


def prebuild() -> None:
    """Build (or load) the kernel in a background thread now: a cold start compiles it (about a minute on our 2-core
    CPU) while the models are dequantised, a warm start loads it while their weights are read."""
    global _prebuild
    if _prebuild is None:
        # not a daemon: killed mid-build at exit, it would leave torch's build lock behind and the next start waiting
        _prebuild = threading.Thread(target=_kernel, name="specviz-kernel", daemon=False)
        _prebuild.start()


def kernel() -> tuple[SimpleNamespace | None, str]:
    """(the compiled ops pack_weight / packed_linear, or None; what happened). SPECVIZ_KERNEL=0 turns it off."""
    if _prebuild is not None and _prebuild is not threading.current_thread():
        _prebuild.join()  # one build at a time
    return _kernel()


@functools.cache
def _kernel() -> tuple[SimpleNamespace | None, str]:
    if os.environ.get("SPECVIZ_KERNEL", "1") == "0":
        return None, "off (SPECVIZ_KERNEL=0)"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, f"CPU capability {torch.backends.cpu.get_cpu_capability()} lacks AVX2"
    try:
        from torch.utils.cpp_extension import load

        mod = load(
            name="specviz_packed_linear",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-mavx2", "-mfma", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        return SimpleNamespace(pack_weight=mod.pack_weight, packed_linear=mod.packed_linear), "compiled"
    except Exception as e:  # no compiler, no ninja, a build error: the model still runs on BLAS
        return None, f"build failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"


@functools.cache
def kernel_tag() -> str:
    """Names the packed layout: a hash of the kernel's source, so weights packed by another version are never read."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def unpack_rows(packed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of the (N, K) weight that `packed` (N/16, K, 16) holds: ids.shape + (K,), bitwise the original's."""
    return packed[torch.div(ids, LANES, rounding_mode="floor"), :, ids % LANES]


class PackedLinear(torch.nn.Module):
    """nn.Linear (CPU, float32 in and out) holding only its packed weight, float32 or bfloat16 (the original is
    released once nothing else holds it), run by our kernel for every pass: each row's result is the same whatever
    rows come with it."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype = torch.float32, shell: bool = False) -> None:
        """shell: leave the weights empty on the meta device, to be filled by load_state_dict(assign=True) from packed
        weights saved earlier (no packing pass)."""
        super().__init__()
        ops = kernel()[0]
        if ops is None:
            raise RuntimeError(f"packed linear kernel unavailable: {kernel()[1]}")
        n, k = self.out_features, self.in_features = linear.out_features, linear.in_features
        if shell:
            packed = torch.empty((n + LANES - 1) // LANES, k, LANES, dtype=dtype, device="meta")
            bias = None if linear.bias is None else torch.empty(n, device="meta")
        else:
            packed = ops.pack_weight(linear.weight.detach().to(dtype))
            bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.nn.Parameter(packed, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self._empty = torch.empty(0)
        self._linear = ops.packed_linear

    @property
    def weight(self) -> torch.Tensor:
        """The (N, K) weight, unpacked: a new tensor each time (for callers that need the matrix, e.g. Medusa)."""
        return unpack_rows(self.packed, torch.arange(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self._empty if self.bias is None else self.bias
        return self._linear(x.float(), self.packed, bias, self.out_features).to(x.dtype)


class PackedEmbedding(torch.nn.Module):
    """An input embedding tied to a PackedLinear LM head, reading its rows from the packed weight (no second copy)."""

    def __init__(self, head: PackedLinear, padding_idx: int | None = None) -> None:
        super().__init__()
        self.head = [head]  # a list, so the head's weight is not registered twice as a parameter
        self.num_embeddings, self.embedding_dim, self.padding_idx = head.out_features, head.in_features, padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.head[0].weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return unpack_rows(self.head[0].packed, ids).float()  # bf16 -> float32 is exact


def swap_linears(
    module: torch.nn.Module, skip: tuple[str, ...] = (), dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Every nn.Linear not named in `skip` becomes a PackedLinear holding `dtype` weights, in place, one at a time (so
    packing takes one layer's worth of extra memory); an input embedding tied to the LM head reads the packed head."""
    get_in = getattr(module, "get_input_embeddings", None)
    get_out = getattr(module, "get_output_embeddings", None)
    emb, head = (get_in(), get_out()) if get_in and get_out else (None, None)
    tied = isinstance(emb, torch.nn.Embedding) and isinstance(head, torch.nn.Linear) and emb.weight is head.weight
    _swap(module, skip, dtype)
    if tied:
        packed_head = module.get_output_embeddings()
        if isinstance(packed_head, PackedLinear):
            module.set_input_embeddings(PackedEmbedding(packed_head, emb.padding_idx))  # type: ignore[union-attr]
    return module


def swap_shells(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Every nn.Linear becomes an empty PackedLinear shell of `dtype` (for a model built on the meta device)."""
    _swap(module, (), dtype, shell=True)
    return module


def _swap(module: torch.nn.Module, skip: tuple[str, ...], dtype: torch.dtype, shell: bool = False) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and name not in skip:
            setattr(module, name, PackedLinear(child, dtype, shell))
            child.weight = None  # type: ignore[assignment]  # drop our reference now, not at the end of the walk
        else:
            _swap(child, skip, dtype, shell)
