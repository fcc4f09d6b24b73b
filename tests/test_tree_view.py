"""The token-tree view, step-mode walk and tree charts on events of real tiny-model tree runs: every node drawn once
with its verdict, the accepted path marked and on one row, tooltips holding p, q and min(1, p/q), 64-node trees laid
out without overlap, chain runs told to pick a tree strategy, the walk in words matching what the rule did, chart
numbers matching the events, and the per-step CSV still one row per step."""

from __future__ import annotations

import html
import json
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest
from helpers import fake_pair

from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent, TokenEvent, TreeNode
from specviz.core.metrics import summarize
from specviz.medusa.heads import random_heads
from specviz.proposers import TREES, build_proposer
from specviz.ui import tables, tree_charts
from specviz.ui.controls import Refused
from specviz.ui.figures import traces
from specviz.ui.render import fmt_prob
from specviz.ui.session import RunRequest, RunState, Track
from specviz.ui.step_panel import render_step_panel, tree_captions, tree_walk
from specviz.ui.tree_panel import TreePanel, tree_run
from specviz.ui.tree_view import (
    CHAIN_MESSAGE,
    EMPTY_TREE,
    NODE_H,
    ROOT,
    TARGET,
    TREE_STRATEGIES,
    render_tree,
    render_tree_view,
    tree_layout,
    visible,
)

PROMPT = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n\ndef h(x):\n    return x"
BIG = {"tree_nodes": 64, "tree_width": 8}


def _run(tiny_pair, codec, strategy: str, rule: str = "greedy", seed: int = 0, **opts) -> list[StepEvent]:
    target, draft = tiny_pair
    heads = random_heads(target.model.lm_head.weight, 5, seed=2).bind(target.model.lm_head.weight)
    pair = fake_pair(target, draft, heads=heads)
    cfg = GenConfig(gamma=opts.pop("gamma", 6), rule=rule, max_new_tokens=40, seed=seed, options=opts or BIG)
    return list(run(pair.target, build_proposer(strategy, pair, cfg), codec.encode(PROMPT), cfg, piece=codec.piece))


@pytest.fixture(scope="module")
def greedy_steps(tiny_pair, codec) -> list[StepEvent]:
    return _run(tiny_pair, codec, "drafttree")


@pytest.fixture(scope="module")
def sampled_steps(tiny_pair, codec) -> list[StepEvent]:
    return _run(tiny_pair, codec, "drafttree", "sample", seed=3, tree_nodes=24, tree_width=4, gamma=4)


class Nodes(HTMLParser):
    """The drawn nodes (<g class="sv-tn ..."> attributes) and edges (<path class="sv-te ...">) of a tree view."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.nodes: list[dict[str, str]] = []
        self.edges: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "g" and "sv-tn" in a.get("class", "").split() and "data-node" in a:
            self.nodes.append(a)
        if tag == "path" and "sv-te" in a.get("class", ""):
            self.edges.append(a["class"])


def _trees(steps: list[StepEvent]) -> list[StepEvent]:
    out = [s for s in steps if s.tree]
    assert out, "the run verified no tree"
    return out


# ---------------------------------------------------------------- the view


def test_every_node_is_drawn_once_with_its_verdict_and_the_path_marked(greedy_steps, sampled_steps):
    for steps, rule in ((greedy_steps, "greedy"), (sampled_steps, "sample")):
        for st in _trees(steps):
            drawn = Nodes(render_tree(st, rule, "x"))
            keys = [int(n["data-node"]) for n in drawn.nodes]
            target = [t for t in st.tokens if t.origin in ("resampled", "bonus")]
            assert sorted(keys) == sorted([ROOT, *range(len(st.tree)), *([TARGET] if target else [])])
            by_key = {int(n["data-node"]): n for n in drawn.nodes}
            for i, node in enumerate(st.tree):
                assert by_key[i]["data-kind"] == node.verdict
                assert f"sv-tn-{node.verdict}" in by_key[i]["class"]
            if target:
                assert by_key[TARGET]["data-kind"] == target[0].origin
            # the highlighted edges: one into each accepted node and one into the target's token
            assert sum("sv-te-accepted" in e for e in drawn.edges) == st.n_accepted + len(target)
            assert len(drawn.edges) == len(st.tree) + len(target)  # every node but the root has one edge in


def test_node_tooltips_hold_p_q_and_the_acceptance(greedy_steps, sampled_steps):
    for steps, rule in ((greedy_steps, "greedy"), (sampled_steps, "sample")):
        st = _trees(steps)[0]
        by_key = {int(n["data-node"]): n for n in Nodes(render_tree(st, rule, "x")).nodes}
        for i, node in enumerate(st.tree):
            tip = html.unescape(by_key[i]["data-tip"])
            assert f"p (target) = {fmt_prob(node.p)}" in tip
            assert f"q (draft)  = {fmt_prob(node.q)}" in tip
            assert f"accept prob min(1, p/q) = {fmt_prob(min(1.0, node.p / node.q))}" in tip
            assert f"depth {node.depth}" in tip and repr(node.text) in tip
            verdict = {"accepted": "accepted:", "rejected": "refused:", "not_reached": "never checked:"}[node.verdict]
            assert verdict in tip
        if rule == "sample":  # a try after refused siblings shows the rule's own test with the residual
            shifted = [
                i
                for i, n in enumerate(st.tree)
                if abs(n.accept_prob - min(1.0, n.p / n.q)) > 5e-5 and n.verdict != "not_reached"
            ]
            for i in shifted:
                assert f"min(1, p'/q) = {fmt_prob(st.tree[i].accept_prob)}" in html.unescape(by_key[i]["data-tip"])


def _assert_no_overlap(st: StepEvent) -> None:
    boxes = tree_layout(st, "root")
    cells = [(b.x, b.y) for b in boxes]
    assert len(set(cells)) == len(cells), "two nodes share a position"
    for a in boxes:
        for b in boxes:
            if a is b:
                continue
            apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + NODE_H <= b.y or b.y + NODE_H <= a.y
            assert apart, (a, b)
    by_key = {b.key: b for b in boxes}
    for b in boxes:
        if b.parent is not None:
            par = by_key[b.parent]
            assert b.col == par.col + 1 and b.x > par.x + par.w  # each depth its own column, left to right
    path = [b for b in boxes if b.kind in ("root", "accepted", "resampled", "bonus")]
    assert {b.row for b in path} == {0}, "the accepted path does not run along the top row"


def _wide_tree(seed: int) -> StepEvent:
    """64 nodes, 6 levels, at most 8 children each (8 somewhere): the largest tree the strategies build, with a
    random accepted path whose other children were refused."""
    rng = random.Random(seed)
    parent, depth = [-1] * 8, [1] * 8  # eight first guesses
    path = [rng.randrange(8)]
    for d in range(2, 7):  # the path goes on to depth 6
        parent += [path[-1]] * rng.randint(1, 4)
        depth += [d] * (len(parent) - len(depth))
        path.append(len(parent) - 1)  # the last child of the path node carries the path on
    while len(parent) < 64:  # the rest anywhere above the last level, eight children at most
        par = rng.randrange(len(parent))
        if depth[par] < 6 and parent.count(par) < 8:
            parent.append(par)
            depth.append(depth[par] + 1)
    order = sorted(range(64), key=lambda i: depth[i])  # parents first
    new = {old: i for i, old in enumerate(order)}
    nodes = []
    for old in order:
        par = new[parent[old]] if parent[old] >= 0 else -1
        on_path = old in path
        tried = parent[old] == -1 or parent[old] in path
        verdict = "accepted" if on_path else "rejected" if tried else "not_reached"
        nodes.append(TreeNode(old, f"t{old}", par, depth[old], verdict, 0.3, 0.4, 0.75))
    return _hand_step(nodes, "bonus")


def test_64_node_trees_of_depth_6_and_width_8_are_laid_out_without_overlap(greedy_steps):
    big = [s for s in greedy_steps if s.tree and len(s.tree) == 64]
    assert big, [len(s.tree or []) for s in greedy_steps]
    assert max(max(n.depth for n in s.tree) for s in big) >= 5
    for st in big:
        _assert_no_overlap(st)
    for seed in range(5):
        st = _wide_tree(seed)
        assert len(st.tree) == 64 and max(n.depth for n in st.tree) == 6
        assert max(sum(m.parent == n for m in st.tree) for n in range(-1, 64)) == 8
        _assert_no_overlap(st)
        assert len(Nodes(render_tree(st, "greedy")).nodes) == 64 + 2


def test_every_tree_builder_gets_a_layout_without_overlap(tiny_pair, codec):
    for strategy, rule in (("medusatree", "greedy"), ("ngramtree", "greedy"), ("multidraft", "sample")):
        opts = {"drafts": 4} if strategy == "multidraft" else BIG
        steps = _run(tiny_pair, codec, strategy, rule, seed=1, **opts)
        for st in _trees(steps):
            _assert_no_overlap(st)
            assert len(Nodes(render_tree(st, rule)).nodes) >= len(st.tree) + 1


def test_chain_runs_get_the_message_and_bad_picks_a_clear_one(tiny_pair, codec, greedy_steps):
    chain = _run(tiny_pair, codec, "draft", gamma=4)
    assert all(s.tree is None for s in chain)
    shown = render_tree_view(chain)
    assert html.escape(CHAIN_MESSAGE) in shown and TREE_STRATEGIES == TREES
    assert "drafttree, medusatree, ngramtree, multidraft" in CHAIN_MESSAGE
    assert render_tree_view([]) == EMPTY_TREE
    assert "Pick a step from 1 to" in render_tree_view(greedy_steps, 999)
    latest = max(i for i, s in enumerate(greedy_steps) if s.tree)
    assert f'data-step="{latest + 1}"' in render_tree_view(greedy_steps)  # default: the latest tree step
    assert f'data-step="{1}"' in render_tree_view(greedy_steps, 0)


def test_text_is_escaped_and_whitespace_visible():
    st = _hand_step([TreeNode(5, "<b>&\n", -1, 1, "accepted", 0.5, 0.5, 1.0)], "bonus")
    out = render_tree(st, "greedy", "<i>")
    assert "<b>&" not in out and "&lt;b&gt;&amp;\u21b5" in out and "&lt;i&gt;" in out


# ---------------------------------------------------------------- step mode's walk in words


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _q(text: str) -> str:
    """A token as the walk quotes it: whitespace visible."""
    return f"'{visible(text)}'"


def test_greedy_walk_follows_each_accepted_child_and_ends_with_the_target(greedy_steps):
    for st in _trees(greedy_steps):
        walk = [_plain(s) for s in tree_walk(st, "greedy")]
        path = [n for n in st.tree if n.verdict == "accepted"]
        assert len(walk) == len(path) + 1
        for sentence, node in zip(walk, path):
            x = _q(node.text)
            assert f"the target's top choice is {x}; the child {x} exists: follow it" in sentence
        target = next(t for t in st.tokens if t.origin in ("resampled", "bonus"))
        if target.origin == "resampled":
            assert f"no child is {_q(target.text)}" in walk[-1] and "a correction" in walk[-1]
        else:
            assert "is a leaf" in walk[-1] and f"{_q(target.text)} as a bonus" in walk[-1]
        refused = [n for n in st.tree if n.verdict == "rejected"]
        assert bool(refused) == any("refused" in s or "tried:" in s for s in walk)


def test_sampled_walk_names_each_try_with_its_probability(sampled_steps):
    seen = set()
    for st in _trees(sampled_steps):
        text = _plain(" ".join(tree_walk(st, "sample")))
        tries = [t for t in st.tokens if t.origin in ("accepted", "rejected")]
        first = tries[0]
        assert (
            f"child {_q(first.text)} tried: accepted with probability min(1, p/q) = {fmt_prob(first.accept_prob)}"
            in text
        )
        for t in tries:
            seen.add(t.origin)
        if any(t.origin == "rejected" for t in tries):
            assert "refused" in text and "residual" in text
        target = next(t for t in st.tokens if t.origin in ("resampled", "bonus"))
        if target.origin == "resampled":
            assert f"every child refused: the target draws {_q(target.text)} from the residual" in text
            seen.add("resampled")
        else:
            assert f"the target draws a bonus token {_q(target.text)} from p" in text
    assert {"accepted", "rejected"} <= seen, seen


def _hand_step(nodes: list[TreeNode], final: str | None, finished: bool = False) -> StepEvent:
    """A tree step from its nodes: the tries along the accepted path, then the target's token (`final`) if any."""
    acc = [i for i, n in enumerate(nodes) if n.verdict == "accepted"]
    on = {-1, *acc}
    tokens = [
        TokenEvent(n.id, n.text, n.verdict, n.depth - 1, n.p, n.q, n.accept_prob)  # type: ignore[arg-type]
        for n in nodes
        if n.parent in on and n.verdict != "not_reached"
    ]
    if final:
        tokens.append(TokenEvent(9, "Z", final, len(acc), 0.3))  # type: ignore[arg-type]
    emitted = len(acc) + bool(final)
    return StepEvent(
        0, 0, 3, tokens, len(nodes), len(acc), 1.0, 1.0, 2.0, emitted, len(nodes), len(acc), finished, tree=nodes
    )


def test_the_walk_stops_at_an_end_of_text_inside_the_path():
    nodes = [
        TreeNode(1, "a", -1, 1, "accepted", 0.6, 0.5, 1.0),
        TreeNode(2, "<eos>", 0, 2, "accepted", 0.5, 0.5, 1.0),
        TreeNode(3, "c", 1, 3, "not_reached", 0.4, 0.5, 0.8),  # accepted by the rule, below the EOS: never used
        TreeNode(4, "d", -1, 1, "rejected", 0.1, 0.2, 0.5),
    ]
    st = _hand_step(nodes, None, finished=True)
    walk = [_plain(s) for s in tree_walk(st, "greedy")]
    assert walk[-1].startswith("'<eos>' is the end of the text")
    assert "the text ended" in render_tree(st, "greedy")
    tips = {int(n["data-node"]): html.unescape(n["data-tip"]) for n in Nodes(render_tree(st, "greedy")).nodes}
    assert "the text ended" in tips[2] and "its parent was not accepted" not in tips[2]
    caps = dict(tree_captions(st, "greedy", "drafttree"))
    assert "4 guesses: 2 for the next token, 3 levels deep, 2 branches" in caps["1. Draft proposes a tree"]


def test_step_panel_uses_the_tree_captions(greedy_steps):
    st = _trees(greedy_steps)[0]
    panel = render_step_panel(st, "greedy", None, "drafttree")
    for part in ("1. Draft proposes a tree", "2. Target checks", "3. Walk", "Result", "<th>depth</th>", "EAGLE-2"):
        assert part in panel, part
    assert f"all {len(st.tree)} nodes in <b>one</b> forward pass" in panel


# ---------------------------------------------------------------- charts and the CSV


def _valid(fig: dict) -> dict:
    go.Figure(fig)
    json.dumps(fig, allow_nan=False)
    return fig


def test_pass_chart_counts_nodes_and_tokens_of_every_step(greedy_steps):
    fig = _valid(tree_charts.tree_pass_chart(greedy_steps))
    assert traces(fig, "nodes verified per pass")["y"] == [len(s.tree) if s.tree else s.n_drafted for s in greedy_steps]
    assert traces(fig, "tokens gained per pass")["y"] == [len(s.emitted) for s in greedy_steps]
    assert "empty" not in json.dumps(_valid(tree_charts.tree_pass_chart([])))  # a placeholder, valid too


def test_expected_accepted_length_follows_the_walk():
    # root: A (0.5) tried first, then B (0.4); under A: C (0.5). Reach-and-accept: A 0.5, C 0.25, B (1-0.5)*0.4
    nodes = [
        TreeNode(1, "A", -1, 1, "accepted", 0.5, 1.0, 0.5),
        TreeNode(2, "B", -1, 1, "not_reached", 0.4, 1.0, 0.4),
        TreeNode(3, "C", 0, 2, "rejected", 0.5, 1.0, 0.5),
    ]
    st = _hand_step(nodes, "resampled")
    assert tree_charts.expected_accepted(st) == pytest.approx(0.5 + 0.25 + 0.5 * 0.4)
    # a chain is a tree of one branch: sum of running products
    chain = StepEvent(
        0,
        0,
        3,
        [TokenEvent(1, "a", "accepted", 0, 0.9, 0.9, 0.8), TokenEvent(2, "b", "rejected", 1, 0.1, 0.2, 0.5)],
        2,
        1,
        1.0,
        1.0,
        1.0,
        2,
        2,
        1,
    )
    assert tree_charts.expected_accepted(chain) == pytest.approx(0.8 + 0.8 * 0.5)


def test_length_chart_holds_measured_and_expected_and_names_the_estimator(sampled_steps):
    fig = _valid(tree_charts.expected_length_chart(sampled_steps, "sample"))
    drafting = [s for s in sampled_steps if s.n_drafted]
    assert traces(fig, "accepted (measured)")["y"] == [s.n_accepted for s in drafting]
    expected = traces(fig, "expected from the per-node acceptance")["y"]
    assert expected == [pytest.approx(tree_charts.expected_accepted(s)) for s in drafting]
    assert all(0 < e <= max(n.depth for n in s.tree) for e, s in zip(expected, drafting))
    caption = fig["layout"]["annotations"][0]["text"].replace("<br>", " ")
    assert "sum over nodes" in caption and "elder siblings" in caption


def test_compare_chart_puts_a_chain_beside_its_tree(tiny_pair, codec):
    chain = _run(tiny_pair, codec, "draft", gamma=4)
    tree = _run(tiny_pair, codec, "drafttree", gamma=4, tree_nodes=16, tree_width=4)
    summaries = [_summary(chain, "draft"), _summary(tree, "drafttree")]
    tracks = [Track("draft", "draft", chain, summaries[0]), Track("drafttree", "drafttree", tree, summaries[1])]
    fig = _valid(tree_charts.tree_compare_chart(tracks))
    nodes = traces(fig, "nodes per pass")
    assert nodes["x"] == ["draft", "drafttree"] and nodes["customdata"] == ["chain", "tree"]
    assert nodes["y"] == [
        pytest.approx(sum(s.n_drafted for s in chain) / len(chain)),
        pytest.approx(sum(len(s.tree or []) for s in tree) / len(tree)),
    ]
    assert traces(fig, "tokens per pass")["y"] == [summaries[0].tokens_per_step, summaries[1].tokens_per_step]
    assert set(tree_charts.CHAIN_VS_TREE["every chain beside its tree"]) == {
        "draft", "drafttree", "ngram", "ngramtree", "medusa", "medusatree"
    }  # fmt: skip


def _summary(steps: list[StepEvent], strategy: str) -> RunSummary:
    return summarize(steps, strategy=strategy, rule="greedy", gamma=4, wall_s=1.0)


def test_csv_stays_one_row_per_step_with_the_tree_shape(greedy_steps, tiny_pair, codec):
    df = tables.steps_table(greedy_steps)
    assert len(df) == len(greedy_steps)
    for row, st in zip(df.to_dict("records"), greedy_steps):
        if st.tree:
            assert row["drafted"] == len(st.tree)
            assert row["tree_depth"] == max(n.depth for n in st.tree)
            assert row["tree_refused"] == sum(n.verdict == "rejected" for n in st.tree)
            assert 1 <= row["tree_branches"] <= len(st.tree)
    chain = tables.steps_table(_run(tiny_pair, codec, "draft", gamma=4))  # chain steps leave the tree columns empty
    assert chain[["tree_depth", "tree_branches", "tree_refused"]].isna().all().all()


# ---------------------------------------------------------------- the Run tab's panel


def test_panel_draws_the_latest_tree_step_and_refuses_bad_picks(greedy_steps):
    with gr.Blocks():
        panel = TreePanel(lambda c: c)  # type: ignore[arg-type]
    req = RunRequest("p", "tiny-random", "drafttree", GenConfig())
    state = RunState("done", "", req, [Track("drafttree", "drafttree", greedy_steps)], prompt_shown="p")
    data = tree_run(state)
    assert data is not None and data.steps == greedy_steps and data.steps is not greedy_steps
    up = panel.on_data(data)
    latest = max(i for i, s in enumerate(greedy_steps) if s.tree)
    assert up[panel.pick].value == latest + 1 and up[panel.pick].maximum == max(2, len(greedy_steps))
    assert f'data-step="{latest + 1}"' in up[panel.view]
    assert 'data-step="1"' in panel.on_pick(data, 1.0)[panel.view]
    for bad in (Refused("step shown must be between 1 and 2, got 99"), None, 0, len(greedy_steps) + 1):
        assert "Pick a step from 1 to" in panel.on_pick(data, bad)[panel.view]
    assert panel.on_data(None)[panel.view] == EMPTY_TREE
    assert tree_run(RunState("loading", "")) is None


def test_tree_renderers_never_import_torch_or_gradio():
    code = (
        "import sys, specviz.ui.tree_view, specviz.ui.tree_charts, specviz.ui.step_panel; print(' '.join(sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    mods = set(out.stdout.split())
    assert "torch" not in mods and "gradio" not in mods
