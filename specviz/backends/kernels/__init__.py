"""Our linear kernel over packed float32 or bfloat16 weights (packed_linear.cpp), built once with the local C++ compiler
on first use, and the modules that use it: linear layers (and a tied input embedding) holding only the packed weight."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TypeVar

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no build lock; private build folders still keep builds apart
    fcntl = None  # type: ignore[assignment]

SOURCE = Path(__file__).with_name("packed_linear.cpp")
LANES = 16  # outputs per packed block (packed_linear.cpp)
NAME = "specviz_packed_linear"
CFLAGS = ["-O3", "-march=native", "-mavx2", "-mfma", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
LOCK_WAIT_S = 600.0  # the longest wait on another process's build (40-130 s on our 2-core VM) before building too
_LIB_EXT = ".pyd" if sys.platform == "win32" else ".so"
T = TypeVar("T")


_prebuild: threading.Thread | None = None


def prebuild() -> None:
    """Build (or load) the kernel in a background thread now: a cold start compiles it (about a minute on our 2-core
    CPU) while the models are dequantised, a warm start loads it while their weights are read."""
    global _prebuild
    if _prebuild is None:
        # not a daemon: a build cut short at exit would leave its work for the next start to do again
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
        mod = _load_or_build(build_dir())
        return SimpleNamespace(pack_weight=mod.pack_weight, packed_linear=mod.packed_linear), "compiled"
    except Exception as e:  # no compiler, no ninja, a build error: the model still runs on BLAS
        return None, f"build failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"


def _version(tool: str) -> str:
    """A tool's resolved path and the first line of its --version (torch runs the one on PATH), or why not."""
    path = shutil.which(tool)
    if path is None:
        return f"{tool}: not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        out = type(e).__name__
    return f"{os.path.realpath(path)}: {(out.splitlines() or [''])[0]}"


def _cpu() -> str:
    """The CPU's model and flags: -march=native builds for this CPU, and a cache folder may be shared by others."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "|".join(next((ln for ln in lines if ln.startswith(k)), "") for k in ("model name", "flags"))


@functools.cache
def toolchain() -> str:
    """Everything a build depends on (compiler, ninja, torch, Python, CPU, source, flags), in one string: builds of
    two toolchains (say the venv's ninja 1.13 and the system's 1.11) get two folders instead of undoing each other."""
    parts = [
        _version(os.environ.get("CXX", "c++")),
        _version("ninja"),
        f"torch {torch.__version__} {torch.version.git_version} {Path(torch.__file__).parent}",
        f"python {sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} {platform.machine()}",
        _cpu(),
        hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        repr((CFLAGS, LDFLAGS)),
    ]
    return "\n".join(parts)


def build_dir() -> Path:
    """The finished build of this toolchain: <torch extensions root>/specviz/<NAME>-<hash of the toolchain>; the
    root is torch's (TORCH_EXTENSIONS_DIR moves it)."""
    from torch.utils.cpp_extension import get_default_build_root

    key = hashlib.sha256(toolchain().encode()).hexdigest()[:16]
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "specviz" / f"{NAME}-{key}"


def _import(folder: Path) -> ModuleType | None:
    """The built module of a finished build folder, or None when it has none or it will not load."""
    lib = folder / f"{NAME}{_LIB_EXT}"
    if not lib.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(NAME, lib)
        if spec is None or spec.loader is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    except (ImportError, OSError):
        return None


def _load_or_build(final: Path) -> ModuleType:
    """The packed kernel's finished build, else built now by torch's cpp_extension (load_or_build)."""
    return load_or_build(final, _import, _torch_build)


def _torch_build(work: Path) -> ModuleType:
    from torch.utils.cpp_extension import load

    return load(
        name=NAME,
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(work),
        verbose=False,
    )


def load_or_build(final: Path, load: Callable[[Path], T | None], build: Callable[[Path], T]) -> T:
    """Load the finished build in `final`, else build it: in a private folder (torch's own lock file inside it is
    then never shared, so a build killed by SIGKILL leaves nothing that blocks the next start), renamed into place
    once done, behind a lock the system frees when its holder dies. A finished build loads with no lock and no
    compiler. load(folder): the built thing, or None when the folder holds none that works; build(work): build into
    `work` and return what it built."""
    mod = load(final)
    if mod is not None:
        return mod
    final.parent.mkdir(parents=True, exist_ok=True)
    with BuildLock(final.with_name(final.name + ".lock")) as held:
        mod = load(final)  # built by the process we waited for
        if mod is not None:
            return mod
        if held:
            _sweep(final)
            shutil.rmtree(final, ignore_errors=True)  # a folder that will not load (say, cut short by a crash)
        work = final.with_name(f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        work.mkdir()
        try:
            built = build(work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        try:
            os.rename(work, final)  # atomic: the folder is whole or absent
        except OSError:  # another build got there first (we did not hold the lock): ours goes
            shutil.rmtree(work, ignore_errors=True)
        return built


def _sweep(final: Path) -> None:
    """Delete private build folders of dead builds (of this host: their pid is in the name; others' after a day)."""
    host = socket.gethostname()
    for d in final.parent.glob(f"{final.name}.tmp-*"):
        rest = d.name.removeprefix(f"{final.name}.tmp-")
        h, _, tail = rest.rpartition("-")[0].rpartition("-")
        try:
            dead = not _alive(int(tail)) if h == host else time.time() - d.stat().st_mtime > 86400
        except (ValueError, OSError):
            continue
        if dead:
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class BuildLock:
    """An exclusive flock on a file that records its holder's pid: the system releases it when the holder dies, even
    by SIGKILL, so a stale lock (a dead pid in the file) is taken over at once. A live holder is waited for, up to
    `timeout` seconds, then given up on: __enter__ gives whether the lock is held (private build folders make a
    build without it safe, only slower)."""

    def __init__(self, path: Path, timeout: float = LOCK_WAIT_S, poll: float = 0.2) -> None:
        self.path, self.timeout, self.poll = path, timeout, poll
        self._fd: int | None = None

    def __enter__(self) -> bool:
        if fcntl is None:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never unlinked: two lock files cannot coexist
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    os.close(fd)
                    print(
                        f"specviz: gave up waiting on {self.path} after {waited:.0f} s; building here too",
                        file=sys.stderr,
                    )
                    return False
                if not told and waited > 5:  # not silent: the user sees what the start is waiting for
                    print(
                        f"specviz: waiting for process {self.owner()} to finish building the kernel (lock {self.path})",
                        file=sys.stderr,
                    )
                    told = True
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode(), 0)
        self._fd = fd
        return True

    def owner(self) -> str:
        """The pid (host, start time) that the lock file names: its last holder's."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


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
