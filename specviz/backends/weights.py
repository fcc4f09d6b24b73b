"""Cached weights on disk: a safetensors reader (no memory map, several readers) and a streaming writer, the
background reader of a warm start, and the cache of weights already packed for our CPU kernel."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from specviz.backends.kernels import PackedEmbedding, PackedLinear, kernel_tag, swap_shells
from specviz.core.config import ConfigError

READ_THREADS = 4  # parallel readers of one file
READ_PIECE = 64 << 20  # bytes per read
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file read into ordinary memory with no memory map: transformers maps the file, and its pages then
    counted as resident beside the converted weights (measured: peak 17 GB for the pair). Read in 64 MiB pieces by
    READ_THREADS threads: measured on our VM's disk, 4 readers moved 1.29 GB/s where one moved 1.01."""
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        pieces: list[tuple[str, memoryview, int]] = []  # (tensor, where its bytes go, file offset)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in _ST_DTYPES:
                raise ConfigError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know")
            start, end = entry["data_offsets"]
            t = torch.empty(entry["shape"], dtype=_ST_DTYPES[entry["dtype"]])
            view = memoryview(t.view(torch.uint8).reshape(-1).numpy())
            if len(view) != end - start:
                raise ConfigError(f"{path}: tensor {name} does not fill its bytes: delete the folder to rebuild it")
            pieces += [
                (name, view[lo : lo + READ_PIECE], 8 + size + start + lo) for lo in range(0, len(view), READ_PIECE)
            ]
            out[name] = t

        def fill(piece: tuple[str, memoryview, int]) -> None:
            name, view, offset = piece
            done = 0
            while done < len(view):  # a read may return less than asked
                n = os.preadv(f.fileno(), [view[done:]], offset + done)
                if not n:
                    raise ConfigError(f"{path} is truncated at tensor {name}: delete the folder to rebuild it")
                done += n

        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="specviz-read") as pool:
            for _ in pool.map(fill, pieces):  # raises the first failure
                pass
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors to a safetensors file, streamed tensor by tensor (safetensors' own writer copies everything first)."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for t in tensors.values():
            f.write(memoryview(t.detach().contiguous().view(torch.uint8).reshape(-1).numpy()))


def packed_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of a model's packed weights (our kernel's PackedLinear), or None when it has none."""
    return next((m.packed.dtype for m in model.modules() if isinstance(m, PackedLinear)), None)


def packed_file(folder: Path, dtype: torch.dtype) -> Path:
    # a subfolder: the float32 loader reads every *.safetensors file of the folder itself
    return folder / "packed" / f"{str(dtype).removeprefix('torch.')}-{kernel_tag()}.safetensors"


def packed_files(folder: Path) -> list[Path]:
    return [packed_file(folder, d) for d in (torch.float32, torch.bfloat16)]


def save_packed(model: torch.nn.Module, folder: Path) -> Path | None:
    """Save a packed model's weights beside its float32 cache, so the next start reads them instead of packing again
    (written to a temporary name, then fingerprinted and renamed). Not for an input embedding tied to the head."""
    dtype = packed_dtype(model)
    if dtype is None or any(isinstance(m, PackedEmbedding) for m in model.modules()):
        return None
    dest = packed_file(folder, dtype)
    tmp = dest.with_name(dest.name + ".partial")
    try:
        dest.parent.mkdir(exist_ok=True)
        write_safetensors(tmp, model.state_dict())
        print_ = fingerprint(tmp)
        os.replace(tmp, dest)
        dest.with_suffix(".json").write_text(json.dumps({"fingerprint": print_}))
    except OSError:  # a full disk costs the next start its packing pass, nothing else
        tmp.unlink(missing_ok=True)
        return None
    return dest


def evict(paths: Sequence[Path]) -> None:
    """Ask the kernel to drop these files' clean pages from the page cache. A cold build writes about 20 GB (the
    float32 cache, then the packed weights); left there, the float32 pages push out the packed ones, which are what
    the next start reads. Only a hint: pages not yet written back stay, and no error is raised."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):  # no posix_fadvise on this platform
            pass
        finally:
            os.close(fd)


def packed_ok(file: Path) -> bool:
    try:
        return json.loads(file.with_suffix(".json").read_text())["fingerprint"] == fingerprint(file)
    except (OSError, ValueError, KeyError):
        return False


def from_packed(cls: type, config: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model built on the meta device with PackedLinear shells, then given the saved packed weights as they are."""
    dtype = next(v.dtype for k, v in state.items() if k.endswith(".packed"))
    with torch.device("meta"):
        model = cls(config)
    swap_shells(model, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    for name, module in list(model.named_modules()):  # non-persistent buffers (rotary frequencies) are rebuilt
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config=module.config))
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError("packed weights left parts of the model unset")
    return model.eval()


def trim() -> None:
    """Hand freed heap memory back to the system (glibc): packing frees the float32 weights piece by piece, and pieces
    freed in the reading thread's arena would otherwise stay resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def read_folder(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's *.safetensors files."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(read_safetensors(file))
    return state


class CacheReader:
    """Reads the cached weights of a preset's embedded models in a background thread, in order, while the main thread
    imports transformers, builds tokenizers and packs the model before: a warm start then waits mostly on the disk.
    Each path is a cache folder (its float32 safetensors) or a packed-weights file; None (not cached yet) is skipped.
    take() hands each state dict over and keeps no reference, so packing can free the float32 weights as it goes."""

    def __init__(self, paths: Sequence[Path | None]) -> None:
        self.paths = [p for p in paths if p is not None]
        self._pending = list(self.paths)  # what take() has still to hand over (the thread reads self.paths)
        self._out: queue.Queue[tuple[Path, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specviz-weights", daemon=True)
        if self.paths:
            self._thread.start()

    def _run(self) -> None:
        for path in self.paths:
            if self._stop.is_set():
                return
            try:
                self._out.put((path, read_folder(path) if path.is_dir() else read_safetensors(path)))
            except Exception as e:  # handed to take(), which raises it in the loading thread
                self._out.put((path, e))

    def reading(self, path: Path) -> bool:
        return path in self._pending

    def take(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The path's weights (waiting for them), or None when this reader is not reading it."""
        if path not in self._pending:
            return None
        self._pending.remove(path)  # a second model of the same path gets its own, second read
        got, state = self._out.get()
        if got != path:  # models are taken in the order they were listed
            raise RuntimeError(f"weights of {got} arrived where {path} was expected")
        if isinstance(state, Exception):
            raise state
        return state

    def stop(self) -> None:
        self._stop.set()


def fingerprint(path: Path) -> str:
    """Size plus sha256 of the first and last MiB: catches truncated and half-written files in milliseconds."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()
