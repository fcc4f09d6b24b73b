"""Losslessness, proven: greedy speculative output equals plain greedy token for token, and speculative sampling
preserves the target distribution (chi-square tests that a broken rule fails)."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import ALPHA, CASES, case, exact_two_token_probs, token_pvalue, two_token_pvalue

from specviz.core import verify
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.sampling import Sampler
from specviz.proposers import DraftModelProposer


@pytest.mark.parametrize("gamma", range(1, 9))
def test_temperature_zero_matches_plain_greedy(tiny_pair, prompts, plain_greedy, gamma):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=gamma, max_new_tokens=40)
    for ids in prompts:
        plain = plain_greedy(ids, 40)
        spec = run(target, DraftModelProposer(draft, gamma), ids, cfg).run()
        assert spec.output_ids == plain.output_ids
        assert spec.steps < plain.steps  # some drafts were accepted, so the check is not vacuous
        assert spec.accepted > 0 and spec.rejections > 0


# ------------------------------------------------------------- the rule on constructed distributions

# Draws per constructed case. With N_RULE draws a chi-square over 6 tokens flags (p < 1e-3, 9 times in 10) an output
# distribution b with sum (b - p)^2 / p >= 0.003; skipping the residual makes that 0.07 on "overlapping" and 0.25 on
# "q_has_zeros", always accepting 0.74, so the tests that must fail need fewer draws still.
N_RULE = 10_000
N_TEETH = 5_000


def _first_token_counts(p: torch.Tensor, q: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Draw x ~ q at each of k positions, verify, and count the first emitted token."""
    k, v = q.shape
    sampler = Sampler("sample", 1.0, 0, 1.0, seed)
    counts = torch.zeros(v)
    for _ in range(n):
        draft = torch.multinomial(q, 1, generator=sampler.generator).squeeze(1)  # (k,)
        verdict = verify.speculative_verify(draft, p, q, sampler)
        first = int(draft[0]) if verdict.n_accepted > 0 else verdict.token
        counts[first] += 1
    return counts


@pytest.mark.parametrize("name", CASES)
def test_speculative_sampling_preserves_target_distribution(name):
    p1, q1 = case(name)
    p = torch.stack([p1, p1.roll(1), p1.roll(2)])  # (k+1, V) with k = 2
    q = torch.stack([q1, q1.roll(3)])  # (k, V)
    counts = _first_token_counts(p, q, N_RULE)
    assert token_pvalue(counts, p1) > ALPHA


def test_one_hot_proposal_preserves_target_distribution():
    """A proposer with no probabilities (n-gram, random) is verified as q = one-hot on its guess."""
    p = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    sampler = Sampler("sample", 1.0, 0, 1.0, 7)
    counts = torch.zeros(4)
    for i in range(N_RULE):
        guess = torch.tensor([i % 4])  # guesses cycle through every token, including one with p = 0
        verdict = verify.speculative_verify(guess, p, None, sampler)
        counts[int(guess[0]) if verdict.n_accepted else verdict.token] += 1
    assert token_pvalue(counts, p[0]) > ALPHA


def test_broken_rule_fails_the_distribution_test(monkeypatch):
    """The test has teeth: resampling from p instead of the residual max(0, p - q) is caught."""
    p1, q1 = case("overlapping")
    monkeypatch.setattr(verify, "residual", lambda p, q: p)
    counts = _first_token_counts(torch.stack([p1, p1]), q1[None], N_TEETH)
    assert token_pvalue(counts, p1) < ALPHA


def test_always_accepting_fails_the_distribution_test(monkeypatch):
    p1, q1 = case("overlapping")
    monkeypatch.setattr(verify, "accept_ratios", lambda d, p, q: torch.ones(d.shape[0], dtype=p.dtype))
    counts = _first_token_counts(torch.stack([p1, p1]), q1[None], N_TEETH)
    assert counts[p1 == 0].sum() > 0  # q's mass where p has none is emitted
    assert token_pvalue(counts[p1 > 0], p1[p1 > 0]) < ALPHA  # and on p's support the frequencies are q's, not p's


# ------------------------------------------------------------- end to end on a model


# runs per setting: a rule that skips the residual gets p < 1e-6 at temperature 1 with 1500, p < 1e-20 with top-k and
# top-p with 1000
@pytest.mark.parametrize(
    "settings,n",
    [(dict(temperature=1.0), 1500), (dict(temperature=0.7, top_k=5, top_p=0.9), 1000)],
    ids=["t1", "topkp"],
)
def test_engine_sampling_matches_target_joint_distribution(small_vocab_pair, settings, n):
    """Two-token sequences from the full engine (draft model, gamma 3) follow the target's exact joint distribution."""
    target, draft = small_vocab_pair
    prompt = [1, 2, 3]
    base = GenConfig(gamma=3, rule="sample", max_new_tokens=2, **settings)
    exact = exact_two_token_probs(target, prompt, base)
    counts = dict.fromkeys(exact, 0)
    for seed in range(n):
        out = (
            run(target, DraftModelProposer(draft, 3), prompt, base.with_(seed=seed), instrument=False).run().output_ids
        )
        counts[tuple(out)] += 1
    assert two_token_pvalue(counts, exact) > ALPHA


def test_greedy_identity_for_every_prompt_prefix(tiny_pair, codec):
    """Identity holds whatever the prompt length (cache offsets, rollback at every position)."""
    target, draft = tiny_pair
    text = "class Stack:\n    def push(self, x):\n"
    for cut in range(1, len(text), 5):
        ids = codec.encode(text[:cut])
        cfg = GenConfig(gamma=5, max_new_tokens=20)
        assert (
            run(target, DraftModelProposer(draft, 5), ids, cfg).run().output_ids
            == run(target, None, ids, cfg).run().output_ids
        )


def test_identity_is_exercised_on_rejections(tiny_pair, prompts):
    """Every origin appears, so rollback after rejection is what the identity tests cover."""
    target, draft = tiny_pair
    r = run(target, DraftModelProposer(draft, 6), prompts[0], GenConfig(gamma=6, max_new_tokens=60))
    origins = {t.origin for s in r for t in s.tokens}
    assert {"accepted", "rejected", "not_reached", "resampled", "bonus"} <= origins


def test_all_pairs_enumerated_sum_to_one(small_vocab_pair):
    target, _ = small_vocab_pair
    exact = exact_two_token_probs(target, [1, 2], GenConfig(rule="sample"))
    assert abs(sum(exact.values()) - 1) < 1e-9
    assert len(exact) == 64 and all(isinstance(k, tuple) for k in itertools.islice(exact, 3))
