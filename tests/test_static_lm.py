"""StaticLM, the GPU fast path's model (static KV cache, padded passes, CUDA graphs on CUDA): its logits are
transformers' own, a token's logits do not depend on the tokens verified beside it, and every strategy run on it is
lossless. On CPU it runs eagerly (no graphs); on a CUDA machine the same tests also run through CUDA graphs in bf16."""

from __future__ import annotations

import json
import types

import pytest
import torch

from specviz.backends.codecs import ByteCodec
from specviz.backends.lm import LM
from specviz.backends.static_lm import StaticLM, unsupported
from specviz.backends.tiny import perturbed_copy, tiny_model
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.presets import PRESETS_DIR, model_preset
from specviz.medusa import lm_head_weight
from specviz.medusa.heads import random_heads
from specviz.proposers import STRATEGIES, build_proposer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _static(model: torch.nn.Module, **kw) -> StaticLM:
    return StaticLM(model, context=kw.pop("context", 256), pad=kw.pop("pad", 8), **kw)


@pytest.fixture(scope="module", params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models64(codec):
    """float64, with transformers' SDPA attention (its eager attention takes the softmax in float32)."""
    target = tiny_model(codec.vocab_size, seed=0, dtype=torch.float64, init=0.2)
    target.set_attn_implementation("sdpa")
    return target, perturbed_copy(target, noise=0.03, seed=1)


def test_logits_are_transformers_own(models64, prompts):
    """Prefill, a verification pass, a pass after rolling back: the same logits as the model through transformers."""
    target = models64[0]
    ref, st = LM(target), _static(target)
    ids = prompts[0] + prompts[1]
    torch.testing.assert_close(st.forward(ids[:20]), ref.forward(ids[:20]), rtol=0, atol=1e-10)
    torch.testing.assert_close(st.forward(ids[20:25]), ref.forward(ids[20:25]), rtol=0, atol=1e-10)
    st.crop(22)
    ref.crop(22)
    assert st.length == ref.length == 22
    torch.testing.assert_close(st.forward(ids[22:24], keep=1), ref.forward(ids[22:24], keep=1), rtol=0, atol=1e-10)


def test_hidden_states_for_helper_heads(models64, prompts):
    target = models64[0]
    ref, st = LM(target), _static(target)
    ref.keep_hidden = st.keep_hidden = True
    for lm in (ref, st):
        lm.forward(prompts[0][:-3])
        lm.forward(prompts[0][-3:])
    assert st.last_hidden is not None and st.last_hidden.shape == ref.last_hidden.shape == (3, 64)
    torch.testing.assert_close(st.last_hidden, ref.last_hidden, rtol=0, atol=1e-10)


def test_a_tokens_logits_do_not_depend_on_the_tokens_beside_it(codec, prompts, device):
    """The property that keeps float32/bf16 speculative output identical to plain: fed alone or verified with four
    more tokens (any of them), a token's logits are bitwise the same."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = tiny_model(codec.vocab_size, seed=0, dtype=dtype, init=0.2).to(device)
    st = _static(model)
    st.reserve(64)
    ids = prompts[0]
    st.forward(ids[:10])
    alone = st.forward(ids[10:11])[0]
    for tail in (ids[11:15], [5, 6, 7, 8], [9]):
        st.crop(10)
        assert torch.equal(st.forward(ids[10:11] + tail)[0], alone)


@pytest.fixture(scope="module")
def static_pair(codec, prompts, device):
    """A static target and draft (bf16 on CUDA, float64 on CPU) with helper heads, the texts to decode, and the
    target's plain greedy output for each (it does not depend on the strategy or gamma: computed once)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float64
    target = tiny_model(codec.vocab_size, seed=0, dtype=dtype, init=0.2).to(device)
    draft = perturbed_copy(target.cpu(), noise=0.03, seed=1).to(device)
    target = target.to(device)
    pair = types.SimpleNamespace(
        target=_static(target, name="target"),
        draft=_static(draft, name="draft"),
        preset="test",
        heads=random_heads(lm_head_weight(target), 4, seed=0).to(device),
    )
    texts = prompts + [codec.encode("abcabcabc abcabc")]
    cfg = GenConfig(max_new_tokens=30)
    plain = {tuple(ids): run(pair.target, None, ids, cfg).run().output_ids for ids in texts}
    return pair, texts, plain


def test_static_plain_greedy_is_transformers_own(static_pair, device):
    pair, texts, plain = static_pair
    if device == "cuda":
        pytest.skip("bf16 through CUDA graphs: compared with plain decoding on the same path only")
    for ids in texts:  # float64: the same tokens as the model through transformers' own cache
        assert plain[tuple(ids)] == run(LM(pair.target.model), None, ids, GenConfig(max_new_tokens=30)).run().output_ids


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_on_static_models_matches_plain_greedy(static_pair, strategy):
    pair, texts, plain = static_pair
    for gamma in (1, 4, 7):
        cfg = GenConfig(gamma=gamma, max_new_tokens=30)
        proposer = build_proposer(strategy, pair, cfg)
        for ids in texts:
            spec = run(pair.target, proposer, ids, cfg).run()
            assert spec.output_ids == plain[tuple(ids)], (strategy, gamma, ids)


def test_a_draft_of_the_targets_own_layers_shares_its_weights(models64, prompts):
    st = _static(models64[0])
    view = st.with_layers([0])
    assert view.model is st.model and len(view.layers) == 1 and view.layers[0] is st.layers[0]
    assert view.forward(prompts[0]).shape == (len(prompts[0]), st.vocab_size)
    assert st.length == 0  # its own cache


def test_limits_are_clear_errors(models64):
    st = _static(models64[0], context=32)
    st.forward(list(range(30)))
    with pytest.raises(ValueError, match="exceed this model's static cache of 32"):
        st.forward([1, 2, 3])
    gpt2ish = types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2"))
    assert "model type 'gpt2'" in unsupported(gpt2ish)


def test_shapes_preset_has_the_embedded_pairs_shapes():
    """The GPU timing preset: random weights with the embedded pair's exact configs (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = model_preset("qwen-coder-1.5b-shapes")
    sizes = []
    for part in ("target", "draft"):
        config = AutoConfig.for_model(**json.loads((PRESETS_DIR / spec[part]["config"]).read_text()))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        sizes.append(sum(p.numel() for p in model.parameters()))
        assert unsupported(model) is None
    assert [round(s / 1e6) for s in sizes] == [1777, 630]  # untied embeddings, as the embedded GGUF pair has them
    codec = ByteCodec(151936)
    assert codec.decode(codec.encode("def f():")) == "def f():"


def test_gpu_bench_runs_its_sections_on_a_cpu():
    """bench --targets gpu's code paths (no timing asserted: on a CPU its numbers mean nothing), so a session lent a
    GPU does not spend its minutes on a broken script: every section runs and every strategy's output is plain's."""
    from specviz.bench.gpu import check_gpu, format_gpu_details, gpu_report

    wanted = ("plain", "hf_dynamic", "passes", "strategies", "overhead", "graphs_only", "unpadded", "hf_static")
    rep = gpu_report(12, prompt_len=20, reps=1, log=lambda m: None, preset="tiny-random", device="cpu", sections=wanted)
    for name in wanted:
        assert "error" not in rep[name], (name, rep[name])
    assert all(r["identical"] for r in rep["strategies"].values()), rep["strategies"]
    assert rep["overhead"]["identical"]
    rows = {r.target: r for r in check_gpu(rep)}
    assert rows["5 GPU plain decoding"].ratio == rep["plain"]["ms_per_token"]
    assert "| draft |" in format_gpu_details(rep)


@pytest.mark.slow  # torch.compile (inductor) builds C++ for these passes: about 30 s on a 2-core CPU, any model size
def test_compiled_pass_decodes_as_the_eager_one(codec, prompts):
    """torch.compile'd one-row passes (the CUDA default) give plain's tokens; warm() compiles before any timed run, and
    a layer-skip view is built (and compiled) once per layer set."""
    model = tiny_model(codec.vocab_size, seed=0, dtype=torch.float32, init=0.2)
    ids = codec.encode(prompts[0])
    cfg = GenConfig(gamma=4, max_new_tokens=16)
    eager = run(_static(model, pad=16), None, ids, cfg).run()
    lm = _static(model, pad=16, use_compile=True)
    lm.warm()
    assert lm.length == 0
    assert run(lm, None, ids, cfg).run().output_ids == eager.output_ids
    assert lm.with_layers([0]) is lm.with_layers([0])
