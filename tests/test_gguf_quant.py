"""A GGUF model built straight from its quantised blocks, on a tiny Qwen2 written to a GGUF file here (every block
type, tied and untied heads): its logits and greedy output are bitwise the float32 path's, its embedding rows are
gguf's dequantised values, a damaged file is refused, and a file the kernel cannot take is declined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter

from specviz.backends.gguf_quant import NotQuantisable, build_model, read_blocks, to_float32
from specviz.backends.gguf_reader import GGUFFile, dequantize
from specviz.backends.kernels import kernel
from specviz.backends.kernels import quant as qk
from specviz.backends.lm import LM
from specviz.backends.tiny import tiny_config
from specviz.backends.weights import CorruptCache, checksum_file
from specviz.core.config import GenConfig
from specviz.core.engine import run

pytestmark = pytest.mark.skipif(qk.quant_kernel()[0] is None or kernel()[0] is None, reason="needs both CPU kernels")
VOCAB = 300
# a block type per kind of matrix: every type the kernel takes appears (K-quants need rows of 256)
KINDS = {"attn_q": qk.Q4_K, "attn_k": qk.Q8_0, "attn_v": qk.Q6_K, "attn_output": qk.Q5_0, "ffn_gate": qk.Q4_K}
KINDS |= {"ffn_up": qk.Q5_0, "ffn_down": qk.Q6_K, "token_embd": qk.Q8_0, "output": qk.Q6_K}


def config(tied: bool):
    cfg = tiny_config(VOCAB, hidden=256, layers=2, heads=4)
    cfg.tie_word_embeddings = tied
    return cfg


def write_gguf(path: Path, tied: bool, f32_matrix: bool = False) -> Path:
    """The tiny model's tensors under GGUF's names: matrices as random blocks of KINDS' types (small scales, so the
    activations stay finite), norms as ones, biases small."""
    import gguf
    from transformers import AutoModelForCausalLM

    cfg = config(tied)
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(cfg)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    w = GGUFWriter(path, "qwen2")
    rng = np.random.default_rng(0)
    for i, (hf, p) in enumerate(shell.state_dict().items()):
        base, _, suffix = hf.rpartition(".")
        if tied and hf == "lm_head.weight":
            continue
        name = f"{names.get_name(base)}.{suffix}"
        if p.dim() == 1:
            value = np.ones(p.shape, np.float32) if "norm" in name else rng.standard_normal(p.shape, np.float32) * 0.1
            w.add_tensor(name, value.astype(np.float32))
        elif f32_matrix and "ffn_up" in name:
            w.add_tensor(name, rng.standard_normal(p.shape, np.float32))
        else:
            kind = KINDS[name.split(".")[-2]]
            raw = qk.random_blocks(kind, *p.shape, seed=i, scale=2e-4 if kind in (qk.Q4_K, qk.Q6_K) else 3e-3)
            rows = raw.numpy().reshape(p.shape[0], -1)  # raw_shape: the bytes' shape, as gguf takes it
            w.add_tensor(name, rows, raw_shape=rows.shape, raw_dtype=GGMLQuantizationType(kind))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("tied", [False, True])
def test_a_model_from_blocks_is_bitwise_the_float32_path(tmp_path, tied):
    path = write_gguf(tmp_path / "m.gguf", tied)
    ours = build_model(read_blocks(path), config(tied))
    assert isinstance(ours.get_output_embeddings(), qk.QuantLinear)
    assert isinstance(ours.get_input_embeddings(), qk.QuantEmbedding)
    if tied:  # one table of blocks: the head's
        assert ours.get_input_embeddings().layer() is ours.get_output_embeddings()
    g = GGUFFile(path)
    table = dequantize(g.raw("token_embd.weight"), qk.Q8_0, (VOCAB, 256))
    g.close()
    ids = torch.tensor([[0, 5, 299, 17]])
    assert torch.equal(ours.get_input_embeddings()(ids), table[ids])
    theirs = to_float32(build_model(read_blocks(path), config(tied)))
    assert not any(isinstance(m, qk.QuantLinear) for m in theirs.modules())
    prompt = list(range(10, 40))
    a, b = LM(ours, "q"), LM(theirs, "f")
    assert torch.equal(a.forward(prompt), b.forward(prompt))
    assert torch.isfinite(a.forward([3, 4, 5])).all()
    cfg = GenConfig(max_new_tokens=12)
    assert (
        run(LM(ours, "q"), None, prompt, cfg).run().output_ids
        == run(LM(theirs, "f"), None, prompt, cfg).run().output_ids
    )


def test_a_damaged_file_is_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tied=False)
    record = checksum_file(path)
    read_blocks(path, record)  # sound: read
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCache):
        read_blocks(path, record)


def test_a_matrix_the_kernel_does_not_take_is_declined(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tied=False, f32_matrix=True)
    with pytest.raises(NotQuantisable, match="ffn_up"):
        read_blocks(path)
