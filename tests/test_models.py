"""Model loading: embedded packages (missing, corrupt), the dequantised-weights cache (rebuilt when corrupt), presets, tokenizers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from specviz.backends import cache_reader, embedded, loading, weights
from specviz.backends.cache import cache_ok, write_manifest
from specviz.backends.codecs import CharCodec, Codec
from specviz.backends.embedded import EmbeddedModel
from specviz.backends.loading import load_pair
from specviz.core.config import ConfigError
from specviz.core.presets import model_preset, model_presets


def _fake_model(tmp_path: Path, chunks: list[bytes], sha: str | None = None) -> tuple[EmbeddedModel, list[Path]]:
    files = []
    for i, data in enumerate(chunks, 1):
        f = tmp_path / f"part{i:02d}.bin"
        f.write_bytes(data)
        files.append(f)
    whole = b"".join(chunks)
    m = EmbeddedModel("fake", "fake-pkg", len(chunks), "0.1", len(whole), sha or hashlib.sha256(whole).hexdigest())
    return m, files


def test_assemble_checks_sha256(tmp_path, monkeypatch):
    m, files = _fake_model(tmp_path, [b"abc" * 1000, b"def" * 999])
    monkeypatch.setattr(embedded, "part_files", lambda _m: files)
    out = embedded.assemble(m, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == b"abc" * 1000 + b"def" * 999


def test_corrupt_chunk_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    m, files = _fake_model(tmp_path, [b"abc" * 1000, b"def" * 999])
    files[1].write_bytes(b"dEf" * 999)  # same size, different bytes
    monkeypatch.setattr(embedded, "part_files", lambda _m: files)
    with pytest.raises(ConfigError, match="corrupt: sha256"):
        embedded.assemble(m, tmp_path / "out" / "model.gguf")
    assert not list((tmp_path / "out").iterdir())


def test_truncated_chunk_is_a_clear_error(tmp_path, monkeypatch):
    m, files = _fake_model(tmp_path, [b"abc" * 1000, b"def" * 999])
    files[0].write_bytes(b"abc")
    monkeypatch.setattr(embedded, "part_files", lambda _m: files)
    with pytest.raises(ConfigError, match="corrupt: its packages hold"):
        embedded.assemble(m, tmp_path / "model.gguf")


def test_missing_packages_name_what_to_install():
    m = EmbeddedModel("ghost", "specviz-no-such-pkg", 3, "1.0", 10, "0" * 64)
    with pytest.raises(ConfigError, match=r"missing 3 of 3 packages \(specviz-no-such-pkg-part1==1.0"):
        embedded.part_files(m)


def test_cache_manifest_detects_corruption(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 3_000_000)
    (folder / "config.json").write_text("{}")
    write_manifest(folder, "sha")
    assert cache_ok(folder, "sha")
    assert not cache_ok(folder, "other-source")
    with open(folder / "model.safetensors", "r+b") as f:  # a half-written tail
        f.seek(2_999_000)
        f.write(b"\0" * 1000)
    assert not cache_ok(folder, "sha")
    (folder / "model.safetensors").write_bytes(b"x" * 10)  # truncated
    assert not cache_ok(folder, "sha")
    (folder / "specviz-manifest.json").write_text("{not json")
    assert not cache_ok(folder, "sha")


def test_presets_file_and_unknown_preset():
    presets = model_presets()
    assert "tiny-random" in presets and "qwen-coder-1.5b" in presets
    assert next(iter(presets)) == "qwen-coder-1.5b"
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known presets: qwen-coder-1.5b"):
        model_preset("nope")


def test_tiny_random_preset_loads_without_downloads():
    pair = load_pair("tiny-random")
    assert pair.draft is not None and isinstance(pair.codec, CharCodec)
    assert pair.target.vocab_size == pair.codec.vocab_size


def test_pair_with_different_tokenizers_is_refused(monkeypatch):
    spec = {"target": {"source": "hub", "id": "t"}, "draft": {"source": "hub", "id": "d"}}

    class FakeCodec(Codec):
        def __init__(self, key):
            self.key = key

        def vocab_key(self):
            return self.key

    monkeypatch.setattr(loading, "load_one", lambda src, *a, **k: (torch.nn.Identity(), FakeCodec(src["id"]), {}))
    with pytest.raises(ConfigError, match="tokenizer differs"):
        load_pair("mixed", spec=spec)


def test_char_codec_round_trip():
    c = CharCodec()
    text = "def f(x):\n\treturn x & 1  # <ok>"
    assert c.decode(c.encode(text)) == text
    assert c.eos not in c.encode(text)


def test_embedded_table_matches_issue():
    t = embedded.EMBEDDED["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    d = embedded.EMBEDDED["qwen2.5-coder-0.5b-instruct-q4_k_m"]
    assert (t.parts, t.size, t.version) == (22, 1_117_320_768, "0.2.0")
    assert (d.parts, d.size, d.version) == (6, 491_400_064, "0.9.0")
    assert json.dumps([t.sha256, d.sha256])


def test_cache_reader_hands_over_each_models_weights_in_order(tmp_path):
    """The background reader of a warm start: each listed folder's (or file's) tensors, bitwise what a plain read
    gives; a second model of the same folder gets its own read; an unlisted path is None; a truncated file's error
    reaches take()."""
    from safetensors.torch import save_file

    folders = {}
    for name, seed in (("a", 0), ("b", 1)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        g = torch.Generator().manual_seed(seed)
        big = torch.randn(300_000, 64, generator=g)  # several of the reader's 64 MiB pieces
        save_file({"w": big, "b": torch.randn(7, generator=g).bfloat16()}, folders[name] / "m.safetensors")
    file = folders["b"] / "m.safetensors"
    reader = cache_reader.CacheReader([folders["a"], file, folders["a"], None])
    assert reader.take(tmp_path / "elsewhere") is None
    first = reader.take(folders["a"])
    assert first.keys() == {"w", "b"}
    assert all(torch.equal(first[k], v) for k, v in weights.read_folder(folders["a"]).items())
    assert torch.equal(reader.take(file)["b"], weights.read_safetensors(file)["b"])
    second = reader.take(folders["a"])
    assert torch.equal(second["w"], first["w"]) and second["w"].data_ptr() != first["w"].data_ptr()
    assert reader.take(folders["a"]) is None  # all three handed over

    file.write_bytes(file.read_bytes()[:-100])
    reader = cache_reader.CacheReader([file])
    with pytest.raises(ConfigError, match="truncated"):
        reader.take(file)


def test_evict_is_a_harmless_hint(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x" * 10_000)
    weights.evict([f, tmp_path / "missing.safetensors"])  # a missing file is skipped, not an error
    assert f.read_bytes() == b"x" * 10_000
