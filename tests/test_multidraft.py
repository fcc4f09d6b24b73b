"""Multi-draft speculative decoding (strategy multidraft): M candidates merged into a token tree, greedy identity with
plain decoding, SpecInfer's multi-step speculative sampling over the tree preserving the target distribution (and
biased variants caught by the same test), batched draft rows matching fresh passes, honest step events, and the
Theory lab's batch sweep."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    ALPHA,
    assert_eos_ended_inside_a_draft,
    case,
    eos_candidate,
    exact_two_token_probs,
    fake_pair,
    token_pvalue,
    two_token_pvalue,
)

from specviz.backends.lm import LM
from specviz.backends.tiny import perturbed_copy
from specviz.core import tree as trees
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import trace_from_json, trace_to_json
from specviz.core.sampling import Sampler
from specviz.core.tree import Tree, tree_greedy_verify, tree_sample_verify
from specviz.lab.batch import batch_sweep
from specviz.proposers import STRATEGIES, DraftModelProposer, MultiDraftProposer, build_proposer

# ------------------------------------------------------------- greedy: identical to plain decoding


@pytest.mark.parametrize("drafts", [1, 2, 4])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_matches_plain_greedy(tiny_pair, prompts, plain_greedy, drafts, gamma):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=gamma, max_new_tokens=30, options={"drafts": drafts})
    proposer = build_proposer("multidraft", fake_pair(target, draft), cfg)
    for ids in prompts:
        plain = plain_greedy(ids, 30)
        spec = run(target, proposer, ids, cfg).run()
        assert spec.output_ids == plain.output_ids, ids
        assert spec.steps < plain.steps


def test_greedy_second_choices_win_and_save_steps(tiny_pair, prompts):
    """Not vacuous: with M = 4, some steps keep a candidate after a rejected one, so fewer passes than one draft."""
    target, draft = tiny_pair
    cfg = GenConfig(gamma=4, max_new_tokens=60, options={"drafts": 4})
    r = run(target, MultiDraftProposer(draft, 4, 4), prompts[0], cfg)
    steps = list(r)
    one = run(target, DraftModelProposer(draft, 4), prompts[0], cfg).run()
    assert r.summary.output_ids == one.output_ids
    assert r.summary.steps < one.steps

    def second_choice_won(s) -> bool:
        return any(
            a.origin == "rejected" and b.origin == "accepted" and a.draft_pos == b.draft_pos
            for a, b in zip(s.tokens, s.tokens[1:])
        )

    assert any(second_choice_won(s) for s in steps)


def test_greedy_candidates_are_distinct_and_the_first_is_the_single_draft(tiny_pair, prompts):
    target, draft = tiny_pair
    sampler = Sampler("greedy", 1.0, 0, 1.0, 0)
    multi = MultiDraftProposer(draft, 5, 4)
    multi.reset(prompts[0])
    prop = multi.propose(prompts[0], 99, sampler)
    single = DraftModelProposer(draft, 5)
    single.reset(prompts[0])
    cands = multi.last_candidates
    assert cands[0] == single.propose(prompts[0], 99, sampler).ids
    assert len({c[0] for c in cands}) == 4 and all(len(c) == 5 for c in cands)
    assert len(prop.tree) == 20 and sorted(prop.tree.ids[i] for i in prop.tree.children(-1)) == sorted(c[0] for c in cands)


def test_eos_inside_the_kept_candidate_ends_the_run(tiny_pair, prompts):
    """An EOS that is an accepted token in the middle of the kept candidate ends the run there: the candidate's tokens
    after it are not emitted, and no target token follows."""
    target, _ = tiny_pair
    same = LM(perturbed_copy(target.model, 0.0, 0))  # every first candidate is accepted
    cfg = GenConfig(gamma=6, max_new_tokens=30)
    plain = run(target, None, prompts[0], cfg).run().output_ids
    free = run(target, MultiDraftProposer(same, 6, 3), prompts[0], cfg)
    eos, at = eos_candidate(list(free), plain)
    r = run(target, MultiDraftProposer(same, 6, 3), prompts[0], cfg, eos_ids={eos})
    assert_eos_ended_inside_a_draft(list(r), r.summary, eos, plain[: at + 1])


# ------------------------------------------------------------- the rule on constructed distributions

RULE_CASES = ("overlapping", "q_has_zeros", "disjoint")  # of helpers.CASES


def _tree_p(tree: Tree, rows: list[torch.Tensor]) -> torch.Tensor:
    """p over every node of a tree whose p depends only on depth: rows[d] after d tokens. -> (N+1, V)"""
    return torch.stack([rows[0]] + [rows[d] for d in tree.depths])


def _first_token_counts(name: str, m: int, n: int, merge_duplicates: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw M candidates of 2 tokens i.i.d. from q, merge them into a tree, walk it, count the first emitted token.
    -> (counts, p)"""
    p1, q1 = case(name)
    prows = [p1, p1.roll(1), p1.roll(2)]
    q = torch.stack([q1, q1.roll(3)]).expand(m, -1, -1)  # (M, k, V)
    sampler = Sampler("sample", 1.0, 0, 1.0, 0)
    counts = torch.zeros(p1.shape[0])
    for _ in range(n):
        cands = torch.stack([torch.multinomial(q[0, i], m, True, generator=sampler.generator) for i in range(2)], 1)
        tree = Tree.merged(cands.tolist(), q)
        if merge_duplicates:  # one try per distinct child, as a tree that forgets repeated draws would
            tree = Tree(tree.ids, tree.parents, tree.q)
        v = tree_sample_verify(tree, _tree_p(tree, prows), sampler)
        counts[tree.ids[v.path[0]] if v.path else v.token] += 1
    return counts, p1


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("name", RULE_CASES)
def test_multi_draft_rule_preserves_target_distribution(name, m):
    assert token_pvalue(*_first_token_counts(name, m, 6000)) > ALPHA


def test_without_the_residual_update_the_rule_is_caught(monkeypatch):
    """The test has teeth: trying every candidate against the unchanged p (no p <- norm(max(0, p - q)) after a
    rejection, so the correction also comes from p) is detected by the same check."""
    monkeypatch.setattr(trees, "residual", lambda p, q: p)
    assert token_pvalue(*_first_token_counts("overlapping", 2, 4000)) < ALPHA  # p about 1e-120


@pytest.mark.slow  # 40,000 tree walks: about 25 s
def test_merging_duplicate_candidates_is_caught():
    """Why duplicates are tried again: one try per distinct token biases the output, and the same check sees it."""
    # a subtle bias (p about 1e-3 at 12,000 draws): so 40,000
    assert token_pvalue(*_first_token_counts("overlapping", 4, 40_000, merge_duplicates=True)) < ALPHA


def _dirichletish(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) ** 2
    x[..., 0] = 0.0  # token 0 is impossible here, so zeros are exercised
    return x / x.sum(-1, keepdim=True)


@pytest.mark.parametrize("m,k", [(3, 1), (2, 2), (4, 2)])
def test_two_token_joint_distribution_over_a_token_tree(m, k):
    """Prefix-dependent p and q over 4 tokens: candidates often share a first token, so which of them stay in play
    at the second position (the tree) matters; two tokens generated step after step follow p's joint law."""
    v = 4
    p0, p1 = _dirichletish((v,), 1), _dirichletish((v, v), 2)  # p(x0), p(x1 | x0)
    q0, q1 = _dirichletish((v,), 3), _dirichletish((v, v), 4)
    q0[0], q1[:, 0] = 0.3, 0.2  # q puts mass where p has none
    q0, q1 = q0 / q0.sum(), q1 / q1.sum(-1, keepdim=True)

    def dist(table0: torch.Tensor, table1: torch.Tensor, toks: list[int]) -> torch.Tensor:
        return table0 if not toks else table1[toks[-1]]

    sampler = Sampler("sample", 1.0, 0, 1.0, 11)
    n = 4000  # skipping the residual: p < 1e-160 already at 2000
    counts = torch.zeros(v * v)
    for _ in range(n):
        out: list[int] = []
        while len(out) < 2:
            cands, qs = [], []
            for _j in range(m):
                toks, qrow = list(out), []
                for _i in range(k):
                    qd = dist(q0, q1, toks)
                    qrow.append(qd)
                    toks.append(int(torch.multinomial(qd, 1, generator=sampler.generator)))
                cands.append(toks[len(out) :])
                qs.append(torch.stack(qrow))
            tree = Tree.merged(cands, torch.stack(qs))
            p_all = [dist(p0, p1, out)] + [dist(p0, p1, out + [tree.ids[a] for a in tree.path_to(i)]) for i in range(len(tree))]
            res = tree_sample_verify(tree, torch.stack(p_all), sampler)
            out += [tree.ids[i] for i in res.path] + [res.token]
        counts[out[0] * v + out[1]] += 1
    exact = (p0[:, None] * p1).reshape(-1)
    assert token_pvalue(counts, exact) > ALPHA


def test_rule_records_every_try_and_duplicates_of_a_rejected_token_fail():
    """Rejected tries come first and update p; a copy of a rejected token is then surely rejected (p' has no mass
    on it), and a try's tv is its chance of rejection, TV(p', q)."""
    p = torch.tensor([0.7, 0.3, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.2, 0.8], dtype=torch.float64)
    tree = Tree.merged([[2], [2], [1]], q.expand(3, 1, -1))  # token 2 has p = 0: both draws are rejected, then 1
    assert tree.ids == [2, 1] and tree.order(-1) == [0, 0, 1]
    res = tree_sample_verify(tree, p.expand(3, -1), Sampler("sample", 1, 0, 1, 0))
    assert [(tree.ids[t.node], t.accepted) for t in res.tries] == [(2, False), (2, False), (1, False)]
    assert res.tries[0].tv == pytest.approx(0.8) and res.tries[0].accept_prob == 0.0
    # after one rejection p' = norm(max(0, p - q)) = (0.875, 0.125, 0); after the second, (1, 0, 0): token 1,
    # which p alone would accept with probability 1, no longer can, and the correction must be token 0
    assert res.tries[1].tv == pytest.approx(0.875) and res.tries[2].accept_prob == 0.0
    assert sum(not t.accepted for t in res.tries) == 3 and (res.path, res.token, res.origin) == ((), 0, "resampled")
    assert torch.equal(res.residual, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_greedy_rule_keeps_the_candidate_matching_the_argmax():
    by_depth = torch.tensor([[5.0, 1, 0], [0, 5, 1], [1, 0, 5]])  # argmax 0, then 1, then 2
    tree = Tree.merged([[1, 1], [0, 2], [0, 1]])
    assert tree.ids == [1, 1, 0, 2, 1] and tree.parents == [-1, 0, -1, 2, 2]
    res = tree_greedy_verify(tree, torch.stack([by_depth[0]] + [by_depth[d] for d in tree.depths]))
    assert (res.path, res.token, res.origin) == ((2, 4), 2, "bonus")
    assert [(t.node, t.accepted) for t in res.tries] == [(0, False), (2, True), (3, False), (4, True)]


# ------------------------------------------------------------- the engine, end to end


@pytest.mark.parametrize("drafts", [2, 4])
def test_engine_sampling_matches_target_joint_distribution(small_vocab_pair, drafts):
    """Two-token outputs of the full engine (batched drafting, one batched target pass, cache rows kept and cropped)
    follow the target's exact joint distribution with temperature, top-k and top-p on."""
    target, draft = small_vocab_pair
    prompt = [1, 2, 3]
    base = GenConfig(gamma=3, rule="sample", max_new_tokens=2, temperature=0.7, top_k=5, top_p=0.9)
    exact = exact_two_token_probs(target, prompt, base)
    proposer = MultiDraftProposer(draft, 3, drafts)
    n = 600  # skipping the residual: p < 1e-12 with 500 runs, < 1e-27 with 1000
    counts = dict.fromkeys(exact, 0)
    for seed in range(n):
        counts[tuple(run(target, proposer, prompt, base.with_(seed=seed), instrument=False).run().output_ids)] += 1
    assert two_token_pvalue(counts, exact) > ALPHA


def test_batched_rows_match_fresh_forwards(tiny_pair, prompts):
    """Each tree node's q equals a fresh one-row draft pass over its path, also on the step after a partly accepted
    one (the kept draft row selected and cropped); the target's cache then holds exactly the context."""
    target, draft = tiny_pair
    cfg = GenConfig(gamma=3, rule="sample", max_new_tokens=12, seed=4, options={"drafts": 3})
    sampler = Sampler("sample", 1.0, 0, 1.0, 4)
    seen = []

    class Spy(MultiDraftProposer):
        def propose(self, ctx, limit, sampler):
            prop = super().propose(ctx, limit, sampler)
            seen.append((list(ctx), prop.tree))
            return prop

    r = run(target, Spy(draft, 3, 3), prompts[1], cfg)
    assert r.run().steps >= 3
    fresh_d, fresh_t = LM(draft.model), LM(target.model)
    for ctx, tree in seen[1:3]:
        for i in range(len(tree)):
            fresh_d.reset()
            q = sampler.probs(fresh_d.forward(ctx + [tree.ids[a] for a in tree.path_to(i)[:-1]])[-1])
            assert torch.allclose(tree.q[i], q, atol=1e-9)
    assert target.rows == 1 and target.length == len(prompts[1]) + len(r.summary.output_ids) - 1
    ctx = prompts[1] + r.summary.output_ids
    incremental = target.forward([ctx[-1]])[-1]
    fresh_t.reset()
    assert torch.allclose(fresh_t.forward(ctx)[-1], incremental, atol=1e-10)


def test_step_events_count_every_try(tiny_pair, prompts, codec):
    """n_drafted counts every node of the merged tree (at most M x k); the rejected tokens are the rejected tries,
    each with its own accept probability; emitted tokens spell the output; the trace round-trips through JSON."""
    target, draft = tiny_pair
    cfg = GenConfig(gamma=4, rule="sample", max_new_tokens=40, seed=2, options={"drafts": 4})
    r = run(
        target,
        build_proposer("multidraft", fake_pair(target, draft), cfg),
        prompts[0],
        cfg,
        piece=codec.piece,
        detail_top=5,
    )
    steps = list(r)
    s = r.summary
    assert (
        s.rejections
        == sum(t.origin == "rejected" for st in steps for t in st.tokens)
        > len([st for st in steps if st.rejected])
    )  # some step rejected more than one candidate
    for st in steps:
        assert st.n_drafted == len(st.tree) <= 4 * st.gamma
        assert st.n_accepted == sum(t.origin == "accepted" for t in st.tokens)
        for t in st.tokens:
            if t.origin in ("accepted", "rejected"):
                assert 0 <= t.accept_prob <= 1 and 0 <= t.tv <= 1 and t.q > 0
        if st.rejected and st.tokens[-1].origin == "resampled":
            assert st.detail["residual"] is not None
    assert "".join(t.text for st in steps for t in st.emitted) == codec.decode(s.output_ids)
    assert 4 <= steps[0].n_drafted <= 16 and s.drafted == sum(st.n_drafted for st in steps) == steps[-1].total_drafted
    back, summary, _ = trace_from_json(trace_to_json(steps, s))
    assert back == steps and summary == s


def test_sum_of_tv_over_tries_predicts_rejected_tries(tiny_pair, prompts):
    """Each try is rejected with probability TV(p', q), so rejected tries minus that sum is a martingale: it stays
    within a few standard deviations (sqrt of the summed tv(1 - tv)); with M = 1 this is Yin et al.'s sum of TV."""
    target, draft = tiny_pair
    rej = tv = var = 0.0
    for seed in range(6):
        cfg = GenConfig(gamma=4, rule="sample", max_new_tokens=40, seed=seed, options={"drafts": 4})
        r = run(target, build_proposer("multidraft", fake_pair(target, draft), cfg), prompts[seed % 4], cfg)
        for st in r:
            for t in st.tokens:
                if t.origin in ("accepted", "rejected"):
                    rej += t.origin == "rejected"
                    tv += t.tv
                    var += t.tv * (1 - t.tv)
    assert rej > 20 and abs(rej - tv) < 4 * math.sqrt(var)


def test_same_seed_same_verdicts(tiny_pair, prompts):
    target, draft = tiny_pair
    cfg = GenConfig(gamma=3, rule="sample", max_new_tokens=30, seed=9, options={"drafts": 3})

    def verdicts(c: GenConfig) -> list[tuple[int, str]]:
        return [(t.id, t.origin) for s in run(target, MultiDraftProposer(draft, 3, 3), prompts[2], c) for t in s.tokens]

    assert verdicts(cfg) == verdicts(cfg) != verdicts(cfg.with_(seed=10))


# ------------------------------------------------------------- options, strategy list


def test_strategy_is_listed_and_its_option_checked(tiny_pair):
    target, draft = tiny_pair
    assert "multidraft" in STRATEGIES and STRATEGIES.index("multidraft") < STRATEGIES.index("random")
    pair = fake_pair(target, draft)
    assert build_proposer("multidraft", pair, GenConfig()).drafts == 4
    assert build_proposer("multidraft", pair, GenConfig(options={"drafts": 8, "ngram_max": 2})).drafts == 8
    for bad in (0, 9, "4", 2.5, True):
        with pytest.raises(ConfigError, match="drafts"):
            build_proposer("multidraft", pair, GenConfig(options={"drafts": bad}))
    with pytest.raises(ConfigError, match="no draft model"):
        build_proposer("multidraft", fake_pair(target, None), GenConfig())
    with pytest.raises(ConfigError, match="relax applies to single-draft"):  # not silently ignored
        build_proposer("multidraft", pair, GenConfig(rule="sample", relax=0.5))
    assert build_proposer("ngram", pair, GenConfig(options={"drafts": 2})).name == "ngram"  # others ignore it


# ------------------------------------------------------------- the Theory lab's sweep


def test_batch_sweep_rows(tiny_pair, prompts, codec):
    """One row per M with consistent counts. More candidates give more tokens per target pass and fewer corrections
    per token (at a position, the chance that every candidate is rejected is a product of TVs, at most the single
    draft's TV), while on this pair (a poor draft) the rejected tries per step grow."""
    target, _ = tiny_pair
    poor = LM(perturbed_copy(target.model, noise=0.3, seed=1))
    pair = fake_pair(target, poor, codec=codec)
    totals: dict[int, list[float]] = {}
    for seed in range(12):
        rows = batch_sweep(pair, prompts[seed % 4], GenConfig(gamma=4, max_new_tokens=30, seed=seed), ms=(1, 4))
        assert [r["M"] for r in rows] == [1, 4]
        for r in rows:
            assert 0 < r["tokens"] <= 30 and r["steps"] > 0
            assert r["tokens_per_step"] == pytest.approx(r["tokens"] / r["steps"])
            assert r["rejections_per_step"] == pytest.approx(r["rejections"] / r["steps"])
            assert r["rejections_per_token"] == pytest.approx(r["rejections"] / r["tokens"])
            assert r["corrections"] <= r["rejections"] <= r["tries"] <= r["drafted"] and r["wall_s"] > 0
            assert r["corrections"] == r["rejections"] or r["M"] > 1  # one draft: each rejection is corrected
            assert r["single_draft_tv_sum"] == rows[0]["tv_sum"] > 0
            t = totals.setdefault(r["M"], [0, 0, 0, 0])
            t[0] += r["tokens"]
            t[1] += r["steps"]
            t[2] += r["rejections"]
            t[3] += r["corrections"]
    per_step = {m: t[0] / t[1] for m, t in totals.items()}
    rej_per_step = {m: t[2] / t[1] for m, t in totals.items()}
    fix_per_token = {m: t[3] / t[0] for m, t in totals.items()}
    assert per_step[1] + 0.05 < per_step[4]
    assert rej_per_step[1] < rej_per_step[4]
    assert fix_per_token[4] < fix_per_token[1]


def test_batch_sweep_without_m1_has_no_single_draft_line(tiny_pair, prompts, codec):
    target, draft = tiny_pair
    pair = fake_pair(target, draft, codec=codec)
    rows = batch_sweep(pair, prompts[0], GenConfig(max_new_tokens=8), ms=(2,))
    assert len(rows) == 1 and rows[0]["single_draft_tv_sum"] is None and rows[0]["tokens"] == 8
