"""The on-disk cache of embedded models: each GGUF assembled once into a folder with its config and tokenizer files
(the quantised kernel's), or dequantised once into a float32 transformers folder (the float32 path), each with a
manifest of full checksums that is checked before (and, for the weights, while) it is used."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from specviz.backends.embedded import EMBEDDED, assemble, embedded_model
from specviz.backends.gguf_convert import NotConvertible, convert
from specviz.backends.gguf_quant import MODEL_FILE as GGUF_FILE
from specviz.backends.spaces import on_space, persistent_root
from specviz.backends.weights import (
    INTEGRITY,
    MANIFEST,
    checksum_file,
    file_ok,
    fingerprint,
    packed_file,
    packed_ok,
    sound_record,
)
from specviz.core.progress import Progress

CACHE_FORMAT = 1
GGUF_FORMAT = 1  # the quantised-kernel cache folder's layout (gguf_folder)


def cache_dir() -> Path:
    """Where dequantised models are cached: $SPECVIZ_CACHE when set; else, on a Space with persistent storage, /data
    (so a restart starts warm); else ~/.cache/specviz, or a temporary folder where the home folder cannot be written."""
    if os.environ.get("SPECVIZ_CACHE"):
        return Path(os.environ["SPECVIZ_CACHE"])
    data = persistent_root() if on_space() else None  # elsewhere a /data folder may be anything
    if data is not None:
        return data / "specviz-cache"
    home = Path.home() / ".cache" / "specviz"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK | os.X_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"specviz-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def cached_file(src: dict[str, Any], packed: torch.dtype | None) -> Path | None:
    """What a warm start reads for an embedded model: its packed weights of dtype `packed` where cached and sound,
    else its float32 cache folder; None when it is not cached (or not embedded)."""
    if src.get("source") != "embedded" or src.get("name") not in EMBEDDED:
        return None
    folder, sha = _cache_folder(src["name"])
    if not cache_ok(folder, sha):
        return None
    if packed is not None and packed_ok(packed_file(folder, packed)):
        return packed_file(folder, packed)
    return folder


def cached_gguf_file(src: dict[str, Any]) -> Path | None:
    """The GGUF a warm start reads for an embedded model on the quantised kernel, where cached and sound; else None."""
    if src.get("source") != "embedded" or src.get("name") not in EMBEDDED:
        return None
    folder = gguf_folder(src["name"])
    return folder / GGUF_FILE if cache_ok(folder, embedded_model(src["name"]).sha256) else None


def embedded_folder(info: dict[str, Any]) -> Path | None:
    return Path(info["path"]) if info.get("source") == "embedded" and info.get("path") else None


def cached_embedded(name: str, progress: Progress) -> tuple[Path, dict, Any]:
    """A transformers-loadable folder for an embedded GGUF model: built once (assemble, verify sha256, dequantise,
    save safetensors), then reused. A cache that fails its manifest check is rebuilt, never trusted.
    -> (folder, info, the float32 model when it was just built, else None)"""
    folder, sha = _cache_folder(name)
    m = embedded_model(name)
    if cache_ok(folder, sha):
        return folder, {"source": "embedded", "name": name, "cache": "hit", "path": str(folder)}, None
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = folder.with_name(folder.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    gguf = assemble(
        m, work / "model.gguf", lambda done, total: progress(0.3 * done / total, "assembling and checking sha256")
    )
    progress(0.3, "dequantising GGUF (once)")
    stages: dict[str, float] = {"assemble_s": round(time.perf_counter() - t0, 1)}
    try:
        model, tok, times = convert(gguf, progress)
        stages.update(times)
    except NotConvertible:  # an architecture our converter does not handle: transformers' loader (slow)
        tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are plain float32 now: drop the GGUF marker so save_pretrained writes safetensors
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
    progress(0.8, "writing cache")
    t = time.perf_counter()
    gguf.unlink()
    model.save_pretrained(work)
    tok.save_pretrained(work)
    write_manifest(work, m.sha256)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)
    stages["write_s"] = round(time.perf_counter() - t, 1)
    info = {
        "source": "embedded",
        "name": name,
        "cache": "built",
        "build_s": round(time.perf_counter() - t0, 1),
        "build_stages": stages,
        "path": str(folder),
    }
    return folder, info, model


def gguf_folder(name: str) -> Path:
    """The quantised-kernel cache folder of an embedded model: its GGUF, config and tokenizer files (no weights of
    ours: the kernel repacks the GGUF's blocks at every start)."""
    return cache_dir() / f"{name}-q{GGUF_FORMAT}"


def cached_gguf(name: str, progress: Progress) -> tuple[Path, dict]:
    """The quantised-kernel cache folder of an embedded GGUF model: built once (assemble and verify the sha256, write
    the config, generation config and tokenizer files read from the GGUF, a manifest of checksums), then reused; one
    that fails its manifest check is rebuilt. -> (folder, info)"""
    folder, sha = gguf_folder(name), embedded_model(name).sha256
    if cache_ok(folder, sha):
        return folder, {"source": "embedded", "name": name, "cache": "hit", "path": str(folder), "kind": "gguf"}
    t0 = time.perf_counter()
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoTokenizer, GenerationConfig

    from specviz.backends.gguf_convert import config_dict
    from specviz.backends.gguf_reader import GGUFFile

    work = folder.with_name(folder.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    gguf = assemble(
        embedded_model(name),
        work / GGUF_FILE,
        lambda done, total: progress(0.5 * done / total, "assembling and checking sha256"),
    )
    stages: dict[str, float] = {"assemble_s": round(time.perf_counter() - t0, 1)}
    t = time.perf_counter()
    g = GGUFFile(gguf)
    try:
        config = AutoConfig.for_model(**config_dict(g))
    finally:
        g.close()
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__]
    config.save_pretrained(work)
    GenerationConfig.from_model_config(config).save_pretrained(work)
    stages["config_s"] = round(time.perf_counter() - t, 1)
    progress(0.6, "reading the tokenizer (once)")
    t = time.perf_counter()
    # tokenizer_type names the class directly: without it transformers derives the config from the GGUF again
    tok = AutoTokenizer.from_pretrained(work, gguf_file=GGUF_FILE, tokenizer_type=config.model_type)
    tok.save_pretrained(work)
    stages["tokenizer_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    write_manifest(work, embedded_model(name).sha256)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)
    stages["manifest_s"] = round(time.perf_counter() - t, 1)
    info = {
        "source": "embedded",
        "name": name,
        "cache": "built",
        "kind": "gguf",
        "build_s": round(time.perf_counter() - t0, 1),
        "build_stages": stages,
        "path": str(folder),
    }
    return folder, info


def cache_bytes(folder: Path) -> int:
    """Bytes on disk of a cache folder (its files, recursively)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _cache_folder(name: str) -> tuple[Path, str]:
    """(the cache folder of an embedded model, the sha256 of its source)"""
    return cache_dir() / f"{name}-v{CACHE_FORMAT}", embedded_model(name).sha256


def write_manifest(folder: Path, source_sha: str) -> None:
    """Record the fingerprint and full checksum of every file in a cache folder, and the sha256 of the source it was
    built from (one read of the files just written: a cold build's cost, never a warm start's)."""
    files = {
        p.name: {"fingerprint": fingerprint(p), "checksum": checksum_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(
        json.dumps(
            {"format": CACHE_FORMAT, "integrity": INTEGRITY, "source_sha256": source_sha, "files": files}, indent=1
        )
    )


def cache_ok(folder: Path, source_sha: str) -> bool:
    """Whether a cache folder's manifest is readable, of this format and source, with full checksums (a cache of
    before them is stale), and every file still matches it: the small files (config, tokenizer) in full now; the
    weights by size and fingerprint, their full checksums being checked as they are read (read_safetensors,
    gguf_quant.read_blocks)."""
    try:
        man = json.loads((folder / MANIFEST).read_text())
        if (man.get("format"), man.get("integrity"), man.get("source_sha256")) != (CACHE_FORMAT, INTEGRITY, source_sha):
            return False
        files = man["files"]
        if not files or any(p.name not in files for p in folder.glob("*.safetensors")):
            return False
        for name, entry in files.items():
            if not sound_record(entry["checksum"]):
                return False
            if name.endswith((".safetensors", ".gguf")):
                if fingerprint(folder / name) != entry["fingerprint"]:
                    return False
            elif not file_ok(folder / name, entry["checksum"]):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def invalidate(folder: Path) -> None:
    """Mark a cache folder found damaged as stale (its manifest goes): the next cached_embedded rebuilds it."""
    (folder / MANIFEST).unlink(missing_ok=True)
