"""A GGUF file read fast: its metadata and tensor table parsed in one pass, its tensors dequantised with torch."""

from __future__ import annotations

import contextlib
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ggml tensor type ids, and BLOCK: (elements per block, bytes per block); plain floats are blocks of one
F32, F16, BF16 = 0, 1, 30
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
BLOCK = {
    F32: (1, 4),
    F16: (1, 2),
    BF16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q8_1: (32, 36),
    Q2_K: (256, 84),
    Q3_K: (256, 110),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (rows first); ggml lists dimensions the other way round
    ggml_type: int
    offset: int  # from the start of the file
    nbytes: int


class GGUFFile:
    """One GGUF file, memory-mapped. `meta` holds every metadata value (string arrays as lists of str: a 151k-token
    vocabulary parses in well under a second, where gguf's GGUFReader took 15 s); `tensors` maps names to TensorInfo;
    `tensor(name)` dequantises one tensor to float32."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._map
        if buf[:4] != b"GGUF":
            raise GGUFError(f"{self.path} is not a GGUF file (it does not start with 'GGUF')")
        version, n_tensors, n_meta = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise GGUFError(f"{self.path} is GGUF version {version}; versions 2 and 3 are supported")
        self._pos = 24
        self.meta: dict[str, Any] = {}
        for _ in range(n_meta):
            key = self._string()
            (kind,) = self._unpack("<I")
            self.meta[key] = self._value(kind)
        table = []
        for _ in range(n_tensors):
            name = self._string()
            (ndim,) = self._unpack("<I")
            dims = self._unpack(f"<{ndim}Q")
            kind, offset = self._unpack("<IQ")
            table.append((name, tuple(reversed(dims)), kind, offset))
        align = int(self.meta.get("general.alignment", 32))
        start = (self._pos + align - 1) // align * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, kind, offset in table:
            if kind not in BLOCK:
                raise GGUFError(f"{self.path}: tensor {name} has ggml type {kind}, which specviz cannot read")
            per_block, block_bytes = BLOCK[kind]
            nbytes = math.prod(shape) // per_block * block_bytes
            self.tensors[name] = TensorInfo(name, shape, kind, start + offset, nbytes)

    @property
    def architecture(self) -> str:
        return str(self.meta.get("general.architecture", ""))

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, a read-only view of the map."""
        t = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process's resident memory once it has been copied out (the page cache
        keeps them): repacking a model tensor by tensor then holds one tensor's pages at a time, not the file's."""
        t = self.tensors[name]
        lo = t.offset // mmap.PAGESIZE * mmap.PAGESIZE
        with contextlib.suppress(OSError, AttributeError, ValueError):  # no madvise here: the pages just stay
            self._map.madvise(mmap.MADV_DONTNEED, lo, t.offset + t.nbytes - lo)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor dequantised to float32, in torch order."""
        t = self.tensors[name]
        return dequantize(self.raw(name), t.ggml_type, t.shape)

    def close(self) -> None:
        # a tensor view may still be alive (say, in a traceback): the map then closes when the view goes
        with contextlib.suppress(BufferError):
            self._map.close()

    # ------------------------------------------------------------ parsing

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = struct.unpack_from("<Q", self._map, self._pos)
        start = self._pos + 8
        self._pos = start + n
        return self._map[start : start + n].decode("utf-8", errors="replace")

    def _value(self, kind: int) -> Any:
        if kind in _SCALAR:
            return self._unpack(_SCALAR[kind])[0]
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, n = self._unpack("<IQ")
            if item in _SCALAR:
                fmt = _SCALAR[item]
                return list(self._unpack(f"<{n}{fmt[1]}"))
            return [self._value(item) for _ in range(n)]
        raise GGUFError(f"{self.path}: metadata value of unknown type {kind}")


# ---------------------------------------------------------------- dequantisation
# Each function takes (blocks, bytes per block) uint8 and returns (blocks, elements per block) float32, with the
# arithmetic in the same order as gguf's reference numpy code, so the results are bit for bit the same (a test checks).


def _half(b: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 stored at byte `at` of each block, as float32. -> (n, 1)"""
    return b[:, at : at + 2].contiguous().view(torch.float16).float()


def _nibbles(q: torch.Tensor, group: int) -> torch.Tensor:
    """Low nibbles of each run of `group` bytes, then their high nibbles. (n, k*group) -> (n, 2*k*group)"""
    q = q.reshape(q.shape[0], -1, 1, group)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(q.shape[0], -1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _half(b, 0)


_BITS = torch.arange(8, dtype=torch.uint8)  # shifts that spread a byte into its 8 bits
_CRUMBS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)  # ... into its four 2-bit pairs


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _half(b, 0)
    # bit j of the little-endian uint32 at bytes 2-5 is the fifth bit of element j
    high = ((b[:, 2:6, None] >> _BITS) & 1).reshape(-1, 32)
    low = _nibbles(b[:, 6:], 16)
    q = (low | (high << 4)).to(torch.int8) - 16
    return d * q.float()


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _half(b, 0), _half(b, 2)
    s = b[:, 4:16].reshape(n, 3, 4)
    sd, sm, smd = s[:, 0], s[:, 1], s[:, 2]  # 6-bit scales and mins of 8 sub-blocks, packed in 12 bytes
    sc = torch.cat([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], dim=1).float()
    mn = torch.cat([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], dim=1).float()
    scale = (d * sc).reshape(n, 8, 1)
    shift = (dmin * mn).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).float()
    return (scale * q - shift).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_half(b, 208) * scales).reshape(n, 16, 1)
    low = _nibbles(ql, 64).reshape(n, 8, 32)
    high = ((qh.reshape(n, -1, 1, 32) >> _CRUMBS) & 0x03).reshape(n, -1, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, 16, -1).float()).reshape(n, 256)


_TORCH = {Q8_0: _q8_0, Q5_0: _q5_0, Q4_K: _q4_k, Q6_K: _q6_k}
_FLOAT = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}
_CHUNK_BLOCKS = 1 << 12  # blocks dequantised at a time: small temporaries are reused, not page-faulted in anew


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """GGUF tensor bytes -> a float32 tensor of `shape` (torch order). Types without a torch version here go through
    gguf's numpy reference."""
    if ggml_type not in _TORCH and ggml_type not in _FLOAT:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as reference

        return torch.from_numpy(reference(raw, GGMLQuantizationType(ggml_type))).reshape(shape)
    data = torch.from_numpy(np.array(raw, copy=True))  # the map is read-only; torch wants writable memory
    if ggml_type in _FLOAT:
        return data.view(_FLOAT[ggml_type]).float().reshape(shape)
    per_block, block_bytes = BLOCK[ggml_type]
    blocks = data.reshape(-1, block_bytes)
    out = torch.empty(blocks.shape[0], per_block, dtype=torch.float32)
    fn = _TORCH[ggml_type]
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[i : i + _CHUNK_BLOCKS] = fn(blocks[i : i + _CHUNK_BLOCKS])
    return out.reshape(shape)
