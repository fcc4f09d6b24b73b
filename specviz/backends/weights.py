"""Cached weights on disk: a safetensors reader (no memory map, several readers) and a streaming writer, both keeping
a full-content checksum (crc32 or sha256 per 64 MiB piece, hashed as the bytes pass), and the
cache of weights already packed for our CPU kernel (the warm start's background reader is cache_reader.py)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from specviz.backends.kernels import PackedEmbedding, PackedLinear, kernel_tag, swap_shells
from specviz.core.config import ConfigError

READ_THREADS = 4  # parallel readers of one file
READ_PIECE = 64 << 20  # bytes per read, and per checksum piece
INTEGRITY = "pieces-1"  # the kind of checksum record below: a record of any other kind (or none) is stale
# the per-piece hash of new records: crc32 (zlib), for speed. Measured reading a 1 GB file on our 2-core VM (shared,
# medians of 7): from disk plain 1476 MB/s, crc32 1160, sha256 683; CPU 0.35 / 0.71 / 1.25 s per GB. A warm start
# reads 8.6 GB, so sha256 would add seconds where crc32 adds about one. crc32 misses random damage to a piece with
# odds of 2^-32 and any burst under 33 bits never; it does not stop a forger, who could rewrite the manifest beside
# the file anyway. Records name their algorithm: switching here leaves caches of the other one valid.
CHECKSUM = "crc32"
MANIFEST = "specviz-manifest.json"  # a cache folder's record of its files (written by cache.write_manifest)
HASH_STEP = 1 << 20  # bytes read then hashed at once while checking (hot in the CPU's cache)
_IOV_MAX = 1024  # iovecs per preadv call (Linux's limit)
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


class CorruptCache(ConfigError):
    """A cached file whose bytes differ from the checksum written with it (or that has none): never used, rebuilt."""


def _header_len(prefix: bytes, size: int) -> int:
    """Bytes before a safetensors file's tensor data (8 + its JSON header), or 0 when `prefix` cannot start one."""
    if len(prefix) < 8:
        return 0
    n = struct.unpack("<Q", prefix[:8])[0]
    return 8 + n if 8 + n <= size else 0


def _spans(size: int, head: int, piece: int) -> list[tuple[int, int]]:
    """The byte ranges a checksum record hashes one each: the header (when there is one), then `piece` bytes at a
    time from the data's start, so a reader can check the header before it trusts it."""
    return ([(0, head)] if head else []) + [(lo, min(lo + piece, size)) for lo in range(head, size, piece)]


class _Crc32:
    """zlib.crc32 behind hashlib's update / hexdigest."""

    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: memoryview | bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def hexdigest(self) -> str:
        return f"{self.crc:08x}"


def _hasher(algo: str) -> Any:
    """A fresh hasher of a record's algorithm; both release the GIL on large buffers, so reader threads hash in
    parallel."""
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "crc32":
        return _Crc32()
    raise CorruptCache(f"checksum algorithm {algo!r} is unknown here: the cache is rebuilt")


def _digest(algo: str, views: Sequence[memoryview | bytes]) -> str:
    h = _hasher(algo)
    for v in views:
        h.update(v)
    return h.hexdigest()


def _record(size: int, head: int, pieces: list[str], algo: str, piece: int) -> dict[str, Any]:
    return {"kind": INTEGRITY, "algo": algo, "size": size, "head": head, "piece": piece, "pieces": pieces}


def sound_record(record: Any) -> bool:
    """Whether `record` is a checksum record of this kind, whole and well typed (not one of before full checksums)."""
    try:
        ints = all(isinstance(record[k], int) for k in ("size", "head", "piece"))
        return (
            record["kind"] == INTEGRITY
            and record["algo"] in ("sha256", "crc32")
            and ints
            and record["piece"] > 0
            and isinstance(record["pieces"], list)
            and all(isinstance(h, str) for h in record["pieces"])
        )
    except (KeyError, TypeError, IndexError):
        return False


def _preadv_all(fd: int, views: list[memoryview], offset: int, what: str) -> None:
    """Fill `views` from the file at `offset` on, in as few preadv calls as the system allows."""
    views = [v for v in views if len(v)]
    i = 0
    while i < len(views):
        n = os.preadv(fd, views[i : i + _IOV_MAX], offset)
        if not n:
            raise CorruptCache(f"{what} is truncated: delete the folder to rebuild it")
        offset += n
        while n:  # a read may return less than asked: skip what was filled
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i], n = views[i][n:], 0


def checksum_file(path: Path, algo: str | None = None, piece: int | None = None) -> dict[str, Any]:
    """The checksum record of any file (for files written by other writers, e.g. transformers' save_pretrained), its
    pieces read and hashed by READ_THREADS threads; algo and piece default to CHECKSUM and READ_PIECE (pass a
    record's own to check a file against it)."""
    algo, piece = algo or CHECKSUM, piece or READ_PIECE
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        head = _header_len(os.pread(fd, 8, 0), size)

        def one(span: tuple[int, int]) -> str:
            h, buf = _hasher(algo), memoryview(bytearray(min(HASH_STEP, span[1] - span[0])))
            for lo in range(span[0], span[1], HASH_STEP):
                step = buf[: min(HASH_STEP, span[1] - lo)]
                _preadv_all(fd, [step], lo, str(path))
                h.update(step)
            return h.hexdigest()

        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="specviz-hash") as pool:
            return _record(size, head, list(pool.map(one, _spans(size, head, piece))), algo, piece)


def file_ok(path: Path, record: dict[str, Any]) -> bool:
    """Whether a file's bytes still match its checksum record (read in full: for small files)."""
    return checksum_file(path, record.get("algo"), record.get("piece")) == record


def read_safetensors(path: Path, expect: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file read into ordinary memory with no memory map: transformers maps the file, and its pages then
    counted as resident beside the converted weights (measured: peak 17 GB for the pair). Read in 64 MiB pieces by
    READ_THREADS threads: measured on our VM's disk, 4 readers moved 1.29 GB/s where one moved 1.01.
    expect: the file's checksum record; each piece is then hashed by the thread that read it (one read, no second
    pass) and any byte that differs raises CorruptCache before the tensors are handed over."""
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, 8, 0)
        head = _header_len(prefix, size)
        if expect is not None and (not sound_record(expect) or (expect["size"], expect["head"]) != (size, head)):
            raise CorruptCache(f"{path}: its size or header differs from its checksum: the cache is rebuilt")
        if not head:
            raise CorruptCache(f"{path} is truncated in its header: delete the folder to rebuild it")
        spans = _spans(size, head, expect["piece"] if expect else READ_PIECE)
        sums = expect["pieces"] if expect else None
        if sums is not None and len(sums) != len(spans):
            raise CorruptCache(f"{path}: its checksum record does not fit the file: the cache is rebuilt")
        raw = bytearray(head - 8)
        _preadv_all(fd, [memoryview(raw)], 8, str(path))
        algo = expect["algo"] if expect else CHECKSUM
        if sums is not None and _digest(algo, [prefix, raw]) != sums[0]:  # checked before the header is believed
            raise CorruptCache(f"{path}: its header fails its checksum: the cache is rebuilt")
        header = json.loads(raw)
        segments: list[tuple[int, memoryview]] = []  # (file offset, where those bytes go), in file order
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in _ST_DTYPES:
                raise ConfigError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know")
            start, end = entry["data_offsets"]
            t = torch.empty(entry["shape"], dtype=_ST_DTYPES[entry["dtype"]])
            view = memoryview(t.view(torch.uint8).reshape(-1).numpy())
            if len(view) != end - start:
                raise CorruptCache(f"{path}: tensor {name} does not fill its bytes: delete the folder to rebuild it")
            if head + end > size:
                raise CorruptCache(f"{path} is truncated at tensor {name}: delete the folder to rebuild it")
            segments.append((head + start, view))
            out[name] = t
        segments.sort(key=lambda s: s[0])
        if sums is not None:  # bytes no tensor holds (gaps, a tail) are read too, so that every byte is checked
            cursor, filled = head, []
            for lo, view in segments:
                if lo < cursor:
                    raise CorruptCache(f"{path}: tensors overlap: the cache is rebuilt")
                if lo > cursor:
                    filled.append((cursor, memoryview(bytearray(lo - cursor))))
                filled.append((lo, view))
                cursor = lo + len(view)
            if cursor < size:
                filled.append((cursor, memoryview(bytearray(size - cursor))))
            segments = filled
        # each data span: runs of adjacent segments' slices, one preadv per run
        work: list[tuple[int, list[tuple[int, list[memoryview]]]]] = []
        k = 0
        for i, (lo, hi) in enumerate(spans[1:], 1):
            while k < len(segments) and segments[k][0] + len(segments[k][1]) <= lo:
                k += 1
            runs: list[tuple[int, list[memoryview]]] = []
            j = k
            while j < len(segments) and segments[j][0] < hi:
                at, view = segments[j]
                a, b = max(lo, at), min(hi, at + len(view))
                if b > a:
                    if runs and runs[-1][0] + sum(len(v) for v in runs[-1][1]) == a:
                        runs[-1][1].append(view[a - at : b - at])
                    else:
                        runs.append((a, [view[a - at : b - at]]))
                j += 1
            work.append((i, runs))

        def fill(job: tuple[int, list[tuple[int, list[memoryview]]]]) -> None:
            i, runs = job
            if sums is None:
                for at, views in runs:
                    _preadv_all(fd, list(views), at, str(path))
                return
            h = _hasher(algo)
            for at, views in runs:
                for v in views:  # hashed HASH_STEP bytes at a time, just read: still in the CPU's cache
                    for lo in range(0, len(v), HASH_STEP):
                        step = v[lo : lo + HASH_STEP]
                        _preadv_all(fd, [step], at + lo, str(path))
                        h.update(step)
                    at += len(v)
            if h.hexdigest() != sums[i]:
                lo, hi = spans[i]
                raise CorruptCache(f"{path}: bytes {lo}-{hi} fail their checksum: the cache is rebuilt")

        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="specviz-read") as pool:
            for _ in pool.map(fill, work):  # raises the first failure
                pass
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensors to a safetensors file, streamed tensor by tensor (safetensors' own writer copies everything first).
    -> its checksum record, hashed from memory by a pool of threads while the file is written (no read back)."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {}
    offset = 0
    flat = [t.detach().contiguous().view(torch.uint8).reshape(-1) for t in tensors.values()]  # held until hashed
    for (name, t), b in zip(tensors.items(), flat):
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
    head = json.dumps(header).encode()
    head = struct.pack("<Q", len(head) + (-len(head) % 8)) + head + b" " * (-len(head) % 8)  # data aligned to 8
    views = [memoryview(b.numpy()) for b in flat]
    spans = _spans(len(head) + offset, len(head), READ_PIECE)
    pieces: list[list[memoryview | bytes]] = [[head]] + [[] for _ in spans[1:]]
    at, i = len(head), 1
    for v in views:  # each tensor's bytes cut at the pieces' bounds
        done = 0
        while done < len(v):
            take = min(len(v) - done, spans[i][1] - at)
            pieces[i].append(v[done : done + take])
            done, at = done + take, at + take
            if at == spans[i][1]:
                i += 1
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="specviz-hash") as pool:
        sums = pool.map(lambda views: _digest(CHECKSUM, views), pieces)
        with open(path, "wb") as f:
            f.write(head)
            for v in views:
                f.write(v)
        return _record(len(head) + offset, len(head), list(sums), CHECKSUM, READ_PIECE)


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
    (written to a temporary name, then renamed; its sidecar holds the fingerprint and the full checksum written with
    it). Not for an input embedding tied to the head."""
    dtype = packed_dtype(model)
    if dtype is None or any(isinstance(m, PackedEmbedding) for m in model.modules()):
        return None
    dest = packed_file(folder, dtype)
    tmp = dest.with_name(dest.name + ".partial")
    try:
        dest.parent.mkdir(exist_ok=True)
        dest.with_suffix(".json").unlink(missing_ok=True)  # no moment where an old sidecar vouches for new bytes
        record = write_safetensors(tmp, model.state_dict())
        print_ = fingerprint(tmp)
        os.replace(tmp, dest)
        dest.with_suffix(".json").write_text(json.dumps({"fingerprint": print_, "checksum": record}))
    except OSError:  # a full disk costs the next start its packing pass, nothing else
        tmp.unlink(missing_ok=True)
        return None
    return dest


def drop_packed(file: Path) -> None:
    """Delete a packed-weights file found damaged, and its sidecar: the start that found it packs and saves anew."""
    for f in (file.with_suffix(".json"), file):
        f.unlink(missing_ok=True)


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
    """Whether a packed-weights file has a sidecar with a full checksum and still matches its fingerprint (a quick
    check: the full one is made by read_safetensors as the file is read)."""
    try:
        side = json.loads(file.with_suffix(".json").read_text())
        return sound_record(side["checksum"]) and side["fingerprint"] == fingerprint(file)
    except (OSError, ValueError, KeyError, TypeError):  # no sidecar, or one of before full checksums: stale
        return False


def packed_checksum(file: Path) -> dict[str, Any] | None:
    """The checksum record beside a packed-weights file; None when it has no sidecar at all (a file of no cache)."""
    side = file.with_suffix(".json")
    if not side.exists():
        return None
    try:
        record = json.loads(side.read_text())["checksum"]
        if sound_record(record):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise CorruptCache(f"{file} has no full checksum beside it: the cache is rebuilt")


def folder_checksums(folder: Path) -> dict[str, dict[str, Any]] | None:
    """Each file's checksum record from a cache folder's manifest; None when it has no manifest (a folder of no
    cache, e.g. save_pretrained's); CorruptCache when the manifest is unreadable or of before full checksums."""
    try:
        text = (folder / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CorruptCache(f"{folder / MANIFEST} cannot be read ({e}): the cache is rebuilt") from e
    try:
        man = json.loads(text)
        sums = {name: entry["checksum"] for name, entry in man["files"].items()}
        if man["integrity"] == INTEGRITY and all(sound_record(r) for r in sums.values()):
            return sums
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise CorruptCache(f"{folder / MANIFEST} holds no full checksums: the cache is rebuilt")


def from_packed(cls: type, config: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model built on the meta device with PackedLinear shells, then given the saved packed weights as they are."""
    dtype = next(v.dtype for k, v in state.items() if k.endswith(".packed"))
    with torch.device("meta"):
        model = cls(config)
    swap_shells(model, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    rebuild_buffers(model)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError("packed weights left parts of the model unset")
    return model.eval()


def rebuild_buffers(model: torch.nn.Module) -> None:
    """Rebuild the modules of a model built on the meta device whose non-persistent buffers (rotary frequencies) no
    weight file holds, each from its own config."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config=module.config))


def trim() -> None:
    """Hand freed heap memory back to the system (glibc): packing frees the float32 weights piece by piece, and pieces
    freed in the reading thread's arena would otherwise stay resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def read_folder(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's *.safetensors files; in a cache folder (one with a manifest) each file is checked
    against its full checksum as it is read, and a file the manifest does not list is refused."""
    sums = folder_checksums(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        if sums is not None and file.name not in sums:
            raise CorruptCache(f"{file} is not in its folder's manifest: the cache is rebuilt")
        state.update(read_safetensors(file, None if sums is None else sums[file.name]))
    return state


def read_cached(path: Path) -> dict[str, torch.Tensor]:
    """A cache folder's float32 weights or a packed-weights file, each byte checked against its full checksum."""
    return read_folder(path) if path.is_dir() else read_safetensors(path, packed_checksum(path))


def fingerprint(path: Path) -> str:
    """Size plus sha256 of the first and last MiB: catches truncated and half-written files in milliseconds. Only the
    quick check before a read: damage between those MiB is found by the full checksum as the file is read."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()
