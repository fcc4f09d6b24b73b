"""Medusa helper heads: the proposer is lossless (greedy identical to plain, sampled two-token outputs distributed as
the target's), reads the right hidden state, training lowers the loss, and the heads file round-trips exactly and
rejects files made for another model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import ALPHA, exact_two_token_probs, two_token_pvalue

from specviz.backends.kernels import kernel, swap_linears
from specviz.backends.lm import LM
from specviz.backends.loading import ModelPair, load_pair
from specviz.backends.tiny import tiny_model
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.medusa import heads_for, lm_head_rows, lm_head_weight
from specviz.medusa.data import self_distill
from specviz.medusa.heads import MedusaHeads, load_heads, sha256_of
from specviz.medusa.heads import random_heads as make_random_heads
from specviz.medusa.train import train_heads
from specviz.proposers import MedusaProposer, build_proposer


def random_heads(lm: LM, count: int, seed: int, scale: float = 0.5) -> MedusaHeads:
    return make_random_heads(lm_head_weight(lm.model), count, seed, scale)


@pytest.fixture(scope="module")
def trained(tiny_pair, prompts):
    """Heads trained on the tiny target's own greedy answers to the test prompts (memorised: many guesses are right)."""
    target, _ = tiny_pair
    data = self_distill(target.model, prompts, 64, pad_id=0, eos_ids=[], batch=1, log=lambda m: None)
    heads, report = train_heads(
        data, lm_head_weight(target.model), count=4, epochs=60, lr=3e-3, batch=32, log=lambda m: None
    )
    return heads.bind(lm_head_weight(target.model)), report


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_greedy_matches_plain_with_random_and_trained_heads(tiny_pair, prompts, plain_greedy, trained, gamma):
    target, _ = tiny_pair
    cfg = GenConfig(gamma=gamma, max_new_tokens=48)
    accepted = 0
    for heads in (random_heads(target, 4, seed=gamma), trained[0]):
        for ids in prompts:
            plain = plain_greedy(ids, 48)
            spec = run(target, MedusaProposer(target, heads, gamma), ids, cfg).run()
            assert spec.output_ids == plain.output_ids
            accepted += spec.accepted
    assert accepted > 0  # the trained heads guess right sometimes: the check is not vacuous


def test_trained_heads_emit_more_than_one_token_per_pass(tiny_pair, prompts, trained):
    target, _ = tiny_pair
    cfg = GenConfig(gamma=4, max_new_tokens=64)
    s = run(target, MedusaProposer(target, trained[0], 4), prompts[0], cfg).run()
    assert s.tokens_per_step > 1.2, s.tokens_per_step


def test_heads_read_the_state_that_predicted_the_emitted_token(tiny_pair, prompts):
    """After every step the proposer's hidden state equals a fresh pass's final hidden state at ctx[-2], the
    position whose LM-head prediction is the last emitted token."""
    target, _ = tiny_pair
    fresh = LM(target.model, "fresh")
    fresh.keep_hidden = True
    prop = MedusaProposer(target, random_heads(target, 3, seed=5), 3)
    cfg = GenConfig(gamma=3, max_new_tokens=20)
    ids = prompts[0]
    r = run(target, prop, ids, cfg)
    for ev in r:
        ctx = ids + [t for s in r.steps for t in _emitted(s)]
        fresh.reset()
        fresh.forward(ctx[:-1])
        assert fresh.last_hidden is not None and prop.h is not None
        torch.testing.assert_close(prop.h, fresh.last_hidden[-1], rtol=1e-9, atol=1e-9)
        if ev.finished:
            break


def _emitted(step) -> list[int]:
    return [t.id for t in step.tokens if t.origin in ("accepted", "resampled", "bonus")]


def test_sampling_matches_target_joint_distribution(small_vocab_pair):
    target, _ = small_vocab_pair
    prompt = [1, 2, 3]
    base = GenConfig(gamma=2, rule="sample", max_new_tokens=2, temperature=2.0)  # flat p: many guesses accepted
    exact = exact_two_token_probs(target, prompt, base)
    prop = MedusaProposer(target, random_heads(target, 2, seed=11, scale=3.0), 2)
    n = 1000  # a rule that skips the residual: p < 1e-9
    counts = dict.fromkeys(exact, 0)
    accepted = 0
    for seed in range(n):
        s = run(target, prop, prompt, base.with_(seed=seed), instrument=False).run()
        counts[tuple(s.output_ids)] += 1
        accepted += s.accepted
    assert accepted > 50  # guesses were accepted often enough for the rule to matter
    assert two_token_pvalue(counts, exact) > ALPHA


def test_confidence_keeps_only_likely_guesses(tiny_pair, prompts, trained):
    target, _ = tiny_pair
    cfg = GenConfig(gamma=4, max_new_tokens=32)
    plain = run(target, None, prompts[1], cfg).run()
    prop = MedusaProposer(target, trained[0], 4, confidence=0.9)
    r = run(target, prop, prompts[1], cfg)
    drafted = []
    for ev in r:
        drafted.append(ev.n_drafted)
        chance = 1.0
        for p in prop.last_probs:
            chance *= p
        assert chance >= 0.9 or not prop.last_probs
    assert r.summary is not None and r.summary.output_ids == plain.output_ids
    assert min(drafted) < 4  # the stop cut some drafts short


def test_padded_batches_distil_the_same_answers(codec):
    """Left-padded batched generation (float32, as for real models) gives each answer and hidden state of one-by-one
    generation; the hidden states feed the LM head to the tokens produced."""
    model = tiny_model(codec.vocab_size, seed=2, init=0.2)
    ids = [codec.encode(t) for t in ("def f(x):", "x", "import os\nimport sys\n")]
    one = self_distill(model, ids, 24, pad_id=0, eos_ids=[], batch=1, log=lambda m: None)
    many = self_distill(model, ids, 24, pad_id=0, eos_ids=[], batch=3, log=lambda m: None)
    assert torch.equal(one.tokens, many.tokens) and one.starts == many.starts
    torch.testing.assert_close(one.hidden, many.hidden, rtol=1e-4, atol=1e-4)
    assert torch.equal((one.hidden @ lm_head_weight(model).T).argmax(-1), one.tokens)
    labels = one.labels(2)
    a, b = one.starts[0], one.starts[1]
    assert torch.equal(labels[a : b - 1, 0], one.tokens[a + 1 : b]) and (labels[b - 1] == -100).all()


def test_training_lowers_the_loss(trained):
    """The training loss falls; the held-out answer (a random model's text, never trained on) is scored each epoch."""
    _, report = trained
    assert report.loss[-1] < 0.5 * report.loss[0]
    assert report.heldout_rows > 0 and len(report.heldout_loss) == report.epochs
    assert all(x == x for x in report.heldout_loss)  # no NaN


def saved_heads(tmp_path, trained, tiny_pair):
    """(target, trained heads, their file, its sha256), the file written for tokenizer fingerprint 'k1'."""
    target, _ = tiny_pair
    heads = trained[0]
    heads.meta.update({"vocab_size": target.vocab_size, "vocab_key": "k1"})
    path = tmp_path / "heads.safetensors"
    return target, heads, path, heads.save(path)


def test_save_and_load_round_trip_exactly(tmp_path, trained, tiny_pair):
    target, heads, path, sha = saved_heads(tmp_path, trained, tiny_pair)
    back = load_heads(path, heads.hidden, target.vocab_size, "k1", sha)
    assert back.count == heads.count and torch.equal(back.vocab_ids, heads.vocab_ids)
    for (n1, a), (n2, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1  # the trained heads were rounded to what the file holds
    assert back.meta["vocab_key"] == "k1"
    back.bind(lm_head_weight(target.model))
    h = torch.randn(heads.hidden, dtype=torch.float64)
    assert back.guess(h) == heads.guess(h)


@pytest.mark.skipif(kernel()[0] is None, reason="needs our packed linear kernel")
def test_heads_bind_to_a_packed_lm_head_without_unpacking_all_of_it(trained, tiny_pair):
    model = copy.deepcopy(tiny_pair[0].model).float()
    heads = copy.deepcopy(trained[0]).float()
    want = heads.bind(lm_head_weight(model))._rows.clone()
    packed = swap_linears(model)
    reader = lm_head_rows(packed)
    assert callable(reader)  # rows are read from the packed weight, not from a full unpacked copy
    assert torch.equal(heads.bind(reader)._rows, want)


def test_bad_heads_files_are_clear_errors(tmp_path, trained, tiny_pair):
    target, heads, path, sha = saved_heads(tmp_path, trained, tiny_pair)
    with pytest.raises(ConfigError, match="missing"):
        load_heads(tmp_path / "nope.safetensors", heads.hidden, target.vocab_size)
    with pytest.raises(ConfigError, match="checksum"):
        load_heads(path, heads.hidden, target.vocab_size, sha256="0" * 64)
    with pytest.raises(ConfigError, match="hidden size 64, the target has 128"):
        load_heads(path, 128, target.vocab_size)
    with pytest.raises(ConfigError, match=f"vocabulary of {target.vocab_size} tokens"):
        load_heads(path, heads.hidden, 32000)
    with pytest.raises(ConfigError, match="another tokenizer"):
        load_heads(path, heads.hidden, target.vocab_size, vocab_key="k2")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable"):
        load_heads(junk, heads.hidden, target.vocab_size)
    assert sha256_of(path) == sha


def test_strategy_without_heads_names_the_fix(tiny_pair):
    target, draft = tiny_pair
    pair = ModelPair("mine", target, draft, None, target.device, torch.float64, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train-heads"):
        build_proposer("medusa", pair, GenConfig())


def test_tiny_random_preset_ships_heads_that_load():
    pair = load_pair("tiny-random")
    prop = build_proposer("medusa", pair, GenConfig(gamma=3))
    assert isinstance(prop, MedusaProposer) and heads_for(pair) is prop.heads
    ids = pair.codec.encode("def add(a, b):\n    return a + b\n")
    cfg = GenConfig(gamma=3, max_new_tokens=24)
    plain = run(pair.target, None, ids, cfg).run()
    spec = run(pair.target, prop, ids, cfg).run()
    assert spec.output_ids == plain.output_ids
    broken = dataclasses.replace(pair, heads=None, info={**pair.info, "heads_spec": {"file": "assets/nope.bin"}})
    with pytest.raises(ConfigError, match="missing"):
        build_proposer("medusa", broken, GenConfig())
