"""Our GGUF reader and converter: torch dequantisation bit for bit equal to gguf's numpy reference, metadata and tensors
read back from a written file, and the embedded draft converted exactly as transformers' own GGUF loader converts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize as reference
from gguf.quants import quantize

from specviz.backends import gguf_reader
from specviz.backends.gguf_reader import BLOCK, GGUFError, GGUFFile, dequantize


@pytest.mark.parametrize("kind", ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "Q4_0", "F16", "BF16"])
@pytest.mark.parametrize("blocks", [3, 5000])  # 5000 crosses a dequantisation chunk
def test_dequantize_matches_gguf_reference_bit_for_bit(kind, blocks):
    ggml_type = int(GGMLQuantizationType[kind])
    per_block, block_bytes = BLOCK[ggml_type]
    # any bytes are a valid block: random scales include infinities and NaNs, which must come out the same too
    raw = np.random.default_rng(ggml_type + blocks).integers(0, 256, blocks * block_bytes, dtype=np.uint8)
    rows = blocks * per_block // 256 if blocks * per_block % 256 == 0 else 1
    shape = (rows, blocks * per_block // rows)
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in the reference (ours falls back to it for Q4_0)
        ours = dequantize(raw, ggml_type, shape).numpy()
        ref = reference(raw, GGMLQuantizationType(ggml_type)).reshape(shape).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(ours, ref, equal_nan=True)


def test_reader_reads_back_what_gguf_writes(tmp_path: Path):
    path = tmp_path / "m.gguf"
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((4, 64)).astype(np.float32)
    w16 = rng.standard_normal((2, 32)).astype(np.float16)
    q8 = quantize(rng.standard_normal((3, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    writer = GGUFWriter(path, "qwen2")
    writer.add_block_count(2)
    writer.add_float32("qwen2.rope.freq_base", 1e6)
    writer.add_token_list(["a", "b\u00e9", "<|im_end|>"])
    writer.add_token_merges(["a b", "b c"])
    writer.add_tensor("w32", w32)
    writer.add_tensor("w16", w16)
    writer.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    g = GGUFFile(path)
    assert g.architecture == "qwen2"
    assert g.meta["qwen2.block_count"] == 2 and g.meta["qwen2.rope.freq_base"] == 1e6
    assert g.meta["tokenizer.ggml.tokens"] == ["a", "b\u00e9", "<|im_end|>"]
    assert g.meta["tokenizer.ggml.merges"] == ["a b", "b c"]
    assert torch.equal(g.tensor("w32"), torch.from_numpy(w32))
    assert torch.equal(g.tensor("w16"), torch.from_numpy(w16.astype(np.float32)))
    q = g.tensor("q8")
    assert q.shape == (3, 64)
    assert torch.equal(q, torch.from_numpy(reference(q8, GGMLQuantizationType.Q8_0)))
    g.close()


def test_reader_names_a_file_that_is_not_gguf(tmp_path: Path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(bad)


@pytest.fixture(scope="module")
def draft_gguf(tmp_path_factory) -> Path:
    """The embedded draft (0.5B) assembled from its packages."""
    from specviz.backends.embedded import assemble, embedded_model

    folder = tmp_path_factory.mktemp("draft")
    return assemble(embedded_model("qwen2.5-coder-0.5b-instruct-q4_k_m"), folder / "model.gguf")


@pytest.mark.slow  # assembles the embedded 0.5B draft and loads it twice: minutes and GiBs
def test_converter_equals_transformers_gguf_loader_on_the_embedded_draft(draft_gguf: Path, tmp_path: Path):
    """The same config, tokenizer files and weights, bit for bit, as transformers' loader gives (about 2 minutes of
    it on our CPU: that loader is what the converter replaces)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specviz.backends.gguf_convert import convert

    ours, tok, times = convert(draft_gguf, lambda f, m: None)
    assert set(times) == {"metadata_s", "tokenizer_s", "dequantise_s", "build_s"}
    theirs = AutoModelForCausalLM.from_pretrained(draft_gguf.parent, gguf_file=draft_gguf.name, dtype=torch.float32)
    their_tok = AutoTokenizer.from_pretrained(draft_gguf.parent, gguf_file=draft_gguf.name)
    mine, other = ours.config.to_dict(), theirs.config.to_dict()
    other.pop("quantization_config")  # the marker of transformers' GGUF path; the weights are float32 either way
    for c in (mine, other):
        c.pop("_name_or_path")  # where each was loaded from: save_pretrained does not write it
    assert mine == other
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    tok.save_pretrained(tmp_path / "ours")
    their_tok.save_pretrained(tmp_path / "theirs")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name


def test_converter_declines_other_architectures(tmp_path: Path):
    from specviz.backends import gguf_convert

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(gguf_convert.NotConvertible, match="llama"):
        gguf_convert.convert(path, lambda f, m: None)


def test_type_ids_are_ggufs():
    for kind in ("F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K"):
        assert getattr(gguf_reader, kind) == int(GGMLQuantizationType[kind])
