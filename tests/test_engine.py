"""Engine behaviour on tiny models: EOS, token budgets, cache rollback, reproducibility, events, bad input, theory."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_eos_ended_inside_a_draft, eos_candidate

from specviz.backends.lm import LM
from specviz.backends.tiny import perturbed_copy
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent, trace_from_json, trace_to_json
from specviz.core.theory import expected_speedup, expected_tokens_per_step
from specviz.proposers import DraftModelProposer


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("gamma", [1, 4, 8])
def test_never_more_tokens_than_asked(tiny_pair, prompts, plain_greedy, max_new, gamma):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=gamma, max_new_tokens=max_new)
    plain = plain_greedy(prompts[0], max_new)
    spec = run(target, DraftModelProposer(draft, gamma), prompts[0], cfg).run()
    assert len(spec.output_ids) == max_new == len(plain.output_ids)
    assert spec.output_ids == plain.output_ids
    assert spec.stop_reason == "max_new_tokens"


@pytest.mark.parametrize("rule", ["greedy", "sample"])
def test_eos_inside_an_accepted_draft_ends_the_run(tiny_pair, prompts, rule):
    """With a draft equal to the target every guess is accepted. A token that the draft proposed and the target
    accepted in the middle of a draft (drafted tokens after it, first seen there) is declared EOS: the run ends on
    it, the drafted tokens after it are not emitted, and no target token follows."""
    target, _ = tiny_pair
    same = LM(perturbed_copy(target.model, 0.0, 0))
    cfg = GenConfig(gamma=8, max_new_tokens=30, rule=rule, temperature=0.8, seed=7)
    free = run(target, DraftModelProposer(same, 8), prompts[0], cfg)
    steps = list(free)
    assert all(s.n_accepted == s.n_drafted for s in steps)  # p = q: nothing is rejected
    if rule == "greedy":
        assert free.summary.output_ids == run(target, None, prompts[0], cfg).run().output_ids
    eos, at = eos_candidate(steps, free.summary.output_ids)
    spec = run(target, DraftModelProposer(same, 8), prompts[0], cfg, eos_ids={eos})
    assert_eos_ended_inside_a_draft(list(spec), spec.summary, eos, free.summary.output_ids[: at + 1])


def test_eos_as_the_target_token(tiny_pair, prompts):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=3, max_new_tokens=30)
    plain = run(target, None, prompts[1], cfg).run().output_ids
    for eos in set(plain[:10]):
        out = run(target, DraftModelProposer(draft, 3), prompts[1], cfg, eos_ids={eos}).run()
        assert out.output_ids == plain[: plain.index(eos) + 1]


def test_cache_rollback_matches_a_fresh_forward(tiny_pair, prompts):
    """After a run with many rejections, the cropped caches give the same logits as recomputing from scratch."""
    target, draft = tiny_pair
    proposer = DraftModelProposer(draft, 6)
    r = run(target, proposer, prompts[0], GenConfig(gamma=6, max_new_tokens=50))
    s = r.run()
    assert s.rejections > 3
    ctx = prompts[0] + s.output_ids
    assert target.length == len(ctx) - 1  # every token but the last is cached, nothing more
    incremental = target.forward([ctx[-1]])[-1]
    fresh = LM(target.model)
    assert torch.allclose(fresh.forward(ctx)[-1], incremental, atol=1e-10)
    # the draft's cache holds a prefix of the context, never a rejected token
    assert proposer.fed == ctx[: len(proposer.fed)]


@pytest.mark.parametrize("rule", ["greedy", "sample"])
def test_same_seed_same_tokens_and_verdicts(tiny_pair, prompts, rule):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=4, rule=rule, temperature=0.9, top_p=0.95, max_new_tokens=40, seed=123)

    def verdicts():
        steps = list(run(target, DraftModelProposer(draft, 4), prompts[0], cfg))
        return [(t.id, t.origin) for s in steps for t in s.tokens]

    assert verdicts() == verdicts()
    if rule == "sample":
        other = list(run(target, DraftModelProposer(draft, 4), prompts[0], cfg.with_(seed=124)))
        assert [(t.id, t.origin) for s in other for t in s.tokens] != verdicts()


def test_events_carry_probabilities_and_round_trip_json(tiny_pair, prompts, codec):
    target, draft = tiny_pair
    r = run(
        target,
        DraftModelProposer(draft, 4),
        prompts[0],
        GenConfig(gamma=4, max_new_tokens=30),
        piece=codec.piece,
        detail_top=5,
    )
    steps = list(r)
    for s in steps:
        for t in s.drafted:
            assert 0 <= t.p <= 1 and 0 < t.q <= 1 and 0 <= t.tv <= 1
            assert t.accept_prob == pytest.approx(min(1.0, t.p / t.q))
        assert s.draft_ms >= 0 and s.verify_ms > 0
        assert isinstance(s.detail["p"][0], float) and 5 <= len(s.detail["tokens"]) <= 7
        assert all(t.id in s.detail["token_ids"] for t in s.tokens if t.origin in ("rejected", "resampled", "bonus"))
        if s.rejected:
            assert s.detail["residual"] is not None and s.detail["q"] is not None
    text = trace_to_json(steps, r.summary, {"prompt": "x"})
    back, summary, meta = trace_from_json(text)
    assert back == steps and summary == r.summary and meta == {"prompt": "x"}
    assert all(
        isinstance(v, int | float | str | bool | list | dict | type(None))
        for v in json.loads(text)["steps"][0].values()
    )
    # running totals agree with the per-step numbers
    assert steps[-1].total_accepted == sum(s.n_accepted for s in steps) == r.summary.accepted
    assert "".join(t.text for s in steps for t in s.emitted) == codec.decode(r.summary.output_ids)


def test_plain_decoding_is_one_token_per_pass(tiny_pair, prompts):
    target, _ = tiny_pair
    s = run(target, None, prompts[0], GenConfig(max_new_tokens=12)).run()
    assert s.steps == 12 and s.tokens_per_step == 1.0 and s.drafted == 0


def test_instrumentation_off_gives_same_tokens(tiny_pair, prompts):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=4, rule="sample", max_new_tokens=30, seed=5)
    a = run(target, DraftModelProposer(draft, 4), prompts[0], cfg).run().output_ids
    b = run(target, DraftModelProposer(draft, 4), prompts[0], cfg, instrument=False).run().output_ids
    assert a == b


def test_stop_ends_within_one_step(tiny_pair, prompts):
    target, draft = tiny_pair
    flag = {"stop": False}
    r = run(
        target,
        DraftModelProposer(draft, 4),
        prompts[0],
        GenConfig(max_new_tokens=200),
        should_stop=lambda: flag["stop"],
    )
    for s in r:
        if s.step == 2:
            flag["stop"] = True
    assert len(r.steps) == 3 and r.summary.stop_reason == "stopped"


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(gamma=0), "gamma"),
        (dict(gamma=1000), "gamma"),
        (dict(gamma=2.5), "gamma"),
        (dict(temperature=-1.0), "temperature"),
        (dict(rule="sample", temperature=0.0), "temperature 0"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_k=-3), "top_k"),
        (dict(rule="beam"), "rule"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_settings_name_the_problem(changes, words):
    with pytest.raises(ConfigError, match=words):
        GenConfig(**changes).validated()


def test_empty_and_too_long_prompts(tiny_pair):
    target, draft = tiny_pair
    with pytest.raises(ConfigError, match="empty"):
        run(target, None, [], GenConfig())
    with pytest.raises(ConfigError, match="exceeds the model's context of 2048"):
        run(target, None, [1] * 2040, GenConfig(max_new_tokens=64))


def test_step_event_from_dict_rejects_nothing_it_wrote(tiny_pair, prompts):
    target, _ = tiny_pair
    s = next(iter(run(target, None, prompts[0], GenConfig(max_new_tokens=3))))
    assert StepEvent.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# ------------------------------------------------------------- theory


def test_leviathan_formulas_by_hand():
    assert expected_tokens_per_step(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert expected_tokens_per_step(0.8, 4) == pytest.approx(3.3616)
    assert expected_speedup(0.8, 4, 0.5) == pytest.approx(3.3616 / 3)
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.0, 4) == 1.0


def test_why_sentence_points_away_from_a_costly_draft():
    from specviz.core.theory import why_sentence

    costly = why_sentence(0.8, 0.6, 4, 0.95)
    assert "measured 0.95x (slower than plain)" in costly and "prompt lookup, layer skip or helper heads" in costly
    assert "helper heads" not in why_sentence(0.8, 0.2, 4, 2.1)


def test_why_says_plain_only_without_drafts_and_no_prediction_without_a_cost():
    from dataclasses import replace

    from specviz.core.theory import why

    base = RunSummary(strategy="s", rule="greedy", gamma=4, new_tokens=8, steps=4, drafted=4, accepted=1,
                      acceptance_rate=0.25, mean_accepted=0.25, tokens_per_step=2.0, wall_s=1.0, prefill_ms=0.0,
                      tokens_per_s=8.0, draft_ms=0.0, verify_ms=0.0, cost_ratio=None, tv_sum=0.0, rejections=1,
                      stop_reason="max_new_tokens")  # fmt: skip
    assert "No drafts were made" in why(replace(base, drafted=0, accepted=0))
    untimed = why(base)  # drafts, but nothing timed them apart (a vLLM server's run)
    assert "No drafts" not in untimed and "was not measured" in untimed and "predicts no speedup" in untimed
