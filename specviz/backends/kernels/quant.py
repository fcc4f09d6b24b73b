"""Our kernel over GGUF's quantised blocks (quant_*.cpp): built once with the C++ compiler into a plain shared library
called through ctypes (no torch extension headers: seconds to build, where packed_linear.cpp takes a minute), and the
modules that use it: a linear layer and an embedding holding only the repacked blocks."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from specviz.backends.kernels import LANES, load_or_build

HERE = Path(__file__).parent
NAME = "specviz_quant"
HEADERS = ("quant_common.h", "quant_kernel.h", "quant_int8.h", "quant_int8_kernel.h")
_X86 = platform.machine().lower() in ("x86_64", "amd64")
# the per-ISA files are compiled for their ISA by their own pragmas, the rest for the build's default target; no
# -march=native: which path runs is chosen at run time (sv_best_isa, SPECVIZ_KERNEL_ISA)
SOURCES = ("quant_linear.cpp", "quant_portable.cpp") + (
    ("quant_avx2.cpp", "quant_avx512.cpp", "quant_int8_avx2.cpp", "quant_int8_avx512.cpp") if _X86 else ()
)
# -ffp-contract=off: a * b - c must stay a multiply and a subtract, as in the reference dequantiser; -fopenmp:
# at::parallel_for is inline and runs serially without it (the OpenMP runtime is torch's own libgomp, by soname)
CFLAGS = ["-O3", "-std=c++17", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-fopenmp"]
ABI = 3  # sv_abi() of the sources here
ISAS = {"portable": 0, "avx2": 1, "avx512": 2}
# ggml type ids this kernel takes (gguf_reader.py), and the weights they store per block
Q5_0, Q8_0, Q4_K, Q6_K = 6, 8, 12, 14
TYPES = {Q5_0: "Q5_0", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}
_GGUF_BLOCK = {Q5_0: (32, 22), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}  # (weights, bytes) per GGUF block

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "sv_abi": (_INT, []),
    "sv_isa_ok": (_INT, [_INT]),
    "sv_best_isa": (_INT, []),
    "sv_packed_bytes": (_I64, [_INT, _I64, _I64]),
    "sv_repack": (_INT, [_INT, _P, _I64, _I64, _P, _INT]),
    "sv_linear": (_INT, [_INT, _INT, _P, _I64, _P, _P, _P, _I64, _I64]),
    "sv_rows": (_INT, [_INT, _P, _I64, _I64, _P, _I64, _P]),
    "sv8_isa_ok": (_INT, [_INT]),
    "sv8_best_isa": (_INT, []),
    "sv8_packed_bytes": (_I64, [_INT, _I64, _I64]),
    "sv8_repack": (_INT, [_INT, _P, _I64, _I64, _P, _INT]),
    "sv8_linear": (_INT, [_INT, _INT, _P, _I64, _P, _P, _P, _I64, _I64]),
    "sv8_rows": (_INT, [_INT, _P, _I64, _I64, _P, _I64, _P]),
}


def _torch_lib() -> Path:
    return Path(torch.__file__).parent / "lib"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


@functools.cache
def toolchain() -> str:
    """What the build depends on (compiler, torch, Python, machine, sources, flags), in one string: the build folder's
    key. The CPU is not part of it: the library picks its path at run time, so one build serves any x86 CPU."""
    try:
        cxx = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        cxx = type(e).__name__
    src = hashlib.sha256(b"".join((HERE / f).read_bytes() for f in (*SOURCES, *HEADERS))).hexdigest()
    parts = [
        f"{_compiler()}: {(cxx.splitlines() or [''])[0]}",
        f"torch {torch.__version__} {torch.version.git_version} {Path(torch.__file__).parent}",
        f"python {sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} {platform.machine()}",
        src,
        repr(CFLAGS),
    ]
    return "\n".join(parts)


def build_dir() -> Path:
    """<torch extensions root>/specviz/<NAME>-<hash of the toolchain> (TORCH_EXTENSIONS_DIR moves the root)."""
    from torch.utils.cpp_extension import get_default_build_root

    key = hashlib.sha256(toolchain().encode()).hexdigest()[:16]
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "specviz" / f"{NAME}-{key}"


def _lib_path(folder: Path) -> Path:
    return folder / f"lib{NAME}.so"


def _open(folder: Path) -> ctypes.CDLL | None:
    """The library of a finished build folder, its functions typed; None when it has none or it will not load."""
    path = _lib_path(folder)
    if not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        return lib if lib.sv_abi() == ABI else None
    except (OSError, AttributeError):
        return None


def _build(work: Path) -> ctypes.CDLL:
    """Compile each source in parallel (the ISA files are the slow ones), then link against torch's libraries
    (at::parallel_for runs on torch's own thread pool)."""
    inc = Path(torch.__file__).parent / "include"
    jobs = []
    for src in SOURCES:
        obj = work / (Path(src).stem + ".o")
        cmd = [_compiler(), *CFLAGS, "-isystem", str(inc), "-c", str(HERE / src), "-o", str(obj)]
        jobs.append((obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    errors = [f"{p.args[-3]}: {p.communicate()[0][-1500:]}" for _, p in jobs if p.wait() != 0]
    if errors:
        raise RuntimeError("compiling the quantised kernel failed: " + errors[0])
    lib = _lib_path(work)
    link = [
        _compiler(),
        "-shared",
        "-fopenmp",
        *(str(o) for o, _ in jobs),
        "-o",
        str(lib),
        f"-L{_torch_lib()}",
        "-lc10",
    ]
    link += ["-ltorch_cpu", f"-Wl,-rpath,{_torch_lib()}"]
    out = subprocess.run(link, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"linking the quantised kernel failed: {out.stdout[-800:]}{out.stderr[-800:]}")
    built = _open(work)
    if built is None:
        raise RuntimeError(f"the quantised kernel built in {work} does not load")
    return built


_prebuild: threading.Thread | None = None


def prebuild() -> None:
    """Build (or load) the library in a background thread now, while the tokenizer and models are read."""
    global _prebuild
    if _prebuild is None:
        _prebuild = threading.Thread(target=_library, name="specviz-quant-kernel", daemon=False)
        _prebuild.start()


def quant_kernel() -> tuple[SimpleNamespace | None, str]:
    """(the library and the path it runs, or None; what happened). SPECVIZ_QUANT=0 turns it off (the float32 path);
    SPECVIZ_KERNEL_ISA=portable|avx2|avx512 forces a path."""
    if _prebuild is not None and _prebuild is not threading.current_thread():
        _prebuild.join()
    return _library()


@functools.cache
def _library() -> tuple[SimpleNamespace | None, str]:
    if os.environ.get("SPECVIZ_QUANT", "1") == "0":
        return None, "off (SPECVIZ_QUANT=0)"
    try:
        lib = load_or_build(build_dir(), _open, _build)
    except Exception as e:  # no compiler, a build error: GGUF models take the float32 path
        return None, f"build failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
    forced = os.environ.get("SPECVIZ_KERNEL_ISA", "")
    if forced:
        if forced not in ISAS:
            return None, f"SPECVIZ_KERNEL_ISA={forced!r}: use one of {', '.join(ISAS)}"
        if not lib.sv_isa_ok(ISAS[forced]):
            return None, f"SPECVIZ_KERNEL_ISA={forced}: this CPU cannot run it"
    isa = ISAS[forced] if forced else lib.sv_best_isa()
    # the int8 path's own choice (AVX-512 also needs BW and VNNI for it): the forced path where it runs there
    isa8 = ISAS[forced] if forced and lib.sv8_isa_ok(ISAS[forced]) else lib.sv8_best_isa()
    ops = SimpleNamespace(lib=lib, isa=isa, isa8=isa8)
    return ops, f"compiled, {isa_name(isa)}{' (forced)' if forced else ''}"


def isa_name(isa: int) -> str:
    return next(k for k, v in ISAS.items() if v == isa)


def available_isas() -> list[str]:
    """The paths this CPU can run (each gives the same bits)."""
    ops = _ops()
    return [name for name, i in ISAS.items() if ops.lib.sv_isa_ok(i)]


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[None]:
    """Run every pass on path `name` inside the block (tests compare the paths' bits)."""
    ops = _ops()
    if not ops.lib.sv_isa_ok(ISAS[name]) or not ops.lib.sv8_isa_ok(ISAS[name]):
        raise RuntimeError(f"this CPU cannot run the {name} path")
    saved = ops.isa, ops.isa8
    ops.isa = ops.isa8 = ISAS[name]
    try:
        yield
    finally:
        ops.isa, ops.isa8 = saved


def _ops() -> SimpleNamespace:
    if _prebuild is None or not _prebuild.is_alive():
        ops = _library()[0]  # the common case, without quant_kernel()'s join
        if ops is not None:
            return ops
    ops, why = quant_kernel()
    if ops is None:
        raise RuntimeError(f"quantised kernel unavailable: {why}")
    return ops


def int8_mode() -> bool:
    """Whether GGUF models take the int8 path (SPECVIZ_QUANT=int8): Q4_K and Q6_K layers quantise each row's inputs
    to 8 bits per 32 and take integer dot products (quant_int8.h): faster, batch-invariant, but not the float32
    path's numbers. The default is the exact path."""
    return os.environ.get("SPECVIZ_QUANT", "1") == "int8"


def takes_int8(ggml_type: int, k: int) -> bool:
    """Whether the int8 path takes a (., k) weight of this ggml type (Q4_K and Q6_K; Q5_0 and Q8_0 stay exact)."""
    return ggml_type in (Q4_K, Q6_K) and k % 256 == 0


def supported(ggml_type: int, k: int) -> bool:
    """Whether the kernel takes a (., k) weight of this ggml type (K-quants need k a multiple of 256, the rest 32)."""
    return ggml_type in TYPES and k % (256 if ggml_type in (Q4_K, Q6_K) else 32) == 0


def random_blocks(ggml_type: int, n: int, k: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    """n rows of k weights as random GGUF blocks of ggml_type (uint8, GGUF's own layout): any bytes, but sane
    (finite, small: normal times `scale`) f16 scales; for tests and the kernel bench."""
    per, size = (
        (256, {Q4_K: 144, Q6_K: 210}[ggml_type]) if ggml_type in (Q4_K, Q6_K) else (32, {Q5_0: 22, Q8_0: 34}[ggml_type])
    )
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, k // per, size), dtype=torch.uint8, generator=g)
    for at in (0, 2) if ggml_type == Q4_K else (208,) if ggml_type == Q6_K else (0,):
        half = (torch.randn(n, k // per, generator=g) * scale).half()
        raw[:, :, at : at + 2] = half.view(torch.uint8).reshape(n, k // per, 2)
    return raw.reshape(-1)


def packed_bytes(ggml_type: int, n: int, k: int) -> int:
    return int(_ops().lib.sv_packed_bytes(ggml_type, n, k))


def repack(
    raw: np.ndarray | torch.Tensor, ggml_type: int, n: int, k: int, threads: int = 0, int8: bool = False
) -> torch.Tensor:
    """A GGUF tensor's bytes (`raw`: n rows of k weights in ggml_type blocks, contiguous uint8, e.g. a view of the
    mapped file) repacked for the kernel: uint8 (ceil(n/16), bytes per block), filled by all of torch's threads
    (threads=1: by this one alone); int8: in the int8 path's layout (takes_int8 types only)."""
    ops = _ops()
    size = int(ops.lib.sv8_packed_bytes(ggml_type, n, k)) if int8 else packed_bytes(ggml_type, n, k)
    if not size:
        path = "int8 path" if int8 else "quantised kernel"
        raise ValueError(f"the {path} does not take {TYPES.get(ggml_type, ggml_type)} rows of {k}")
    arr = raw.numpy() if isinstance(raw, torch.Tensor) else raw  # held here until the call returns
    if arr.dtype != np.uint8 or not arr.flags.c_contiguous or arr.nbytes != gguf_bytes(ggml_type, n, k):
        raise ValueError(f"expected {gguf_bytes(ggml_type, n, k)} contiguous bytes of GGUF blocks, got {arr.nbytes}")
    out = torch.empty(size, dtype=torch.uint8)
    fn = ops.lib.sv8_repack if int8 else ops.lib.sv_repack
    if fn(ggml_type, arr.ctypes.data, n, k, out.data_ptr(), threads) != 0:
        raise ValueError("repacking failed")
    return out.view((n + LANES - 1) // LANES, -1)


def gguf_bytes(ggml_type: int, n: int, k: int) -> int:
    """Bytes of an (n, k) tensor in GGUF's own blocks of ggml_type."""
    per, size = _GGUF_BLOCK[ggml_type]
    return n * (k // per) * size


def linear(
    x: torch.Tensor, packed: torch.Tensor, ggml_type: int, n: int, bias: torch.Tensor | None, int8: bool = False
) -> torch.Tensor:
    """x (..., K) -> (..., n) float32 over the repacked weight: each output is x's row against the weight's row, FMA
    over k in order from 0, then + bias, whatever the other rows of x (int8: on the int8 path, its layout)."""
    ops = _ops()
    k = x.shape[-1]
    xc = x.reshape(-1, k).float().contiguous()
    y = torch.empty(xc.shape[0], n, dtype=torch.float32)
    b = 0 if bias is None else bias.data_ptr()
    fn, isa = (ops.lib.sv8_linear, ops.isa8) if int8 else (ops.lib.sv_linear, ops.isa)
    if fn(isa, ggml_type, xc.data_ptr(), xc.shape[0], packed.data_ptr(), b, y.data_ptr(), n, k):
        raise ValueError(f"the quantised kernel refused a pass over {TYPES.get(ggml_type, ggml_type)} rows of {k}")
    return y.view(*x.shape[:-1], n)


def rows(packed: torch.Tensor, ggml_type: int, n: int, k: int, ids: torch.Tensor, int8: bool = False) -> torch.Tensor:
    """Rows `ids` of the repacked (n, k) weight (int8: in the int8 path's layout), dequantised exactly: ids.shape +
    (k,) float32."""
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(flat.numel(), k, dtype=torch.float32)
    lib = _ops().lib
    fn = lib.sv8_rows if int8 else lib.sv_rows
    if fn(ggml_type, packed.data_ptr(), n, k, flat.data_ptr(), flat.numel(), out.data_ptr()):
        raise IndexError(f"row ids outside 0..{n - 1}")
    return out.view(*ids.shape, k)


class QuantLinear(torch.nn.Module):
    """nn.Linear (CPU, float32 out) over a GGUF weight kept as its repacked quantised blocks, run by our kernel for
    every pass: each weight dequantised in registers to exactly gguf's float32 value, each row's result the same
    whatever rows come with it, and bitwise what the float32 packed kernel gives on the dequantised weight. int8:
    blocks in the int8 path's layout, each pass on it (each row's result still independent of the other rows)."""

    def __init__(
        self,
        packed: torch.Tensor,
        ggml_type: int,
        out_features: int,
        in_features: int,
        bias: torch.Tensor | None,
        int8: bool = False,
    ) -> None:
        super().__init__()
        self.ggml_type, self.out_features, self.in_features, self.int8 = ggml_type, out_features, in_features, int8
        self.packed = torch.nn.Parameter(packed, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.float().contiguous(), requires_grad=False)

    @classmethod
    def from_gguf(
        cls,
        raw: np.ndarray | torch.Tensor,
        ggml_type: int,
        n: int,
        k: int,
        bias: torch.Tensor | None = None,
        int8: bool = False,
    ) -> QuantLinear:
        """From the GGUF tensor's bytes `raw` (n rows of k)."""
        return cls(repack(raw, ggml_type, n, k, int8=int8), ggml_type, n, k, bias, int8)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight, dequantised exactly (an embedding lookup, a Medusa head's vocabulary rows)."""
        return rows(self.packed, self.ggml_type, self.out_features, self.in_features, ids, self.int8)

    @property
    def weight(self) -> torch.Tensor:
        """The (N, K) weight dequantised: a new float32 tensor each time, for callers that need the matrix."""
        return self.rows(torch.arange(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # linear() inlined: a pass calls ~200 of these, so each call's Python work counts (about 10 us here)
        ops = _ops()
        xc = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        y = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32)
        k, b = self.in_features, 0 if self.bias is None else self.bias.data_ptr()
        rows = xc.numel() // k
        fn, isa = (ops.lib.sv8_linear, ops.isa8) if self.int8 else (ops.lib.sv_linear, ops.isa)
        if fn(isa, self.ggml_type, xc.data_ptr(), rows, self.packed.data_ptr(), b, y.data_ptr(), self.out_features, k):
            raise ValueError(f"the quantised kernel refused a pass over {TYPES[self.ggml_type]} rows of {k}")
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        int8 = ", int8 path" if self.int8 else ""
        return f"{TYPES[self.ggml_type]}{int8}, in_features={self.in_features}, out_features={self.out_features}"


class QuantEmbedding(torch.nn.Module):
    """An input embedding reading its rows from a QuantLinear's blocks, dequantised exactly: its own table, or the LM
    head's when the two are tied (no second copy)."""

    def __init__(self, table: QuantLinear, padding_idx: int | None = None, tied: bool = False) -> None:
        super().__init__()
        # a tied table is held in a list, so that the head's blocks are not registered twice
        self.table: QuantLinear | list[QuantLinear] = [table] if tied else table
        self.num_embeddings, self.embedding_dim, self.padding_idx = table.out_features, table.in_features, padding_idx

    def layer(self) -> QuantLinear:
        """The QuantLinear whose rows this embedding reads."""
        return self.table[0] if isinstance(self.table, list) else self.table

    @property
    def weight(self) -> torch.Tensor:
        return self.layer().weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer().rows(ids)
