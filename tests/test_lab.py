"""The Theory lab's maths and measurements: the relaxed rules (lossless at 0, exact drift against Monte Carlo, the
optimal line), the toy playground, the planner's formulas and real timings, and the schedule replay against real
engine runs on tiny models."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch
from helpers import ALPHA, case, fake_pair, token_pvalue

from specviz.cli.main import main
from specviz.core import relaxed, verify
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import trace_from_json, trace_to_json
from specviz.core.sampling import Sampler, tv_distance
from specviz.core.theory import expected_speedup
from specviz.lab import planner, replay
from specviz.lab import playground as pgm
from specviz.lab.tradeoff import relaxed_sweep
from specviz.proposers import AdaptiveGamma, DraftModelProposer

N_REPLAY = 40  # tokens of the recorded run the replay tests use
FAMILIES = relaxed.FAMILIES


def random_pairs(n: int = 200, v: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n (p, q) rows over v tokens: spiky random weights with some exact zeros in each."""
    g = torch.Generator().manual_seed(seed)

    def rows() -> torch.Tensor:
        w = (-torch.rand(n, v, generator=g, dtype=torch.float64).log()) ** 2
        w[torch.rand(n, v, generator=g) < 0.15] = 0
        w[:, 0] += 1e-3  # never all zero
        return w / w.sum(-1, keepdim=True)

    return rows(), rows()


RULE_CASES = ("overlapping", "q_has_zeros")  # of helpers.CASES


# ------------------------------------------------------------- relaxed rules: exact maths


@pytest.mark.parametrize("family", FAMILIES)
def test_relax_zero_is_the_lossless_rule_in_every_family(family):
    p, q = random_pairs()
    tv = tv_distance(p, q)
    m = (p / q.clamp_min(1e-300)).clamp(max=1)
    assert torch.allclose(relaxed.acceptance(p, q, 0.0, family), m)
    assert torch.allclose(relaxed.output_dist(p, q, 0.0, family), p, atol=1e-12)
    assert torch.allclose(relaxed.drift(p, q, 0.0, family), torch.zeros_like(tv), atol=1e-12)
    assert torch.allclose(relaxed.rejection_prob(p, q, 0.0, family), tv, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_relax_one_accepts_every_guess(family):
    p, q = random_pairs()
    assert torch.allclose((q * relaxed.acceptance(p, q, 1.0, family)).sum(-1), torch.ones(len(p), dtype=p.dtype))
    assert torch.allclose(relaxed.output_dist(p, q, 1.0, family), q, atol=1e-12)
    assert torch.allclose(relaxed.drift(p, q, 1.0, family), tv_distance(p, q), atol=1e-12)


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_linear_family_is_the_arithmetic_mix_on_the_optimal_line(lam):
    p, q = random_pairs(seed=1)
    tv = tv_distance(p, q)
    assert torch.allclose(relaxed.output_dist(p, q, lam), (1 - lam) * p + lam * q, atol=1e-12)
    assert torch.allclose(relaxed.rejection_prob(p, q, lam), (1 - lam) * tv, atol=1e-12)
    assert torch.allclose(relaxed.drift(p, q, lam), lam * tv, atol=1e-12)


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_no_family_beats_the_line_power_meets_it_geometric_does_not(lam):
    """Yin et al.'s bound: rejection + drift >= TV for every rule; power sits on the line, geometric above it."""
    p, q = random_pairs(seed=2)
    tv = tv_distance(p, q)
    total = {f: relaxed.rejection_prob(p, q, lam, f) + relaxed.drift(p, q, lam, f) for f in FAMILIES}
    for f in FAMILIES:
        assert (total[f] >= tv - 1e-12).all(), f
    assert torch.allclose(total["power"], tv, atol=1e-12)
    assert torch.allclose(total["linear"], tv, atol=1e-12)
    gap = total["geometric"] - tv
    assert gap.mean() > 1e-3 and (gap > 1e-6).float().mean() > 0.5
    # power relaxes differently from linear: the knob is not the same line parameter
    assert not torch.allclose(relaxed.drift(p, q, lam, "power"), relaxed.drift(p, q, lam, "linear"))


def test_relaxed_verify_at_zero_is_the_lossless_rule_with_the_same_draws():
    p_all, q_all = random_pairs(n=60, seed=3)
    for i in range(20):
        p, q = p_all[3 * i : 3 * i + 3], q_all[3 * i : 3 * i + 2]  # k = 2
        draft = torch.multinomial(q, 1, generator=torch.Generator().manual_seed(i)).squeeze(1)
        a, b = Sampler("sample", 1.0, 0, 1.0, i), Sampler("sample", 1.0, 0, 1.0, i)
        for _ in range(5):
            assert verify.relaxed_verify(draft, p, q, a, 0.0, "geometric") == verify.speculative_verify(draft, p, q, b)


def _first_tokens(p1: torch.Tensor, q1: torch.Tensor, n: int, lam: float, family: str, seed: int = 0):
    """n rounds of relaxed_verify with k = 1 (x ~ q1): counts of the first emitted token and of rejections."""
    p = torch.stack([p1, p1.roll(1)])  # (k + 1, V)
    q = q1[None]  # (k, V)
    sampler = Sampler("sample", 1.0, 0, 1.0, seed)
    drafts = torch.multinomial(q1, n, replacement=True, generator=torch.Generator().manual_seed(seed + 1))
    counts, rejections = torch.zeros(len(p1)), 0
    for x in drafts.tolist():
        v = verify.relaxed_verify(torch.tensor([x]), p, q, sampler, lam, family)
        counts[x if v.n_accepted else v.token] += 1
        rejections += v.n_accepted == 0
    return counts, rejections


@pytest.mark.parametrize("name", RULE_CASES)
def test_relaxed_rule_at_zero_is_lossless_and_its_measured_drift_is_zero(name):
    p1, q1 = case(name)
    n = 10_000
    counts, _ = _first_tokens(p1, q1, n, 0.0, "linear")
    assert token_pvalue(counts, p1) > ALPHA
    noise = (len(p1) / (2 * torch.pi * n)) ** 0.5  # typical TV between an n-draw histogram and its distribution
    assert float(tv_distance(counts / n, p1)) < 3 * noise


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_exact_drift_and_rejection_match_monte_carlo(family, lam):
    p1, q1 = case("overlapping")
    n = 12_000  # the histogram's TV then has sampling noise of about 0.009 (see above), inside the 0.02 allowed
    counts, rejections = _first_tokens(p1, q1, n, lam, family, seed=11)
    out = relaxed.output_dist(p1, q1, lam, family)
    assert token_pvalue(counts, out) > ALPHA  # the emitted tokens follow the exact output distribution
    drift = float(relaxed.drift(p1, q1, lam, family))
    assert drift > 0.02
    assert abs(float(tv_distance(counts / n, p1)) - drift) < 0.02
    r = float(relaxed.rejection_prob(p1, q1, lam, family))
    assert abs(rejections / n - r) < 4 * (r * (1 - r) / n) ** 0.5 + 1e-9


def test_the_distribution_test_catches_a_relaxed_rule():
    """Teeth: at relax 0.5 the emitted tokens no longer follow p."""
    p1, q1 = case("overlapping")
    counts, _ = _first_tokens(p1, q1, 5000, 0.5, "linear")
    assert token_pvalue(counts, p1) < ALPHA


# ------------------------------------------------------------- relaxed rules in the engine


def test_relax_settings_are_validated():
    with pytest.raises(ConfigError, match="rule 'sample'"):
        GenConfig(relax=0.3).validated()
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="relax must be"):
            GenConfig(rule="sample", relax=bad).validated()
    with pytest.raises(ConfigError, match="relax_family"):
        GenConfig(rule="sample", relax_family="cubic").validated()
    assert GenConfig().relax == 0.0  # lossless is the default


def test_relax_zero_runs_exactly_the_default_rule(tiny_pair, prompts):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=4, rule="sample", max_new_tokens=24, seed=3)
    a = run(target, DraftModelProposer(draft, 4), prompts[0], cfg)
    b = run(target, DraftModelProposer(draft, 4), prompts[0], cfg.with_(relax=0.0, relax_family="geometric"))
    sa, sb = list(a), list(b)
    assert [(t.id, t.origin) for s in sa for t in s.tokens] == [(t.id, t.origin) for s in sb for t in s.tokens]
    assert all(t.drift is None for s in sa for t in s.tokens)


def test_relaxed_run_records_the_exact_drift_per_checked_position(tiny_pair, prompts):
    target, draft = tiny_pair
    lam = 0.4
    cfg = GenConfig(gamma=4, rule="sample", max_new_tokens=24, seed=2, relax=lam)
    r = run(target, DraftModelProposer(draft, 4), prompts[1], cfg)
    steps = list(r)
    drafted = [t for s in steps for t in s.drafted]
    assert drafted and all(t.drift is not None for t in drafted)
    for t in drafted:  # linear: drift = lam TV, P(reject) = (1 - lam) TV, acceptance m + lam (1 - m)
        assert t.drift == pytest.approx(lam * t.tv, abs=1e-9)
        assert t.reject_prob == pytest.approx((1 - lam) * t.tv, abs=1e-9)
        m = min(1.0, t.p / t.q)
        assert t.accept_prob == pytest.approx(m + lam * (1 - m), abs=1e-9)
    back, _, _ = trace_from_json(trace_to_json(steps, r.summary))
    assert back == steps  # the drift survives the JSON round trip


def test_relaxed_sweep_puts_linear_on_the_line(tiny_pair, prompts):
    target, draft = tiny_pair
    pair = fake_pair(target, draft)
    cfg = GenConfig(gamma=4, max_new_tokens=30, seed=1)
    rows = relaxed_sweep(pair, prompts[0], cfg, lams=(0.0, 0.5, 1.0), families=("linear", "geometric"))
    assert [(r["family"], r["relax"]) for r in rows] == [
        ("linear", 0.0),
        ("linear", 0.5),
        ("linear", 1.0),
        ("geometric", 0.0),
        ("geometric", 0.5),
        ("geometric", 1.0),
    ]
    for r in rows:
        assert r["checked"] > 0 and r["tv_sum"] > 0
        if r["family"] == "linear":  # per position: drift = lam TV, expected rejections = (1 - lam) TV
            assert r["rel_drift"] == pytest.approx(r["relax"])
            assert r["rel_expected"] == pytest.approx(1 - r["relax"])
        else:  # geometric: never below the optimal line, strictly above it in between
            assert r["rel_expected"] + r["rel_drift"] >= 1 - 1e-9
            assert (r["rel_expected"] + r["rel_drift"] > 1 + 1e-6) == (0 < r["relax"] < 1)
    assert rows[0]["drift_sum"] == 0 and rows[2]["rejections"] == 0  # lossless drifts not; accept-all rejects not
    assert rows[0]["rejections"] > 0


# ------------------------------------------------------------- the toy playground


def test_parse_normalises_and_names_bad_input():
    assert pgm.parse_dist("1, 1; 2 0 0", "p") == [0.25, 0.25, 0.5, 0.0, 0.0]
    assert pgm.parse_dist("0.2,0.2,0.2,0.2,0.2,", "p") == pytest.approx([0.2] * 5)  # a trailing comma while typing
    bad = {
        "": "empty",
        "0.1, abc, 0.2, 0.3, 0.4": "'abc' is not a number",
        "0.1, -0.2, 0.3, 0.4, 0.4": "negative",
        "0, 0, 0, 0, 0": "all zeros",
        "0.5, 0.5": "2 numbers",
        ", ".join(["0.1"] * 11): "11 numbers",
        "0.1, inf, 0.2, 0.3, 0.4": "finite",
    }
    for text, words in bad.items():
        with pytest.raises(ConfigError, match=words):
            pgm.parse_dist(text, "p")
    with pytest.raises(ConfigError, match="same number"):
        pgm.parse_pair("1 1 1 1 1", "1 1 1 1 1 1")


@pytest.mark.parametrize("case", list(pgm.PRESETS))
def test_playground_numbers_and_lossless_histogram(case):
    p, q = pgm.PRESETS[case]
    pg = pgm.playground(p, q, n=40_000, seed=5)
    pt, qt = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    tv = float(tv_distance(pt, qt))
    assert sum(pg.overlap) == pytest.approx(1 - tv) and pg.tv == pytest.approx(tv)
    assert pg.rejection == pytest.approx(tv) and pg.drift == pytest.approx(0, abs=1e-12)
    for a, pi, qi in zip(pg.accept, p, q):
        assert a is None if qi == 0 else a == pytest.approx(min(1.0, pi / qi))
    if tv > 0:  # the residual is where p exceeds q, normalised
        assert sum(pg.residual) == pytest.approx(1)
        assert all(r == 0 for r, pi, qi in zip(pg.residual, p, q) if pi <= qi)
    assert sum(pg.counts) == 40_000
    assert token_pvalue(torch.tensor(pg.counts, dtype=torch.float64), pt) > ALPHA
    assert pg.accepted_draws == pytest.approx(40_000 * (1 - tv), abs=5 * (40_000 * 0.25) ** 0.5)


def test_playground_relaxed_histogram_follows_the_exact_output():
    p, q = pgm.PRESETS["overconfident draft"]
    pg = pgm.playground(p, q, n=40_000, seed=1, relax=0.6, family="linear")
    assert pg.drift == pytest.approx(0.6 * pg.tv) and pg.rejection == pytest.approx(0.4 * pg.tv)
    out = torch.tensor(pg.output, dtype=torch.float64)
    assert token_pvalue(torch.tensor(pg.counts, dtype=torch.float64), out) > ALPHA
    assert pg.sample_tv == pytest.approx(pg.drift, abs=0.02)


def test_playground_is_reproducible_and_checks_its_settings():
    p, q = pgm.PRESETS["close"]
    assert pgm.simulate(p, q, 1000, 7) == pgm.simulate(p, q, 1000, 7)
    assert pgm.simulate(p, q, 1000, 7) != pgm.simulate(p, q, 1000, 8)
    for n in (0, pgm.MAX_DRAWS + 1, 2.5):
        with pytest.raises(ConfigError, match="draws"):
            pgm.simulate(p, q, n, 0)
    with pytest.raises(ConfigError, match="relax"):
        pgm.playground(p, q, relax=2.0)
    a = pgm.random_pair(7, 3)
    assert a == pgm.random_pair(7, 3) and a != pgm.random_pair(7, 4)
    assert all(len(d) == 7 and sum(d) == pytest.approx(1) and min(d) >= 0 for d in a)
    with pytest.raises(ConfigError, match="tokens"):
        pgm.random_pair(4, 0)


# ------------------------------------------------------------- the planner


def test_planner_formulas_against_hand_computed_values():
    costs = planner.Costs(
        ks=[1, 2, 3, 4, 5], target_ms=[10.0, 12.0, 13.0, 15.0, 20.0], draft_ms=2.0, repeats=1, context=3
    )
    assert costs.c == pytest.approx(0.2)
    assert costs.ratio(3) == pytest.approx(1.3) and costs.ratio(1) == 1.0
    assert costs.verify_ms(6) == pytest.approx(25.0)  # extrapolated from the last two
    # alpha 0.8, gamma 4: E = (1 - 0.8^5) / 0.2 = 3.3616; classic 3.3616 / (4 * 0.2 + 1); with V(5)/V(1) = 2
    assert planner.cost_aware_speedup(0.8, 4, 0.2, 2.0) == pytest.approx(3.3616 / 2.8)
    curve = planner.speedup_curve(0.8, costs, [1, 2, 3, 4])
    assert [r["gamma"] for r in curve] == [1, 2, 3, 4]
    assert curve[3]["classic"] == pytest.approx(3.3616 / 1.8) == pytest.approx(expected_speedup(0.8, 4, 0.2))
    assert curve[3]["cost_aware"] == pytest.approx(3.3616 / 2.8)
    assert curve[0]["cost_aware"] == pytest.approx(1.8 / (0.2 + 1.2))  # gamma 1: (1 + a) / (c + V(2)/V(1))
    assert planner.best_gamma(curve, "classic") == 4
    assert planner.best_gamma(curve, "cost_aware") == max(curve, key=lambda r: r["cost_aware"])["gamma"]
    assert planner.pooled_alpha([{"accepted": 3, "checked": 4}, {"accepted": 5, "checked": 6}]) == 0.8


class SlowLM:
    """An LM whose forward also sleeps ms_per_token per fed token: timings must follow it if they are real."""

    def __init__(self, lm, ms_per_token: float) -> None:
        self.lm, self.ms = lm, ms_per_token
        self.fed: list[int] = []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def forward(self, ids, keep=None):
        self.fed.append(len(ids))
        time.sleep(self.ms * len(ids) / 1e3)
        return self.lm.forward(ids, keep)


def test_measure_costs_times_real_forward_passes(tiny_pair, prompts):
    target, draft = tiny_pair
    pair = fake_pair(SlowLM(target, 60.0), SlowLM(draft, 15.0))
    costs = planner.measure_costs(pair, prompts[0], ks=[1, 4], repeats=2)
    assert costs.ks == [1, 4] and len(costs.target_ms) == 2
    # every k was fed as one pass of k tokens, in a warm-up round and 2 timed rounds, after one prefill
    assert pair.target.fed == [len(prompts[0]) - 1, 1, 4, 4, 1, 1, 4]
    assert target.length == 0  # caches left clean
    # what gets measured is the calls themselves: never less than the sleeping models' time, and k = 4 costs well
    # over twice k = 1 (a busy shared CPU only adds time, so no upper bounds)
    assert all(ms >= 60.0 * k for k, ms in zip(costs.ks, costs.target_ms))
    assert costs.draft_ms >= 15.0 and costs.c == pytest.approx(costs.draft_ms / costs.target_ms[0])
    assert costs.ratio(4) > 2.2
    back = planner.Costs.from_dict(json.loads(json.dumps(costs.to_dict())))
    assert back == costs


def test_measure_speedups_runs_plain_and_each_gamma(tiny_pair, prompts):
    target, draft = tiny_pair
    pair = fake_pair(target, draft)
    rows, plain = planner.measure_speedups(pair, prompts[0], GenConfig(max_new_tokens=20), [1, 3])
    assert [r["gamma"] for r in rows] == [1, 3] and plain.steps == 20
    for r in rows:
        assert r["identical"] is True and r["speedup"] > 0 and 0 <= r["alpha"] <= 1
        assert r["speedup"] == pytest.approx(r["plain_wall_s"] / r["wall_s"], rel=1e-6)


# ------------------------------------------------------------- the replay


@pytest.fixture(scope="module")
def recording(tiny_pair, prompts):
    target, draft = tiny_pair
    cfg = GenConfig(max_new_tokens=N_REPLAY)
    plain = run(target, None, prompts[0], cfg).run()
    return plain, replay.draft_agreement(draft, prompts[0], plain.output_ids)


@pytest.mark.parametrize("gamma", [2, 5])
def test_replay_reproduces_real_engine_runs_exactly(tiny_pair, prompts, recording, gamma):
    """Under greedy, the agreement pattern fixes every schedule's steps: compare with actually running them."""
    target, draft = tiny_pair
    plain, ag = recording
    cfg = GenConfig(gamma=gamma, max_new_tokens=N_REPLAY)
    cases = {
        "constant": DraftModelProposer(draft, gamma),
        "adaptive": AdaptiveGamma(DraftModelProposer(draft, gamma), 12),
        "confidence": DraftModelProposer(draft, gamma, 0.5),
    }
    for schedule, proposer in cases.items():
        real = run(target, proposer, prompts[0], cfg).run()
        assert real.output_ids == plain.output_ids
        sim = replay.simulate(ag, schedule, gamma, N_REPLAY, max_gamma=12, confidence=0.5)
        assert (sim["steps"], sim["accepted"]) == (real.steps, real.accepted), schedule
        if schedule != "confidence":  # drafted counts are exact except after a wrong guess under the confidence stop
            assert sim["drafted"] == real.drafted, schedule


def test_oracle_never_drafts_a_rejected_token(recording):
    plain, ag = recording
    assert 0 < sum(ag.agree) < len(ag.agree)  # the draft agrees sometimes, not always: the test is not vacuous
    oracle = replay.simulate(ag, "oracle", 4, N_REPLAY)
    assert oracle["drafted"] == oracle["accepted"]
    for g in range(1, 16):
        assert oracle["steps"] <= replay.simulate(ag, "constant", g, N_REPLAY)["steps"]
    costs = planner.Costs([1, 2, 3, 4, 5, 6], [10.0, 11, 12, 13, 14, 15], 3.0, 1, 1)
    rows = replay.replay(ag, costs, 4, N_REPLAY, confidence=0.5, best_range=range(1, 6))
    by = {r["schedule"]: r for r in rows}
    assert set(by) == set(replay.SCHEDULES) and by["oracle"]["wasted"] == 0
    assert all(r["tokens"] == len(plain.output_ids) for r in rows)
    # predicted time: d drafts at 3 ms plus a pass over d + 1 tokens, per step; plain is 10 ms per token
    lengths = replay.simulate(ag, "constant", 4, N_REPLAY)["lengths"]
    want = sum(3.0 * d + 10.0 + d for d in lengths)
    assert by["constant"]["predicted_s"] == pytest.approx(want / 1e3)
    assert by["constant"]["predicted_speedup"] == pytest.approx(10.0 * N_REPLAY / want)
    assert by["best constant"]["predicted_s"] <= by["constant"]["predicted_s"]


def test_read_trace_accepts_a_greedy_download_and_names_what_is_missing(tiny_pair, prompts):
    from specviz.core.trace import read_trace

    target, draft = tiny_pair
    r = run(target, DraftModelProposer(draft, 3), prompts[0], GenConfig(gamma=3, max_new_tokens=20))
    steps = list(r)
    meta = {"prompt": "def add(a, b):\n    return", "preset": "tiny-random", "config": GenConfig(gamma=3).to_dict()}
    back = read_trace(trace_to_json(steps, r.summary, meta), greedy=True)
    assert back.summary.output_ids == r.summary.output_ids and back.prompt == meta["prompt"]
    with pytest.raises(ConfigError, match="greedy"):
        sampled = {**meta, "config": {"rule": "sample", "max_new_tokens": 20}}
        read_trace(trace_to_json(steps, r.summary, sampled), greedy=True)
    with pytest.raises(ConfigError, match="prompt"):
        read_trace(trace_to_json(steps, r.summary, {}))
    with pytest.raises(ConfigError, match="summary"):
        read_trace(trace_to_json(steps, None, meta))
    with pytest.raises(ConfigError, match="not a specviz event trace"):
        read_trace("{not json")


# ------------------------------------------------------------- the command line


def test_cli_lab_playground_prints_the_table_and_rejects_bad_input(capsys):
    out = io.StringIO()
    assert main(["lab", "playground", "--case", "disjoint", "--draws", "2000"], out) == 0
    text = out.getvalue()
    assert "overlap = 0.0000 = 1 - TV" in text and "| token |" in text
    assert main(["lab", "playground", "--p", "1,2,3", "--q", "1,1,1"], io.StringIO()) == 2
    assert "give 5 to 10" in capsys.readouterr().err
