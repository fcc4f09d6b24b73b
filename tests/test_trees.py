"""Token trees: one pass under a tree mask gives every node bitwise the logits of the chain that holds it (CPU exact
attention over our batch-invariant kernel, and the GPU path's padded gathered attention run on the CPU); greedy output
of every tree builder and shape equals plain decoding; the sampling walk over constructed trees follows the target's
distribution exactly (a broken variant is caught by the same test); step events and traces carry the tree."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import ALPHA, case, exact_two_token_probs, fake_pair, token_pvalue, two_token_pvalue

from specviz.backends.kernels import kernel, swap_linears
from specviz.backends.lm import LM
from specviz.backends.static_lm import StaticLM
from specviz.backends.tiny import perturbed_copy, tiny_model
from specviz.core import tree as trees
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import trace_from_json, trace_to_json
from specviz.core.sampling import Sampler
from specviz.core.tree import ROOT, Tree, tree_greedy_verify, tree_sample_verify
from specviz.medusa.heads import random_heads
from specviz.proposers import TREES, build_proposer
from specviz.proposers.trees import DraftTreeProposer, lookup_branches

# ------------------------------------------------------------- the tree pass itself


def random_tree(rng: random.Random, vocab: int, nodes: int, depth: int, width: int) -> Tree:
    """A random tree of at most `nodes` nodes, `depth` levels and `width` children per node, parents first."""
    ids, parents, depths = [], [], []
    level = [ROOT]
    for d in range(1, depth + 1):
        nxt = []
        for par in level:
            for _ in range(rng.randint(1 if d == 1 else 0, width)):
                if len(ids) == nodes:
                    break
                ids.append(rng.randrange(vocab))
                parents.append(par)
                depths.append(d)
                nxt.append(len(ids) - 1)
        level = nxt or level[:0]
        if not level:
            break
    return Tree(ids, parents)


SHAPES = [(1, 1, 1), (6, 6, 1), (16, 3, 4), (40, 5, 8), (64, 6, 8), (64, 2, 8)]  # (nodes, depth, width)


@pytest.fixture(scope="module")
def exact_models():
    """(name, a fresh-cache model factory) of the two paths whose passes must be batch-invariant: the CPU path (LM,
    exact attention, our packed kernel) and the GPU path's StaticLM (padded gathered attention), both float32."""
    if kernel()[0] is None:
        pytest.fail(f"the packed kernel did not build ({kernel()[1]}): the CPU path's batch invariance needs it")
    m = swap_linears(tiny_model(90, seed=5, dtype=torch.float32, init=0.2))
    dense = tiny_model(90, seed=5, dtype=torch.float32, init=0.2)
    return [("cpu", lambda: LM(m)), ("static", lambda: StaticLM(dense, context=512, pad=16, graphs=False))]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_node_gets_bitwise_the_logits_of_its_chain_alone(exact_models, shape):
    rng = random.Random(sum(shape))
    prompt = [rng.randrange(90) for _ in range(23)]
    for name, make in exact_models:
        lm = make()
        tree = random_tree(rng, 90, *shape)
        lm.reset()
        lm.forward(prompt[:-1])
        both = lm.forward_tree([prompt[-1]] + tree.ids, [ROOT] + [p + 1 for p in tree.parents])  # (N+1, V)
        for leaf in [i for i in range(len(tree)) if not tree.children(i)]:
            path = tree.path_to(leaf)
            lm.reset()
            lm.forward(prompt[:-1])
            alone = lm.forward([prompt[-1]] + [tree.ids[i] for i in path])  # the chain, run by itself
            for j, node in enumerate(path):
                assert torch.equal(both[node + 1], alone[j + 1]), (name, shape, leaf, node)
            assert torch.equal(both[0], alone[0])


def test_kept_path_continues_exactly_as_the_chain_would(exact_models):
    """After keep_path, the cache is the accepted chain's: the next pass gives bitwise the chain run's logits; a draft
    that grows its tree level by level (extend) gets the same logits as one pass over the whole tree."""
    rng = random.Random(3)
    for name, make in exact_models:
        lm = make()
        prompt = [rng.randrange(90) for _ in range(11)]
        tree = random_tree(rng, 90, 30, 4, 4)
        leaf = max(range(len(tree)), key=tree.depth)
        path = tree.path_to(leaf)
        lm.reset()
        lm.forward(prompt[:-1])
        lm.forward_tree([prompt[-1]] + tree.ids, [ROOT] + [p + 1 for p in tree.parents])
        lm.keep_path(len(prompt) - 1, [0] + [i + 1 for i in path])
        assert lm.length == len(prompt) + len(path)
        after_tree = lm.forward([7, 8])
        lm.reset()
        lm.forward(prompt[:-1])
        lm.forward([prompt[-1]] + [tree.ids[i] for i in path])  # the accepted chain, verified by itself
        assert torch.equal(after_tree, lm.forward([7, 8])), name
        # level by level: the nodes of depth d in one pass each, numbered after the earlier passes'
        lm.reset()
        lm.forward(prompt)
        whole = lm.forward_tree(tree.ids, tree.parents)
        lm.reset()
        lm.forward(prompt)
        order = sorted(range(len(tree)), key=tree.depth)
        rank = {node: j for j, node in enumerate(order)}
        got = {}
        for d in sorted({tree.depth(i) for i in order}):
            level = [i for i in order if tree.depth(i) == d]
            pars = [rank[tree.parents[i]] if tree.parents[i] != ROOT else ROOT for i in level]
            out = lm.forward_tree([tree.ids[i] for i in level], pars, extend=d > 1)
            got.update({i: out[j] for j, i in enumerate(level)})
        for i in range(len(tree)):
            assert torch.equal(got[i], whole[i]), (name, i)


def test_a_tree_pass_refuses_a_parent_that_is_not_earlier(tiny_pair):
    target, _ = tiny_pair
    target.reset()
    target.forward([1, 2, 3])
    with pytest.raises(ValueError, match="parent"):
        target.forward_tree([4, 5], [-1, 1])


# ------------------------------------------------------------- greedy: identical to plain decoding

REPEATS = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n\ndef h(x):\n    return x"


def _pair(tiny_pair):
    target, draft = tiny_pair
    heads = random_heads(target.model.lm_head.weight, 5, seed=2).bind(target.model.lm_head.weight)
    return fake_pair(target, draft, heads=heads)


@pytest.mark.parametrize("strategy", ["drafttree", "medusatree", "ngramtree"])
@pytest.mark.parametrize("gamma,width,nodes", [(1, 1, 1), (3, 2, 5), (4, 4, 16), (6, 8, 64), (5, 8, 12)])
def test_greedy_tree_output_equals_plain_for_every_builder_and_shape(
    tiny_pair, codec, plain_greedy, strategy, gamma, width, nodes
):
    pair = _pair(tiny_pair)
    cfg = GenConfig(gamma=gamma, max_new_tokens=24, options={"tree_nodes": nodes, "tree_width": width})
    for text in ("def add(a, b):\n    return", REPEATS):
        ids = codec.encode(text)
        r = run(pair.target, build_proposer(strategy, pair, cfg), ids, cfg, piece=codec.piece)
        steps = list(r)
        assert r.summary.output_ids == plain_greedy(ids, 24).output_ids, (strategy, text)
        for st in steps:
            assert st.tree is None or len(st.tree) == st.n_drafted <= nodes
            assert st.tree is None or max(n.depth for n in st.tree) <= gamma


def test_a_wider_draft_tree_accepts_more_than_the_chain(tiny_pair, prompts, codec):
    """Not vacuous: on the tiny pair the dynamic tree at the same depth gives more tokens per pass than one chain."""
    pair = _pair(tiny_pair)
    cfg = GenConfig(gamma=4, max_new_tokens=60, options={"tree_nodes": 32, "tree_width": 4})
    chain = tree = 0.0
    for ids in prompts:
        chain += run(pair.target, build_proposer("draft", pair, cfg), ids, cfg).run().tokens_per_step
        tree += run(pair.target, build_proposer("drafttree", pair, cfg), ids, cfg).run().tokens_per_step
    assert tree > chain + 0.2


def test_greedy_dynamic_tree_holds_the_drafts_own_chain(tiny_pair, prompts):
    """The dynamic tree always holds the single draft's greedy chain (so at one depth it never guesses worse), and its
    nodes come parents first."""
    pair = _pair(tiny_pair)
    s = Sampler("greedy", 1, 0, 1, 0)
    for ids in prompts:
        tree = DraftTreeProposer(pair.draft, 4, 64, 4)
        tree.reset(ids)
        t = tree.propose(ids, 99, s).tree
        chain = build_proposer("draft", pair, GenConfig(gamma=4))
        chain.reset(ids)
        guess = chain.propose(ids, 99, s).ids
        node = ROOT
        for tok in guess:
            node = next(c for c in t.children(node) if t.ids[c] == tok)  # StopIteration: the chain is not there
        assert all(t.parents[i] < i for i in range(len(t)))


# ------------------------------------------------------------- sampling: exact in distribution


def _walk_counts(kind: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Build a tree per trial (children drawn i.i.d. from q with repeats, or fixed tokens), walk it, count the first
    emitted token. -> (counts, p at the root)"""
    p0, q0 = case("overlapping" if kind != "q_zeros" else "q_has_zeros")
    p1 = p0.roll(2)
    q1 = q0.roll(1)
    sampler = Sampler("sample", 1.0, 0, 1.0, seed)
    counts = torch.zeros(p0.shape[0])
    for _ in range(n):
        if kind == "fixed":  # lookup-style: no q; a repeated token among siblings, one single-child chain
            tree = Tree([2, 4, 2, 1, 3], [ROOT, ROOT, ROOT, 0, 3])
        elif kind == "chain":
            x = int(torch.multinomial(q0, 1, generator=sampler.generator))
            y = int(torch.multinomial(q1, 1, generator=sampler.generator))
            tree = Tree([x, y], [ROOT, 0], torch.stack([q0, q1]))
        else:  # three i.i.d. draws at the root, two under the first of them; repeats are one node tried again
            first = torch.multinomial(q0, 3, True, generator=sampler.generator).tolist()
            second = torch.multinomial(q1, 2, True, generator=sampler.generator).tolist()
            top = list(dict.fromkeys(first))
            low = list(dict.fromkeys(second))
            ids = top + low
            parents = [ROOT] * len(top) + [0] * len(low)  # node 0 is first[0]
            tries = {ROOT: [top.index(t) for t in first], 0: [len(top) + low.index(t) for t in second]}
            tree = Tree(ids, parents, torch.stack([q0] * len(top) + [q1] * len(low)), tries)
        p_all = torch.stack([p0] + [p1 if tree.depth(i) == 1 else p0 for i in range(len(tree))])
        v = tree_sample_verify(tree, p_all, sampler)
        counts[tree.ids[v.path[0]] if v.path else v.token] += 1
    return counts, p0


@pytest.mark.parametrize("kind", ["iid", "q_zeros", "fixed", "chain"])
def test_tree_walk_emits_the_targets_distribution(kind):
    assert token_pvalue(*_walk_counts(kind, 5000)) > ALPHA


def test_without_the_residual_update_between_siblings_the_walk_is_caught(monkeypatch):
    monkeypatch.setattr(trees, "residual", lambda p, q: p)
    assert token_pvalue(*_walk_counts("iid", 4000)) < ALPHA


def test_forgetting_repeated_draws_is_caught():
    """A tree that tries a repeated draw once (its repeats dropped from the tries) is biased: the same check sees it
    on the deterministic tree, where the repeat matters most."""

    def counts(keep_repeat: bool) -> float:
        p, _ = case("overlapping")
        q = torch.tensor([0.0, 0.0, 0.9, 0.1, 0.0, 0.0], dtype=torch.float64)
        sampler = Sampler("sample", 1.0, 0, 1.0, 1)
        c = torch.zeros(6)
        for _ in range(4000):
            draws = torch.multinomial(q, 2, True, generator=sampler.generator).tolist()
            uniq = list(dict.fromkeys(draws))
            tries = {ROOT: [uniq.index(d) for d in draws]} if keep_repeat else None
            tree = Tree(uniq, [ROOT] * len(uniq), q.expand(len(uniq), -1), tries)
            v = tree_sample_verify(tree, torch.stack([p] * (len(uniq) + 1)), sampler)
            c[tree.ids[v.path[0]] if v.path else v.token] += 1
        return token_pvalue(c, p)

    assert counts(True) > ALPHA
    assert counts(False) < ALPHA


@pytest.mark.parametrize("strategy", ["drafttree", pytest.param("ngramtree", marks=pytest.mark.slow)])
def test_engine_tree_sampling_matches_target_joint_distribution(small_vocab_pair, strategy):
    """Two-token outputs of the full engine (draft tree grown level by level, one tree pass, the kept path moved into
    place) follow the target's exact joint distribution with temperature and top-k on."""
    target, draft = small_vocab_pair
    prompt = [1, 2, 3, 1, 2]
    base = GenConfig(gamma=3, rule="sample", max_new_tokens=2, temperature=0.8, top_k=6, options={"tree_width": 3})
    exact = exact_two_token_probs(target, prompt, base)
    proposer = build_proposer(strategy, fake_pair(target, draft), base)
    counts = dict.fromkeys(exact, 0)
    for seed in range(500):
        counts[tuple(run(target, proposer, prompt, base.with_(seed=seed), instrument=False).run().output_ids)] += 1
    assert two_token_pvalue(counts, exact) > ALPHA


# ------------------------------------------------------------- events, traces, builders


def test_tree_steps_carry_every_node_with_an_honest_verdict(tiny_pair, codec):
    pair = _pair(tiny_pair)
    for rule in ("greedy", "sample"):
        cfg = GenConfig(gamma=4, rule=rule, max_new_tokens=40, seed=3, options={"tree_nodes": 20})
        r = run(pair.target, build_proposer("drafttree", pair, cfg), codec.encode(REPEATS), cfg, piece=codec.piece)
        steps = list(r)
        for st in steps:
            nodes = st.tree
            if nodes is None:  # the run's last token: nothing left to draft
                assert st.n_drafted == 0 and st.finished
                continue
            assert len(nodes) == st.n_drafted
            acc = [i for i, n in enumerate(nodes) if n.verdict == "accepted"]
            assert len(acc) == st.n_accepted
            # the accepted nodes form one path from the root, in order
            assert [nodes[i].parent for i in acc] == ([-1] + acc)[: len(acc)]
            on_path = {-1, *acc}
            for n in nodes:
                if n.verdict == "rejected":
                    assert n.parent in on_path  # only children of the path were tried
                if n.parent >= 0:
                    assert n.depth == nodes[n.parent].depth + 1
                assert 0 <= n.p <= 1 and 0 < n.q <= 1 and 0 <= n.accept_prob <= 1
            assert st.n_accepted == sum(t.origin == "accepted" for t in st.tokens)
        assert "".join(t.text for st in steps for t in st.emitted) == codec.decode(r.summary.output_ids)
        back, summary, _ = trace_from_json(trace_to_json(steps, r.summary))
        assert back == steps and summary == r.summary


def test_merged_candidates_share_prefixes_and_keep_repeats_as_tries():
    t = Tree.merged([[5, 6, 7], [5, 6, 8], [5, 9, 1], [2, 3, 4], [5, 6, 7]])
    assert t.ids == [5, 6, 7, 8, 9, 1, 2, 3, 4] and t.parents == [ROOT, 0, 1, 1, 0, 4, ROOT, 6, 7]
    assert t.order(ROOT) == [0, 0, 0, 6, 0] and t.order(1) == [2, 3, 2] and t.depths == [1, 2, 3, 3, 2, 3, 1, 2, 3]
    with pytest.raises(ValueError, match="parent"):
        Tree([1, 2], [ROOT, 1])


def test_lookup_branches_take_every_earlier_match_most_recent_first():
    ctx = [1, 2, 3, 9, 1, 2, 4, 8, 1, 2]
    assert lookup_branches(ctx, 3, 1, 2, 4) == [[4, 8], [3, 9]]  # "1 2" occurred twice before the end
    assert lookup_branches(ctx, 3, 1, 3, 1) == [[4, 8, 1]]
    assert lookup_branches([1, 2, 3], 3, 1, 4, 4) == []
    assert lookup_branches([7, 7], 2, 1, 3, 2) == [[7, 7, 7]]  # the copy runs on into what it copies


def test_tree_strategies_are_listed_and_their_options_checked(tiny_pair):
    pair = _pair(tiny_pair)
    assert set(TREES) >= {"drafttree", "medusatree", "ngramtree", "multidraft"}
    for bad in ({"tree_nodes": 0}, {"tree_nodes": 65}, {"tree_width": 9}, {"tree_width": "4"}):
        with pytest.raises(ConfigError, match="tree_"):
            build_proposer("drafttree", pair, GenConfig(options=bad))
    with pytest.raises(ConfigError, match="no draft model"):
        build_proposer("drafttree", fake_pair(pair.target, None), GenConfig())
    with pytest.raises(ConfigError, match="relax"):
        build_proposer("ngramtree", pair, GenConfig(rule="sample", relax=0.3))


def test_dense_mask_fallback_keeps_greedy_identity(tiny_pair, codec, plain_greedy, monkeypatch):
    """SPECVIZ_EXACT_ATTENTION=0: the model's own attention with the tree as a dense mask (not bitwise, float64 here
    so no greedy choice flips) still walks the same tree to the same output."""
    monkeypatch.setenv("SPECVIZ_EXACT_ATTENTION", "0")
    target = LM(tiny_model(codec.vocab_size, seed=0, dtype=torch.float64, init=0.2))
    draft = LM(perturbed_copy(target.model, noise=0.03, seed=1))
    cfg = GenConfig(gamma=4, max_new_tokens=24, options={"tree_nodes": 24})
    ids = codec.encode("def add(a, b):\n    return")
    out = run(target, build_proposer("drafttree", fake_pair(target, draft), cfg), ids, cfg).run().output_ids
    assert out == run(target, None, ids, cfg).run().output_ids


def test_greedy_walk_follows_the_argmax_child_and_tests_every_sibling():
    by_depth = torch.eye(4, dtype=torch.float64) * 5  # row d: argmax d
    tree = Tree([1, 0, 3, 1, 2], [ROOT, ROOT, 1, 1, 3])  # root's argmax 0 -> node 1; then 1 -> node 3; then 2 -> node 4
    res = tree_greedy_verify(tree, torch.stack([by_depth[0]] + [by_depth[d] for d in tree.depths]))
    assert (res.path, res.token, res.origin) == ((1, 3, 4), 3, "bonus")
    assert [(t.node, t.accepted) for t in res.tries] == [(0, False), (1, True), (2, False), (3, True), (4, True)]
    res = tree_greedy_verify(tree, torch.stack([by_depth[0], by_depth[0], by_depth[2], by_depth[0], by_depth[0], by_depth[0]]))
    assert (res.path, res.token, res.origin) == ((1,), 2, "resampled")  # node 1's children are 3 and 1: no 2
