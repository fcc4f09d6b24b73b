"""Every strategy is lossless (greedy identity with plain decoding for several gammas and prompts; the target's exact
joint distribution under sampling), plus each strategy's own promise: prompt lookup finds known matches, layer skip
with every layer is the target, Jacobi learns from the target's passes, adaptive gamma follows its schedule, and bad
options are ConfigErrors."""

from __future__ import annotations

import pytest
import torch
from helpers import ALPHA, exact_two_token_probs, fake_pair, two_token_pvalue

from specviz.backends.lm import LM
from specviz.backends.surgery import layer_view
from specviz.backends.tiny import tiny_model
from specviz.core.config import MAX_GAMMA, ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.presets import prompt_suites, suite_prompts
from specviz.core.proposal import Outcome, Proposal
from specviz.core.sampling import Sampler
from specviz.medusa import lm_head_weight
from specviz.medusa.heads import random_heads
from specviz.proposers import STRATEGIES, AdaptiveGamma, build_proposer, find_candidates, search_skip_layers
from specviz.proposers.adaptive import next_gamma
from specviz.proposers.jacobi import JacobiProposer
from specviz.proposers.layer_skip import default_skip, kept_layers
from specviz.proposers.ngram import find_match, match_extent
from specviz.proposers.random_guess import RandomProposer

GREEDY = Sampler("greedy", 1.0, 0, 1.0, 0)
N_JOINT = 1000  # runs per strategy for the joint-distribution test: a rule that skips the residual gets p < 1e-5


def _pair(target: LM, draft: LM | None = None):
    heads = random_heads(lm_head_weight(target.model), 4, seed=0)  # medusa's helper heads, untrained
    return fake_pair(target, draft, heads)


def _zero_layers(model: torch.nn.Module, layers) -> torch.nn.Module:
    """Make decoder layers exact identities (their attention and MLP add zero to the residual stream)."""
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return _pair(*tiny_pair)


@pytest.fixture(scope="module")
def bigram_lm():
    """A target whose only layer is an identity: its next token depends on the last token only, so greedy text
    falls into a short loop (the repetitive case where Jacobi's pool should shine)."""
    return LM(_zero_layers(tiny_model(16, seed=5, dtype=torch.float64, init=0.5, layers=1, hidden=32), [0]))


# ------------------------------------------------------------- losslessness, every strategy

VARIANTS = [(s, {}) for s in STRATEGIES] + [
    ("ngram", {"ngram_max": 1}),
    ("jacobi", {"pool_ngram": 0}),
    ("layerskip", {"exit_layer": 1}),
    ("draft", {"adaptive": True, "max_gamma": 9}),
    ("layerskip", {"adaptive": True, "confidence": 0.05}),
]


@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("strategy,options", VARIANTS, ids=lambda v: str(v))
def test_every_strategy_matches_plain_greedy(pair, prompts, codec, plain_greedy, strategy, options, gamma):
    cfg = GenConfig(gamma=gamma, max_new_tokens=24, options=options)
    proposer = build_proposer(strategy, pair, cfg)  # one proposer for all prompts: reset() must clear its state
    for ids in prompts + [codec.encode("abcabcabc abcabc")]:
        out = run(pair.target, proposer, ids, cfg).run().output_ids
        assert out == plain_greedy(ids, 24).output_ids, (strategy, ids)


@pytest.mark.parametrize(
    "strategy,options",
    [
        ("random", {}),
        ("layerskip", {}),
        ("ngram", {}),
        ("jacobi", {}),
        ("draft", {"adaptive": True, "confidence": 0.5}),
    ],
    ids=lambda v: str(v),
)
def test_sampling_matches_target_joint_distribution(small_vocab_pair, strategy, options):
    """Two-token sequences from the full engine follow the target's exact joint distribution (temperature, top-k and
    top-p on); random, layerskip and draft supply q, ngram and jacobi are verified as one-hot. On this prompt every
    strategy's guess is accepted in some runs and rejected in others, so both the acceptance and the correction drawn
    from the residual shape the counts."""
    pvalue, accepted, drafted = _joint_pvalue(*small_vocab_pair, strategy, options, n=N_JOINT)
    assert 0.1 * drafted < accepted < 0.9 * drafted, (accepted, drafted)
    assert pvalue > ALPHA


def test_a_proposer_that_misstates_q_fails_the_distribution_test(small_vocab_pair, monkeypatch):
    """The test has teeth: a guesser that always says 5 but claims the uniform q it does not draw from is caught."""

    def fixed(self, ctx, limit, sampler):
        k = min(self.gamma, limit)
        return Proposal([5] * k, torch.full((k, self.vocab_size), 1 / self.vocab_size))

    monkeypatch.setattr(RandomProposer, "propose", fixed)
    assert _joint_pvalue(*small_vocab_pair, "random", {}, n=300)[0] < ALPHA


def _joint_pvalue(target: LM, draft: LM, strategy: str, options: dict, n: int) -> tuple[float, int, int]:
    """n engine runs' two-token outputs against the target's exact joint distribution. -> (chi-square p-value, drafted
    tokens accepted, tokens drafted), over all runs."""
    # a repeat, so prompt lookup has something to propose; every strategy's first guess here has p > 0 (for the
    # one-hot guessers p(6) = 0.44): a guess with p = 0 is always rejected and its residual is p itself, which would
    # leave the rule untested
    prompt = [0, 2, 6, 6]
    base = GenConfig(gamma=3, rule="sample", max_new_tokens=2, temperature=0.7, top_k=5, top_p=0.9, options=options)
    exact = exact_two_token_probs(target, prompt, base)
    counts = dict.fromkeys(exact, 0)
    pair = _pair(target, draft)
    proposer = build_proposer(strategy, pair, base)
    accepted = drafted = 0
    for seed in range(n):
        cfg = base.with_(seed=seed)
        if strategy == "random":  # its own generator is seeded from cfg.seed at build time
            proposer = build_proposer(strategy, pair, cfg)
        s = run(target, proposer, prompt, cfg, instrument=False).run()
        counts[tuple(s.output_ids)] += 1
        accepted, drafted = accepted + s.accepted, drafted + s.drafted
    return two_token_pvalue(counts, exact), accepted, drafted


# ------------------------------------------------------------- prompt lookup


@pytest.mark.parametrize(
    "ctx,max_n,min_n,k,expected",
    [
        ([1, 2, 3, 4, 1, 2], 3, 1, 4, [3, 4, 1, 2]),  # the 2-gram [1, 2] occurred at 0; copy runs into the suffix
        ([1, 2, 3, 4, 1, 2], 3, 1, 2, [3, 4]),  # at most k
        ([1, 2, 3, 9, 2, 3, 1, 2, 3], 3, 1, 3, [9, 2, 3]),  # the longest match [1, 2, 3] beats the recent [2, 3]
        ([5, 1, 7, 1, 8, 1], 1, 1, 2, [8, 1]),  # the most recent occurrence of [1] wins
        ([5, 5, 5], 3, 1, 4, [5, 5, 5, 5]),  # a loop is copied on (LZ77-style overlap)
        ([1, 2, 1, 2], 3, 1, 5, [1, 2, 1, 2, 1]),
        ([1, 2, 3], 3, 1, 4, []),  # no n-gram occurs twice
        ([1, 2, 3, 2], 3, 2, 4, []),  # only a 1-gram repeats, but min_n = 2
        ([7], 3, 1, 3, []),  # nothing before
        ([1, 2, 1], 3, 1, 0, []),  # k = 0
    ],
)
def test_find_candidates(ctx, max_n, min_n, k, expected):
    assert find_candidates(ctx, max_n, min_n, k) == expected


def test_find_match_reports_where_and_how_long():
    assert find_match([4, 1, 2, 3, 0, 1, 2, 3], 4, 1) == (1, 3)
    assert find_match([4, 1, 2, 3, 0, 1, 2, 3], 2, 1) == (2, 2)
    assert find_match([1, 2, 3], 3, 1) is None


def test_match_extent_and_unsure_matches_draft_little():
    ctx = [7, 1, 2, 3, 4, 5, 9, 8, 2, 3, 4, 5]  # suffix [3, 4, 5] matched at 3; agreement runs back to [2, 3, 4, 5]
    start, n = find_match(ctx, 3, 1)
    assert (start, n) == (3, 3) and match_extent(ctx, start, n) == 4
    assert find_candidates(ctx, 3, 1, 6) == [9, 8, 2, 3, 4, 5]  # sure=0: always the full k
    assert find_candidates(ctx, 3, 1, 6, sure=4) == [9, 8, 2, 3, 4, 5]  # 4 tokens agree: sure enough
    assert find_candidates(ctx, 3, 1, 6, sure=5) == [9, 8]  # not: at most 2
    assert match_extent([1, 2, 1, 2, 1, 2], 2, 2, cap=3) == 3  # capped


def test_prompt_lookup_copies_from_an_edit_prompt(pair, codec):
    """On text that repeats, the guesses are the copy; no model is called (no q)."""
    prop = build_proposer("ngram", pair, GenConfig(gamma=6, options={"ngram_max": 4}))
    ctx = codec.encode("def area(r): return 3.14 * r * r\n# again:\ndef area(r): ret")
    proposal = prop.propose(ctx, 100, GREEDY)
    assert codec.decode(proposal.ids) == "urn 3." and proposal.q is None


# ------------------------------------------------------------- blind guess


def test_random_guesses_are_seeded_and_uniform(pair):
    def guesses(seed: int) -> list[list[int]]:
        prop = build_proposer("random", pair, GenConfig(gamma=5, seed=seed))
        prop.reset([1])
        return [prop.propose([1], 100, GREEDY).ids for _ in range(3)]

    assert guesses(3) == guesses(3) != guesses(4)
    prop = RandomProposer(pair.target.vocab_size, 4, seed=0)
    proposal = prop.propose([1], 2, GREEDY)  # the limit caps the draft
    assert len(proposal.ids) == 2 and all(0 <= t < pair.target.vocab_size for t in proposal.ids)
    assert torch.allclose(proposal.q, torch.full((2, pair.target.vocab_size), 1 / pair.target.vocab_size))


# ------------------------------------------------------------- Jacobi


def _logits_for(preds: list[int], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), vocab).double()  # (k+1, V), argmax = preds


def test_jacobi_next_guesses_are_the_targets_previous_predictions():
    prop = JacobiProposer(gamma=4, pool_ngram=0)
    prop.reset([1, 2])
    ctx = [1, 2]
    first = prop.propose(ctx, 100, GREEDY)
    assert first.ids == [2, 2, 2, 2] and first.q is None  # nothing learned yet: repeat the last token
    # the target predicted 2 after 2 (accept g1), then 7 instead of g2 = 2 (reject), then 8, 9, 10 after the guesses
    prop.update(Outcome(4, 1, 4, target_logits=_logits_for([2, 7, 8, 9, 10], 16)))
    second = prop.propose(ctx + [2, 7], 100, GREEDY)
    assert second.ids == [8, 9, 10, 10]  # the Jacobi iterate for the next positions, then padding


def test_jacobi_pool_proposes_ngrams_the_target_produced():
    prop = JacobiProposer(gamma=3, pool_ngram=2)
    prop.reset([5])
    prop.propose([5], 100, GREEDY)  # feeds [5, 5, 5, 5]
    prop.update(Outcome(3, 0, 2, target_logits=_logits_for([6, 6, 6, 6], 16)))  # the target says 6 follows 5
    prop.propose([5, 6], 100, GREEDY)  # feeds [6, ...]
    prop.update(Outcome(3, 0, 3, target_logits=_logits_for([7, 3, 3, 3], 16)))  # and 7 follows 6
    assert prop.propose([9, 5], 100, GREEDY).ids[:2] == [6, 7]  # 5 -> 6 -> 7 from the pool


def test_engine_passes_target_logits_to_proposers(tiny_pair, prompts):
    """Jacobi (and any proposer that learns from the target) needs the verification pass's logits in Outcome."""
    target, _ = tiny_pair
    seen: list[Outcome] = []

    class Recorder(JacobiProposer):
        def update(self, outcome: Outcome) -> None:
            seen.append(outcome)
            super().update(outcome)

    run(target, Recorder(3), prompts[1], GenConfig(gamma=3, max_new_tokens=6)).run()
    assert seen and all(o.target_logits is not None for o in seen)
    assert all(o.target_logits.shape == (o.n_drafted + 1, target.vocab_size) for o in seen)


def test_jacobi_accepts_several_tokens_per_step_on_repetitive_text(bigram_lm):
    cfg = GenConfig(gamma=4, max_new_tokens=30)
    plain = run(bigram_lm, None, [3], cfg).run()
    r = run(bigram_lm, build_proposer("jacobi", _pair(bigram_lm), cfg), [3], cfg)
    steps = list(r)
    assert r.summary.output_ids == plain.output_ids
    assert max(s.n_accepted for s in steps) > 1
    assert r.summary.steps < plain.steps / 2  # once the loop is in the pool, whole drafts are accepted


def test_jacobi_multi_token_steps_on_the_tiny_target(tiny_pair, codec):
    target, _ = tiny_pair
    cfg = GenConfig(gamma=4, max_new_tokens=30)
    ids = codec.encode("The quick brown fox")
    steps = list(run(target, build_proposer("jacobi", _pair(target), cfg), ids, cfg))
    assert max(s.n_accepted for s in steps) > 1


# ------------------------------------------------------------- layer skip


def test_layer_view_with_every_layer_is_the_target(tiny_pair, codec):
    target, _ = tiny_pair
    n = len(target.model.model.layers)
    view = LM(layer_view(target.model, list(range(n))))
    ids = codec.encode("for i in range(10):\n")
    target.reset()
    assert torch.equal(view.forward(ids), target.forward(ids))
    assert len(view.cache.layers) == n


def test_layer_skip_with_every_layer_accepts_everything(pair, prompts):
    for rule, extra in (("greedy", {}), ("sample", {"temperature": 0.8})):
        cfg = GenConfig(gamma=5, max_new_tokens=20, rule=rule, options={"skip": []}, **extra)
        r = run(pair.target, build_proposer("layerskip", pair, cfg), prompts[0], cfg).run()
        assert r.drafted > 0 and r.accepted == r.drafted, rule
    cfg = GenConfig(gamma=5, max_new_tokens=20, options={"exit_layer": 2})  # early exit after the last layer
    r = run(pair.target, build_proposer("layerskip", pair, cfg), prompts[0], cfg).run()
    assert r.accepted == r.drafted > 0


def test_layer_view_shares_weights_and_leaves_the_target_alone(tiny_pair):
    target, _ = tiny_pair
    view = layer_view(target.model, [1])
    assert view.model.layers[0].mlp is target.model.model.layers[1].mlp
    assert view.model.layers[0].self_attn.layer_idx == 0 and target.model.model.layers[1].self_attn.layer_idx == 1
    assert view.config.num_hidden_layers == 1 and target.model.config.num_hidden_layers == 2
    assert kept_layers(4, 3, [1]) == [0, 2] and default_skip(28) == list(range(14, 27, 2)) and default_skip(2) == [0]


def test_search_skip_layers_finds_a_layer_that_does_nothing(codec):
    model = _zero_layers(tiny_model(codec.vocab_size, seed=2, dtype=torch.float64, init=0.2, layers=4), [2])
    calib = codec.encode("def add(a, b):\n    return a + b\n")
    found = search_skip_layers(model, calib, gamma=4)
    assert found.skip == [2] and found.alpha == 1.0 and found.speedup > 1
    assert found.history[0]["skip"] == [] and found.history[1]["skip"] == [2]
    for rule in ("greedy", "sample"):  # every trial was measured and the chosen one scores best
        h = search_skip_layers(model, calib, gamma=4, rule=rule, max_skip=2).history
        assert len(h) == 3 and max(h[1:], key=lambda t: t["speedup"])["skip"] == [2]
    prop = build_proposer("layerskip", _pair(LM(model)), GenConfig(options={"skip": "auto"}))
    prop.reset(calib)
    assert prop.kept == [0, 1, 3]


# ------------------------------------------------------------- adaptive draft length


@pytest.mark.parametrize(
    "gamma,drafted,accepted,expected",
    [(4, 4, 4, 6), (4, 4, 2, 3), (1, 1, 0, 1), (9, 9, 9, 10), (4, 0, 0, 4), (4, 2, 2, 6)],
)
def test_heuristic_schedule(gamma, drafted, accepted, expected):
    assert next_gamma(gamma, Outcome(drafted, accepted, 10), max_gamma=10) == expected


def test_adaptive_gamma_grows_and_shrinks_in_a_run(pair, prompts):
    cfg = GenConfig(gamma=3, max_new_tokens=80, options={"adaptive": True, "max_gamma": 8})
    prop = build_proposer("draft", pair, cfg)
    assert isinstance(prop, AdaptiveGamma) and prop.name == "draft"
    steps = list(run(pair.target, prop, prompts[0], cfg))
    gammas = [s.gamma for s in steps]
    assert gammas[0] == 3 and max(gammas) <= 8
    for s, after in zip(steps, gammas[1:]):
        assert after == next_gamma(s.gamma, Outcome(s.n_drafted, s.n_accepted, 0), 8)
    moves = {b - a for a, b in zip(gammas, gammas[1:])}
    assert 2 in moves and -1 in moves
    prop.reset(prompts[0])
    assert prop.next_gamma() == 3


def test_confidence_stops_drafting_early(pair, prompts):
    cfg = GenConfig(gamma=6, max_new_tokens=20, options={"confidence": 0.999})
    steps = list(run(pair.target, build_proposer("draft", pair, cfg), prompts[0], cfg))
    assert all(s.n_drafted == 1 for s in steps[:-1])  # every draft token is below 0.999: stop after the first


# ------------------------------------------------------------- options


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("nope", {}, "unknown strategy"),
        ("ngram", {"ngram_size": 3}, "unknown option 'ngram_size'"),
        ("ngram", {"ngram_max": 0}, "ngram_max"),
        ("ngram", {"ngram_max": "3"}, "ngram_max"),
        ("ngram", {"ngram_max": 2, "ngram_min": 3}, "ngram_min"),
        ("jacobi", {"pool_ngram": -1}, "pool_ngram"),
        ("layerskip", {"exit_layer": 0}, "exit_layer"),
        ("layerskip", {"exit_layer": 3}, "exit_layer"),
        ("layerskip", {"skip": [2]}, "layer indices"),
        ("layerskip", {"skip": [0, 0]}, "twice"),
        ("layerskip", {"skip": [0, 1]}, "keeps no layer"),
        ("layerskip", {"skip": "some"}, "'auto'"),
        ("layerskip", {"skip": "auto", "exit_layer": 1}, "do not combine"),
        ("draft", {"confidence": 1.0}, "confidence"),
        ("draft", {"confidence": "high"}, "confidence"),
        ("layerskip", {"adaptive": "yes"}, "adaptive"),
        ("draft", {"adaptive": True, "max_gamma": 2}, "max_gamma"),
        ("draft", {"max_gamma": MAX_GAMMA + 1}, "max_gamma"),
    ],
)
def test_bad_options_are_config_errors(pair, name, options, message):
    with pytest.raises(ConfigError, match=message):
        build_proposer(name, pair, GenConfig(gamma=4, options=options))


def test_other_strategies_knobs_are_ignored_and_draft_needs_a_draft(pair):
    assert build_proposer("ngram", pair, GenConfig(options={"pool_ngram": 2, "adaptive": True})).name == "ngram"
    with pytest.raises(ConfigError, match="no draft model"):
        build_proposer("draft", _pair(pair.target), GenConfig())


# ------------------------------------------------------------- prompt suites


def test_every_prompt_suite_has_three_prompts():
    suites = prompt_suites()
    assert {"code", "edit", "summarise", "extract", "translate", "story", "arithmetic"} <= set(suites)
    for name, prompts in suites.items():
        assert len(prompts) >= 3, name
        assert len({p["name"] for p in prompts}) == len(prompts), name
        assert all(isinstance(p["prompt"], str) and p["prompt"].strip() for p in prompts), name


def test_the_long_suite_holds_long_contexts_and_is_asked_for_by_name():
    long = suite_prompts("long")
    assert len(long) >= 3
    for _, name, prompt in long:
        assert "{context}" not in prompt, name
        assert 4000 <= len(prompt) <= 10000, name  # 1,100-2,000 tokens of context (glob.py: 1,999)
    assert not any(s == "long" for s, _, _ in suite_prompts("all"))  # seconds of prefill each: not in 'all'
    with pytest.raises(ConfigError, match="known suites: .*long"):
        suite_prompts("longest")
