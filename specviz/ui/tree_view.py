"""A tree step as an SVG: the guesses as nodes in columns by depth (the root, the context's last token, on the left),
the accepted path on the top row and highlighted, refused branches faded, never-checked nodes dashed, p, q and
min(1, p/q) on hover. Plain functions of events (no torch, no gradio), so tests call them directly."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from specviz.core.events import StepEvent, TokenEvent, TreeNode
from specviz.ui.render import _attr, fmt_prob

ROOT, TARGET = -1, -2  # layout keys of the root and of the target's own token; tree nodes are 0..N-1
ROW_H, NODE_H = 28, 21  # pixels between rows, and a node's height: rows never touch
CHAR_W, PAD, MIN_W = 8.0, 7, 26  # a 13px monospace character, the text's padding, the narrowest node
COL_GAP, MARGIN = 30, 8  # room for the edges between columns, and around the drawing
MAX_CHARS = 10  # longer token texts are cut (the tooltip has the whole text)
# proposers.TREES (named here, as importing the proposers would bring torch into the renderers; a test checks both agree)
TREE_STRATEGIES = ("drafttree", "medusatree", "ngramtree", "multidraft")
CHAIN_MESSAGE = (
    f"This strategy drafts a single chain; pick a tree strategy ({', '.join(TREE_STRATEGIES)}) to see a tree."
)
EMPTY_TREE = (
    '<div class="sv-tree sv-muted" data-empty="1">The token tree of a step appears here after <b>Run</b> or '
    f"<b>Step</b> with a tree strategy ({', '.join(TREE_STRATEGIES)}).</div>"
)
KINDS = {  # layout kind -> (legend label, its non-colour cue)
    "root": ("the root: the context's last token", "grey box"),
    "accepted": ("accepted (the path kept)", "thick border, bold line"),
    "rejected": ("refused by the target", "struck through"),
    "not_reached": ("never checked", "faded, dashed"),
    "resampled": ("the target's correction", "bold, thick amber border"),
    "bonus": ("the target's bonus token", "bold, double border"),
}


@dataclass(frozen=True)
class Box:
    """One drawn node: its key (a node index, ROOT or TARGET), its parent's key (None for the root), its grid cell
    (col = depth, row), its top-left corner and width in pixels, the shown label and its kind (a KINDS key)."""

    key: int
    parent: int | None
    col: int
    row: int
    x: float
    y: float
    w: float
    label: str
    kind: str


def visible(text: str) -> str:
    """A token's text with its whitespace made visible (space, newline, tab as symbols; empty as the empty set)."""
    if text == "":
        return "\u2205"
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u2423")


def node_label(text: str, limit: int = MAX_CHARS) -> str:
    """A token's text as a node label: whitespace made visible, cut to `limit` characters."""
    shown = visible(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"


def target_token(step: StepEvent) -> TokenEvent | None:
    """The target's own token of a step (a correction or a bonus); None when an end-of-text token ended the step."""
    return next((t for t in step.tokens if t.origin in ("resampled", "bonus")), None)


def accepted_path(nodes: Sequence[TreeNode]) -> list[int]:
    """The accepted nodes, root's child first (nodes come parents first, so node order is depth order here)."""
    return [i for i, n in enumerate(nodes) if n.verdict == "accepted"]


def path_to(nodes: Sequence[TreeNode], i: int) -> list[int]:
    """The nodes from the root's child down to node i."""
    out = []
    while i != ROOT:
        out.append(i)
        i = nodes[i].parent
    return out[::-1]


def tree_layout(step: StepEvent, root_label: str = "context") -> list[Box]:
    """Every node of a tree step, the root and the target's token placed on a grid: columns by depth, one row per
    leaf, a parent on its first child's row, so two boxes never share a cell and the accepted path (each node's
    first child) runs along the top row. The target's token continues the path from its last accepted node."""
    nodes = step.tree or []
    kids: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        kids.setdefault(n.parent, []).append(i)
    for ch in kids.values():  # the accepted child first (a stable sort keeps the builder's order among the rest)
        ch.sort(key=lambda i: nodes[i].verdict != "accepted")
    path = accepted_path(nodes)
    target = target_token(step)
    if target is not None:
        kids.setdefault(path[-1] if path else ROOT, []).insert(0, TARGET)
    rows: dict[int, int] = {}
    depth: dict[int, int] = {ROOT: 0}
    parent: dict[int, int | None] = {ROOT: None}
    nxt = 0

    def place(u: int) -> int:
        nonlocal nxt
        below = kids.get(u, []) if u != TARGET else []
        for c in below:
            parent[c], depth[c] = u, depth[u] + 1
        if not below:
            rows[u], nxt = nxt, nxt + 1
        else:
            rows[u] = [place(c) for c in below][0]
        return rows[u]

    place(ROOT)  # depth <= 16 levels: recursion is shallow
    labels = {ROOT: node_label(root_label), **{i: node_label(n.text) for i, n in enumerate(nodes)}}
    if target is not None:
        labels[TARGET] = node_label(target.text)
    width = {k: max(MIN_W, len(lab) * CHAR_W + 2 * PAD) for k, lab in labels.items()}
    cols = max(depth.values()) + 1
    col_w = [max(width[k] for k in depth if depth[k] == c) for c in range(cols)]
    col_x = [MARGIN + sum(col_w[:c]) + COL_GAP * c for c in range(cols)]

    def kind(k: int) -> str:
        if k == ROOT:
            return "root"
        if k == TARGET:
            return target.origin if target is not None else "bonus"
        return nodes[k].verdict

    return [
        Box(k, parent[k], depth[k], rows[k], col_x[depth[k]], MARGIN + rows[k] * ROW_H, width[k], labels[k], kind(k))
        for k in [ROOT, *range(len(nodes)), *([TARGET] if target is not None else [])]
    ]


# ---------------------------------------------------------------- hover texts


def node_verdict(step: StepEvent, i: int, rule: str) -> str:
    """Why tree node i has its verdict, in the words of the rule."""
    nodes = step.tree or []
    n = nodes[i]
    greedy = rule == "greedy"
    if n.verdict == "accepted":
        return "accepted: equals the target's top choice here" if greedy else "accepted: passed the min(1, p'/q) test"
    if n.verdict == "rejected":
        return "refused: the target's top choice here differs" if greedy else "refused: failed the min(1, p'/q) test"
    on_path = n.parent == ROOT or nodes[n.parent].verdict == "accepted"
    if on_path and target_token(step) is None:
        return "never checked: the text ended (an end-of-text token) before it"
    if on_path:
        return "never checked: a sibling tried before it was accepted"
    return "never checked: its parent was not accepted"


def node_tip(step: StepEvent, i: int, rule: str) -> str:
    """The hover text of tree node i: where it is, its verdict, p, q, min(1, p/q) (and the rule's own test where
    the residual after refused elder siblings changed it), its path and token."""
    nodes = step.tree or []
    n = nodes[i]
    under = "the root" if n.parent == ROOT else repr(nodes[n.parent].text)
    lines = [
        f"step {step.step + 1} - tree node {i + 1} of {len(nodes)}, depth {n.depth} (under {under})",
        node_verdict(step, i, rule),
        f"p (target) = {fmt_prob(n.p)}",
        f"q (draft)  = {fmt_prob(n.q)}",
    ]
    plain = min(1.0, n.p / n.q) if n.p is not None and n.q else None
    lines.append(f"accept prob min(1, p/q) = {fmt_prob(plain)}")
    if rule != "greedy" and n.accept_prob is not None and plain is not None and abs(n.accept_prob - plain) > 5e-5:
        lines.append(f"the rule's test min(1, p'/q) = {fmt_prob(n.accept_prob)} (p' = residual after refused siblings)")
    lines.append("path: " + " ".join(repr(nodes[a].text) for a in path_to(nodes, i)))
    lines.append(f"token {n.id} {n.text!r}")
    return "\n".join(lines)


def target_tip(step: StepEvent, tok: TokenEvent, rule: str) -> str:
    """The hover text of the target's own token."""
    if tok.origin == "bonus":
        how = "bonus: a leaf of the tree was reached; the target adds one more token" + (
            "" if rule == "greedy" else " drawn from p"
        )
    else:
        how = (
            "correction: no child matched; the target's top choice"
            if rule == "greedy"
            else "correction: every child refused; drawn from the residual norm(max(0, p' - q))"
        )
    return "\n".join(
        [
            f"step {step.step + 1} - the target's own token at depth {tok.draft_pos + 1}",
            how,
            f"p (target) = {fmt_prob(tok.p)}",
            f"token {tok.id} {tok.text!r}",
        ]
    )


def root_tip(step: StepEvent, root_text: str) -> str:
    return (
        f"step {step.step + 1} - the root: the context so far, ending {root_text!r}\n"
        "every first-level guess continues it; the target scores all nodes in one pass"
    )


# ---------------------------------------------------------------- the SVG


def _edge(a: Box, b: Box) -> str:
    """An elbow from parent a's right side to child b's left side; the vertical part runs half a gap before b's
    column, so the edges to one column share their trunks and never cross a node."""
    y0, y1 = a.y + NODE_H / 2, b.y + NODE_H / 2
    trunk = b.x - COL_GAP / 2
    return f"M{a.x + a.w:.1f},{y0:.1f} H{trunk:.1f} V{y1:.1f} H{b.x:.1f}"


def _node(b: Box, tip: str) -> str:
    x, y, w = b.x, b.y, b.w
    shapes = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{NODE_H}" rx="5"/>']
    if b.kind == "bonus":  # a double border: the bonus token's second cue
        shapes.append(
            f'<rect class="sv-tn-inner" x="{x + 3:.1f}" y="{y + 3:.1f}" width="{w - 6:.1f}" height="{NODE_H - 6}" rx="3"/>'
        )
    shapes.append(f'<text x="{x + w / 2:.1f}" y="{y + NODE_H / 2:.1f}">{html.escape(b.label)}</text>')
    if b.kind == "rejected":  # struck through, as a refused draft in the stream
        shapes.append(
            f'<line x1="{x + 4:.1f}" y1="{y + NODE_H / 2:.1f}" x2="{x + w - 4:.1f}" y2="{y + NODE_H / 2:.1f}"/>'
        )
    return (
        f'<g class="sv-tn sv-tn-{b.kind}" data-node="{b.key}" data-kind="{b.kind}" data-x="{x:.1f}" data-y="{y:.1f}" '
        f'data-w="{w:.1f}" tabindex="0" data-tip="{_attr(tip)}">{"".join(shapes)}</g>'
    )


def tree_counts(step: StepEvent) -> dict[str, int]:
    """Nodes by verdict, levels and branches (root-to-leaf paths) of a tree step."""
    nodes = step.tree or []
    parents = {n.parent for n in nodes}
    out = {v: sum(n.verdict == v for n in nodes) for v in ("accepted", "rejected", "not_reached")}
    out["nodes"] = len(nodes)
    out["depth"] = max((n.depth for n in nodes), default=0)
    out["branches"] = sum(i not in parents for i in range(len(nodes)))
    return out


def render_tree(step: StepEvent, rule: str, root_text: str = "") -> str:
    """One tree step: a summary line, the SVG (in a box that scrolls both ways, so a 64-node tree never shrinks or
    overlaps) and a legend."""
    if not step.tree:
        return (
            f'<div class="sv-tree sv-muted" data-step="{step.step + 1}">Step {step.step + 1} verified no tree: '
            "nothing was left to draft, so the target wrote one token by itself.</div>"
        )
    boxes = tree_layout(step, root_text or "context")
    by_key = {b.key: b for b in boxes}
    target = target_token(step)
    edges = []
    for b in boxes:
        if b.parent is not None:
            edge_kind = "accepted" if b.kind in ("accepted", "resampled", "bonus") else b.kind
            edges.append((edge_kind, f'<path class="sv-te sv-te-{edge_kind}" d="{_edge(by_key[b.parent], b)}"/>'))
    on_top = {"not_reached": 0, "rejected": 1, "accepted": 2}  # shared trunks: the path's edges drawn last
    edges.sort(key=lambda e: on_top[e[0]])
    drawn = []
    for b in boxes:
        if b.key == ROOT:
            tip = root_tip(step, root_text or "the prompt")
        elif b.key == TARGET:
            assert target is not None
            tip = target_tip(step, target, rule)
        else:
            tip = node_tip(step, b.key, rule)
        drawn.append(_node(b, tip))
    width = max(b.x + b.w for b in boxes) + MARGIN
    height = max(b.y for b in boxes) + NODE_H + MARGIN
    c = tree_counts(step)
    gained = len(step.emitted)
    if target is None:
        end = "the text ended inside the path"
    elif target.origin == "bonus":
        end = f"a leaf reached, the target added {html.escape(repr(target.text))} (bonus)"
    else:
        end = f"the target wrote {html.escape(repr(target.text))} itself (correction)"
    head = (
        f"<b>Step {step.step + 1}</b>: {c['nodes']} guess{'es' if c['nodes'] != 1 else ''} in one target pass "
        f"({c['depth']} level{'s' if c['depth'] != 1 else ''}, {c['branches']} branch{'es' if c['branches'] != 1 else ''}):"
        f" {c['accepted']} accepted, {c['rejected']} refused, {c['not_reached']} never checked; {end}. "
        f"<b>+{gained} token{'s' if gained != 1 else ''}</b>."
    )
    label = f"token tree of step {step.step + 1}: {c['nodes']} nodes, {c['accepted']} accepted"
    svg = (
        f'<svg class="sv-tree-svg" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_attr(label)}"><g class="sv-tree-edges">{"".join(e for _, e in edges)}</g>'
        f'<g class="sv-tree-nodes">{"".join(drawn)}</g></svg>'
    )
    return (
        f'<div class="sv-tree" data-step="{step.step + 1}" data-nodes="{c["nodes"]}"><p class="sv-tree-head">{head}</p>'
        f'<div class="sv-tree-scroll">{svg}</div>{render_tree_legend()}</div>'
    )


def render_tree_legend() -> str:
    items = "".join(
        f'<span class="sv-legend-item"><svg width="22" height="16" aria-hidden="true"><g class="sv-tn sv-tn-{k}">'
        f'<rect x="1" y="1" width="20" height="14" rx="3"/></g></svg>{html.escape(label)}<small>{cue}</small></span>'
        for k, (label, cue) in KINDS.items()
    )
    return f'<div class="sv-legend sv-tree-legend">{items}</div>'


# ---------------------------------------------------------------- a run's trees


def latest_tree_step(steps: Sequence[StepEvent]) -> int | None:
    """The index of the last step that verified a tree (None: no tree step)."""
    return next((i for i in range(len(steps) - 1, -1, -1) if steps[i].tree), None)


def root_text(steps: Sequence[StepEvent], i: int, prompt: str = "") -> str:
    """The text of the context's last token before step i: the previous step's last emitted token, or for the first
    step the prompt's end (its tokens are not in the events: the last few characters stand for it)."""
    for s in reversed(steps[:i]):
        if s.emitted:
            return s.emitted[-1].text
    return prompt[-6:] if prompt else "the prompt"


def render_tree_view(
    steps: Sequence[StepEvent], shown: int | None = None, rule: str = "greedy", prompt: str = ""
) -> str:
    """The tree view of a run: the step with index `shown` (default: the latest tree step), the chain message for a
    run without trees, or the placeholder before any run."""
    if not steps:
        return EMPTY_TREE
    if latest_tree_step(steps) is None:
        return f'<div class="sv-tree sv-muted" data-chain="1">{html.escape(CHAIN_MESSAGE)}</div>'
    i = latest_tree_step(steps) if shown is None else shown
    if i is None or not 0 <= i < len(steps):
        n = len(steps)
        return f'<div class="sv-tree sv-muted" data-bad="1">Pick a step from 1 to {n}: this run has {n} step{"s" if n > 1 else ""}.</div>'
    return render_tree(steps[i], rule, root_text(steps, i, prompt))
