"""Cached files are safe to share: every byte of the float32 cache and of the packed weights is checked against the
checksum written with it (a flipped byte anywhere means a rebuild or the float32 fallback, never garbage), caches of
before full checksums are stale, and the kernel build survives SIGKILL and keeps one folder per toolchain."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from specviz.backends import cache_reader, kernels, loading, weights
from specviz.backends.cache import cache_ok, invalidate, write_manifest
from specviz.backends.codecs import CharCodec
from specviz.backends.tiny import tiny_model
from specviz.backends.weights import CorruptCache

ROOT = Path(__file__).resolve().parent.parent
VOCAB = CharCodec().vocab_size
PIECE = 1 << 20  # small checksum pieces in most tests: several per file, bounds inside tensors


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "READ_PIECE", PIECE)


def _model(seed: int = 0) -> torch.nn.Module:
    """A tiny Qwen2 of about 10 MB: big enough that its middle lies outside the fingerprint's first and last MiB."""
    return tiny_model(VOCAB, seed, hidden=256, layers=4, heads=4)


def _tokenizer(folder: Path) -> None:
    """A word-level tokenizer saved in `folder`, so transformers' AutoTokenizer loads the folder offline."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate("abcdefgh")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>").save_pretrained(folder)


def _cache_folder(folder: Path, seed: int = 0) -> torch.nn.Module:
    """A float32 cache folder as cache.cached_embedded writes one: save_pretrained, then the manifest."""
    model = _model(seed)
    model.save_pretrained(folder)
    _tokenizer(folder)
    write_manifest(folder, "sha")
    return model


def _flip(file: Path, at: int, n: int = 1) -> None:
    """Invert n bytes of a file at offset `at` (negative: from the end)."""
    with open(file, "r+b") as f:
        f.seek(at, 0 if at >= 0 else 2)
        where = f.tell()
        data = f.read(n)
        f.seek(where)
        f.write(bytes(b ^ 0xFF for b in data))


def _where(file: Path, spot: str) -> int:
    """An offset in a safetensors file: in its JSON header, its first data byte, its middle, its last byte."""
    head = 8 + int.from_bytes(file.read_bytes()[:8], "little")
    return {"header": 40, "first": head, "middle": file.stat().st_size // 2, "last": -1}[spot]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fake_packed(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, folder: Path) -> Path:
    """save_packed of a plain model posing as a packed one (no kernel needed): the same writer and sidecar."""
    monkeypatch.setattr(weights, "packed_dtype", lambda m: torch.float32)
    file = weights.save_packed(model, folder)
    assert file is not None
    return file


# ------------------------------------------------------------- checksums written with the file, checked while read


@pytest.mark.parametrize("algo", ["sha256", "crc32"])
@pytest.mark.parametrize("piece", [1000, 4096, PIECE, 64 << 20])
def test_written_checksum_is_the_files_and_the_read_gives_the_tensors_back(tmp_path, monkeypatch, piece, algo):
    """The record write_safetensors hashes from memory equals one made by reading the file back, at piece sizes
    whose bounds fall inside tensors, for either algorithm, and a checked read returns every tensor bitwise
    (float32, bf16, int64); a record of the other algorithm still reads back."""
    monkeypatch.setattr(weights, "READ_PIECE", piece)
    monkeypatch.setattr(weights, "CHECKSUM", algo)
    tensors = {**_model().state_dict(), "ids": torch.arange(11), "half": torch.randn(3, 5).bfloat16()}
    file = tmp_path / "w.safetensors"
    record = weights.write_safetensors(file, tensors)
    assert record == weights.checksum_file(file)
    assert record["size"] == file.stat().st_size and len(record["pieces"]) > (1 if piece < 64 << 20 else 0)
    assert _same(weights.read_safetensors(file, record), tensors)
    assert _same(weights.read_safetensors(file), tensors)  # no record: the plain read
    monkeypatch.setattr(weights, "CHECKSUM", {"sha256": "crc32", "crc32": "sha256"}[algo])
    assert _same(weights.read_safetensors(file, record), tensors) and weights.file_ok(file, record)
    _flip(file, file.stat().st_size // 2)
    with pytest.raises(CorruptCache):
        weights.read_safetensors(file, record)
    assert not weights.file_ok(file, record)


@pytest.mark.parametrize("spot", ["header", "first", "middle", "last"])
def test_a_flipped_byte_in_the_float32_cache_is_refused(tmp_path, small_pieces, spot):
    """A cache folder as built (save_pretrained + manifest): a flipped byte anywhere in its weights makes the read
    (read_folder, and the background reader) refuse the folder; the quick check before the read need not see it."""
    folder = tmp_path / "m"
    model = _cache_folder(folder)
    file = folder / "model.safetensors"
    assert _same(weights.read_folder(folder), model.state_dict())  # intact: loads, bitwise
    _flip(file, _where(file, spot))
    with pytest.raises(CorruptCache):
        weights.read_folder(folder)
    reader = cache_reader.CacheReader([folder])
    with pytest.raises(CorruptCache):
        reader.take(folder)


@pytest.mark.parametrize("spot", ["header", "first", "middle", "last"])
def test_a_flipped_byte_in_a_packed_file_is_refused(tmp_path, monkeypatch, small_pieces, spot):
    folder = tmp_path / "m"
    model = _cache_folder(folder)
    file = _fake_packed(monkeypatch, model, folder)
    assert weights.packed_ok(file) and _same(weights.read_cached(file), model.state_dict())
    _flip(file, _where(file, spot))
    with pytest.raises(CorruptCache):
        weights.read_cached(file)


def test_16_mib_of_ff_in_the_middle_is_found(tmp_path):
    """The tester's finding at full piece size: a run of 0xFF in the middle of a 40 MB file, which the fingerprint
    (size, first and last MiB) cannot see, fails the read."""
    tensors = {"w": torch.randn(10 << 20)}
    file = tmp_path / "p.safetensors"
    record = weights.write_safetensors(file, tensors)
    before = weights.fingerprint(file)
    with open(file, "r+b") as f:
        f.seek(12 << 20)
        f.write(b"\xff" * (16 << 20))
    assert weights.fingerprint(file) == before  # the quick check has nothing to go on
    with pytest.raises(CorruptCache, match="fail their checksum"):
        weights.read_safetensors(file, record)


def test_malformed_records_are_refused(tmp_path):
    file = tmp_path / "w.safetensors"
    record = weights.write_safetensors(file, {"w": torch.randn(100)})
    for bad in ({**record, "algo": "md4"}, {**record, "piece": 0}, {**record, "pieces": None}, {"kind": "pieces-1"}):
        assert not weights.sound_record(bad)
        with pytest.raises(CorruptCache):
            weights.read_safetensors(file, bad)


def test_truncated_or_extended_files_are_refused(tmp_path, small_pieces):
    file = tmp_path / "w.safetensors"
    record = weights.write_safetensors(file, _model().state_dict())
    data = file.read_bytes()
    file.write_bytes(data + b"\0")
    with pytest.raises(CorruptCache):
        weights.read_safetensors(file, record)
    file.write_bytes(data[:-4])
    with pytest.raises(CorruptCache):
        weights.read_safetensors(file, record)


def test_cache_check_reads_small_files_in_full_and_refuses_unlisted_weights(tmp_path, small_pieces):
    """cache_ok: the config and tokenizer files (read by transformers, not our reader) are checked in full; a
    weights file that the manifest does not list makes the folder stale."""
    folder = tmp_path / "m"
    _cache_folder(folder)
    assert cache_ok(folder, "sha")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "relu"  # same size would do too: the whole file is hashed
    (folder / "config.json").write_text(json.dumps(config))
    assert not cache_ok(folder, "sha")
    write_manifest(folder, "sha")
    assert cache_ok(folder, "sha")
    shutil.copy(folder / "model.safetensors", folder / "extra.safetensors")
    assert not cache_ok(folder, "sha")
    with pytest.raises(CorruptCache, match="not in its folder's manifest"):
        weights.read_folder(folder)


def test_caches_of_before_full_checksums_are_stale(tmp_path, monkeypatch):
    """An old manifest (fingerprints only) or an old packed sidecar is never trusted: the cache check fails and a
    read refuses it, so the cache is rebuilt (the packed file: packed anew) once."""
    folder = tmp_path / "m"
    model = _cache_folder(folder)
    file = _fake_packed(monkeypatch, model, folder)
    man = json.loads((folder / weights.MANIFEST).read_text())
    old = {
        "format": man["format"],
        "source_sha256": "sha",
        "files": {n: e["fingerprint"] for n, e in man["files"].items()},
    }
    (folder / weights.MANIFEST).write_text(json.dumps(old))
    assert not cache_ok(folder, "sha")
    with pytest.raises(CorruptCache, match="no full checksums"):
        weights.read_folder(folder)
    file.with_suffix(".json").write_text(json.dumps({"fingerprint": weights.fingerprint(file)}))
    assert not weights.packed_ok(file)
    with pytest.raises(CorruptCache, match="no full checksum"):
        weights.read_cached(file)
    invalidate(folder)
    assert not cache_ok(folder, "sha") and not (folder / weights.MANIFEST).exists()


# ------------------------------------------------------------- what the load does with a damaged cache


def test_a_damaged_packed_file_falls_back_to_the_float32_cache_and_is_dropped(tmp_path, monkeypatch, small_pieces):
    folder = tmp_path / "m"
    model = _cache_folder(folder)
    file = _fake_packed(monkeypatch, model, folder)
    _flip(file, _where(file, "middle"))
    assert weights.packed_ok(file)  # the quick check passes: only the read can tell
    loaded = loading.from_folder(folder, torch.float32, cache_reader.CacheReader([file]))
    assert _same(loaded.state_dict(), model.state_dict())  # the float32 cache, checked as it was read
    assert not file.exists() and not file.with_suffix(".json").exists()  # this start packs and saves anew


def test_a_damaged_float32_cache_is_rebuilt_by_the_load(tmp_path, monkeypatch, small_pieces):
    """load_one of an embedded model whose float32 cache has a flipped byte in the middle: the damaged weights are
    never used, the cache is rebuilt (here by a stand-in for cached_embedded) and its fresh model returned; an intact
    cache loads as a hit."""
    folder = tmp_path / "m"
    built: list[int] = []

    def cached(name: str, progress: Any) -> tuple[Path, dict, Any]:  # cache.cached_embedded, minus the GGUF
        if cache_ok(folder, "sha"):
            return folder, {"source": "embedded", "cache": "hit", "path": str(folder)}, None
        shutil.rmtree(folder, ignore_errors=True)
        built.append(1)
        return folder, {"source": "embedded", "cache": "built", "path": str(folder)}, _cache_folder(folder, seed=5)

    monkeypatch.setattr(loading, "cached_embedded", cached)
    src = {"source": "embedded", "name": "tiny"}
    want = cached("tiny", None)[2].state_dict()
    model, _, info = loading.load_one(
        src, torch.float32, False, lambda f, m: None, reader=cache_reader.CacheReader([folder])
    )
    assert info["cache"] == "hit" and _same(model.state_dict(), want)

    file = folder / "model.safetensors"
    _flip(file, _where(file, "middle"))
    assert cache_ok(folder, "sha")  # the quick check passes: the read finds it
    model, _, info = loading.load_one(
        src, torch.float32, False, lambda f, m: None, reader=cache_reader.CacheReader([folder])
    )
    assert info["cache"] == "built" and "fail their checksum" in info["damaged"] and len(built) == 2
    assert _same(model.state_dict(), want)
    assert _same(weights.read_folder(folder), want)  # the rebuilt cache is sound


@pytest.mark.slow
def test_a_damaged_real_packed_file_falls_back_and_is_packed_again(tmp_path):
    """With the kernel (compiles it where not built yet): real packed weights with a flipped middle byte are not
    used; the load falls back to the float32 cache, and finishing the model saves its packed weights anew."""
    from specviz.backends.fastpath import target_fast_path

    if kernels.kernel()[0] is None:
        pytest.skip(f"kernel unavailable here: {kernels.kernel()[1]}")
    folder = tmp_path / "m"
    _cache_folder(folder)
    packed = target_fast_path(loading.from_folder(folder, torch.float32))[0]
    file = weights.save_packed(packed, folder)
    assert file is not None
    _flip(file, _where(file, "middle"))
    model = loading.from_folder(folder, torch.float32, cache_reader.CacheReader([file]))
    assert weights.packed_dtype(model) is None and not file.exists()
    place = loading._Placement(torch.device("cpu"), torch.float32, True, {}, lambda f, m: None)
    place.finish(model, "target", folder)
    assert weights.packed_ok(file)
    again = loading.from_folder(folder, torch.float32, cache_reader.CacheReader([file]))
    ids = torch.tensor([CharCodec().encode("def f(x):")])
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, packed(ids).logits)


# ------------------------------------------------------------- the kernel build: a lock freed by death, toolchain keys

HOLD = """
import sys, time
from pathlib import Path
from specviz.backends.kernels import BuildLock
with BuildLock(Path(sys.argv[1])) as held:
    print("held" if held else "not held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    """A process that takes the build lock and holds it for `seconds`; returns once it holds it."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_stale_build_lock_is_taken_over_and_a_live_one_waited_for(tmp_path):
    lock = tmp_path / "k.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{dead.stdout.strip()} {socket.gethostname()} 0\n")  # left by a process that is gone
    t = time.monotonic()
    with kernels.BuildLock(lock, timeout=30) as held:
        assert held and time.monotonic() - t < 1 and kernels.BuildLock(lock).owner().startswith(f"{os.getpid()} ")

    killed = _holder(lock, 600)  # a holder killed by SIGKILL: the system frees its lock
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    t = time.monotonic()
    with kernels.BuildLock(lock, timeout=30) as held:
        assert held and time.monotonic() - t < 1

    live = _holder(lock, 2)  # a live holder is waited for, then the lock is ours
    t = time.monotonic()
    with kernels.BuildLock(lock, timeout=60, poll=0.05) as held:
        assert held and time.monotonic() - t > 1
    live.wait()

    stuck = _holder(lock, 600)  # one that holds it too long is given up on (a private build folder keeps us safe)
    try:
        t = time.monotonic()
        with kernels.BuildLock(lock, timeout=1, poll=0.05) as held:
            assert not held and 0.9 < time.monotonic() - t < 10
    finally:
        stuck.kill()
        stuck.wait()


def test_private_build_folders_of_dead_builds_are_swept(tmp_path):
    final = tmp_path / "specviz_packed_linear-abc"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    names = {
        "dead": f"{final.name}.tmp-{host}-{dead.stdout.strip()}-00aa",
        "mine": f"{final.name}.tmp-{host}-{os.getpid()}-00bb",
        "other host": f"{final.name}.tmp-elsewhere-{dead.stdout.strip()}-00cc",
    }
    for n in names.values():
        (tmp_path / n).mkdir()
    kernels._sweep(final)
    assert not (tmp_path / names["dead"]).exists()
    assert (tmp_path / names["mine"]).exists() and (tmp_path / names["other host"]).exists()


def test_each_toolchain_gets_its_own_build_folder(tmp_path, monkeypatch):
    """Two ninja versions (the venv's and the system's) or two compilers name two folders, so neither build
    invalidates the other; the same toolchain names the same folder; TORCH_EXTENSIONS_DIR moves the root."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    real = kernels._version

    def folder(ninja: str, cxx: str = "c++ 12") -> Path:
        monkeypatch.setattr(kernels, "_version", lambda tool: ninja if tool == "ninja" else cxx)
        kernels.toolchain.cache_clear()
        return kernels.build_dir()

    try:
        a, b, c = folder("ninja 1.13.2"), folder("ninja 1.11.1"), folder("ninja 1.13.2", "c++ 13")
        assert len({a, b, c}) == 3 and folder("ninja 1.13.2") == a and a.parent == tmp_path / "specviz"
    finally:
        monkeypatch.setattr(kernels, "_version", real)
        kernels.toolchain.cache_clear()
    assert "ninja" in kernels.toolchain()


BUILD = "from specviz.backends.kernels import kernel; print(kernel()[1], flush=True)"


@pytest.mark.slow
def test_a_build_killed_by_sigkill_does_not_block_the_next_start(tmp_path):
    """SIGKILL mid-build (its ninja and compiler live on as orphans, torch's lock file stays in its folder): a fresh
    start still gets a working kernel, within a timeout, and prints nothing else; the one after loads the finished
    build without building."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or shutil.which("c++") is None:
        pytest.skip("no AVX2 or no C++ compiler here")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "SPECVIZ_KERNEL": "1"}
    root = tmp_path / "specviz"
    first = subprocess.Popen([sys.executable, "-c", BUILD], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob("*.tmp-*/build.ninja")):  # the private folder, torch's lock, ninja under way
            assert first.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.1)
        time.sleep(2)
        os.kill(first.pid, signal.SIGKILL)  # the Python process only: as the OOM killer or `kill -9` would
        first.wait()
        assert list(root.glob("*.tmp-*/lock")), "torch's lock file should be left behind"
        t = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-c", BUILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        took = time.monotonic() - t
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the orphaned ninja and compiler of the killed build
    assert second.returncode == 0 and second.stdout.strip() == "compiled", second.stderr
    assert second.stderr.strip() == "", second.stderr
    (final,) = [d for d in root.iterdir() if d.is_dir() and ".tmp-" not in d.name]
    lib = final / f"{kernels.NAME}.so"
    built_at = lib.stat().st_mtime
    t = time.monotonic()
    third = subprocess.run(
        [sys.executable, "-c", BUILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert third.stdout.strip() == "compiled" and third.stderr.strip() == "", third.stderr
    assert lib.stat().st_mtime == built_at and time.monotonic() - t < took  # loaded, not built again
