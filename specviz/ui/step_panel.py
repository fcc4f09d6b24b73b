"""Classroom step mode as HTML: plain-language captions for each stage of one verification step and the panel with the
draft's proposals and the target's verdict on each. No torch, no gradio."""

from __future__ import annotations

import html
from typing import Any

from specviz.core.events import StepEvent, TokenEvent
from specviz.ui.render import STYLES, fmt_prob, render_token, token_class
from specviz.ui.tree_view import accepted_path, target_token, tree_counts, visible


def step_captions(step: StepEvent, rule: str, strategy: str = "draft") -> list[tuple[str, str]]:
    """(stage title, plain-language caption) for each stage of one verification step."""
    if step.tree:
        return tree_captions(step, rule, strategy)
    k, n = step.n_drafted, step.n_accepted
    target = [t for t in step.tokens if t.origin in ("resampled", "bonus")]
    rej = next((t for t in step.tokens if t.origin == "rejected"), None)
    skipped = sum(t.origin == "not_reached" for t in step.tokens)
    out: list[tuple[str, str]] = []
    if k == 0:
        out.append(("1. Draft", "No guesses this step (the token budget left no room), so this is one plain step."))
    else:
        who = "The draft model" if strategy == "draft" else f"The {strategy} strategy"
        out.append(
            (
                "1. Draft proposes",
                f"{who} guessed {k} token{'s' if k > 1 else ''}, one after another. Guessing is cheap.",
            )
        )
        out.append(
            (
                "2. Target checks",
                f"The big target model scored all {k} guesses in <b>one</b> forward pass, which also gives it {k + 1} next-token "
                "distributions p to compare with the draft's q.",
            )
        )
        if rule == "greedy":
            rule_txt = "Greedy rule: a guess survives while it equals the target's top choice."
        else:
            rule_txt = "Sampling rule: guess x survives with probability min(1, p(x)/q(x)); this keeps the output exactly as if the target sampled alone."
        if rej is not None:
            why_rej = (
                "it is not the target's top choice"
                if rule == "greedy"
                else f"it survives with probability min(1, p/q) = {fmt_prob(rej.accept_prob)}, and the random draw fell outside"
            )
            verdict = (
                f"{n} accepted, then {html.escape(repr(rej.text))} at position {rej.draft_pos + 1} was rejected"
                f" ({why_rej})"
                + (
                    f"; the {skipped} guess{'es' if skipped > 1 else ''} after it {'are' if skipped > 1 else 'is'} thrown away."
                    if skipped
                    else "."
                )
            )
        elif n < k:
            verdict = f"{n} of {k} accepted; the run ended at an end-of-text token."
        else:
            verdict = f"All {k} guesses accepted."
        out.append(("3. Verdict", f"{rule_txt} {verdict}"))
    if target:
        t = target[0]
        if t.origin == "resampled" and k:
            how = (
                "the target's own top choice"
                if rule == "greedy"
                else "a draw from the residual norm(max(0, p - q)): the probability the draft under-covered"
            )
            out.append(
                ("4. Correction", f"At the rejected position the target puts {html.escape(repr(t.text))}: {how}.")
            )
        elif k:
            out.append(
                (
                    "4. Bonus",
                    f"Every guess passed, so the target's extra distribution gives {html.escape(repr(t.text))} for free.",
                )
            )
        else:
            out.append(("2. Target", f"The target produced {html.escape(repr(t.text))} itself."))
    gained = len(step.emitted)
    out.append(
        ("Result", f"+{gained} token{'s' if gained != 1 else ''} for one target pass ({step.total_tokens} so far).")
    )
    return out


# ---------------------------------------------------------------- tree steps

TREE_BUILDERS = {  # how each tree strategy grows its tree, for the first caption
    "drafttree": "The draft model grew a tree level by level, expanding its likeliest guesses (EAGLE-2's dynamic tree)",
    "medusatree": "Medusa's heads proposed their top tokens under every node, and the likeliest paths were kept",
    "ngramtree": "Prompt lookup made every earlier match of the context's last tokens a branch, shared prefixes merged",
    "multidraft": "The draft model drafted several candidates, merged into one tree by their shared prefixes",
}
LIST_MAX = 4  # refused siblings named one by one in a sentence; the rest are counted


def _tok(text: str) -> str:
    """A token in a sentence: quoted, whitespace visible, never broken across lines."""
    return f"<code class='sv-walk-tok'>'{html.escape(visible(text))}'</code>"


def _names(tokens: list[TokenEvent]) -> str:
    shown = ", ".join(_tok(t.text) for t in tokens[:LIST_MAX])
    more = len(tokens) - LIST_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def tree_walk(step: StepEvent, rule: str) -> list[str]:
    """The rule's walk down a tree step in words, one sentence per node it stood on, from the root: greedy follows
    the child equal to the target's top choice; sampling tries the children in order, each accepted with probability
    min(1, p'/q), p' the residual after the refused ones."""
    nodes = step.tree or []
    path = accepted_path(nodes)
    target = target_token(step)
    tries: dict[int, list[TokenEvent]] = {}  # depth - 1 -> the tries there, in the order made
    for t in step.tokens:
        if t.origin in ("accepted", "rejected"):
            tries.setdefault(t.draft_pos, []).append(t)
    out = []
    for d in range(len(path) + 1):
        here = "the context" if d == 0 else _tok(nodes[path[d - 1]].text)
        after = "At the root (the context's last token)" if d == 0 else f"After {here}"
        tried = tries.get(d, [])
        refused = [t for t in tried if t.origin == "rejected"]
        nxt = nodes[path[d]] if d < len(path) else None
        if rule == "greedy":
            if nxt is not None:
                also = f" ({_names(refused)} refused)" if refused else ""
                out.append(
                    f"{after}, the target's top choice is {_tok(nxt.text)}; the child {_tok(nxt.text)} exists: "
                    f"follow it{also}."
                )
            elif target is not None and target.origin == "resampled":
                out.append(
                    f"{after}, the target's top choice is {_tok(target.text)}; no child is {_tok(target.text)} "
                    f"(tried: {_names(refused)}): the target writes {_tok(target.text)} itself (a correction)."
                )
            elif target is not None:
                out.append(
                    f"{here} is a leaf (no guess below it): the target adds its top choice {_tok(target.text)} as a "
                    "bonus."
                )
            else:
                out.append(f"{here} is the end of the text: the run stops, and the guesses below it are not used.")
            continue
        words = []
        for j, t in enumerate(tried):
            prime = "p" if j == 0 else "p'"
            ratio = f"min(1, {prime}/q) = {fmt_prob(t.accept_prob)}"
            if t.origin == "accepted":
                words.append(f"child {_tok(t.text)} tried: accepted with probability {ratio}, and it was: follow it")
            elif j < LIST_MAX:
                words.append(
                    f"child {_tok(t.text)} tried: accepted with probability {ratio}, refused; the residual "
                    "p' = norm(max(0, p' - q)) takes over for the next try"
                    if j == 0
                    else f"child {_tok(t.text)} tried: accepted with probability {ratio}, refused"
                )
            elif j == LIST_MAX:
                rest = [x for x in tried[j:] if x.origin == "rejected"]
                words.append(f"{len(rest)} more refused")
        if nxt is None and target is not None and target.origin == "resampled":
            words.append(
                f"every child refused: the target draws {_tok(target.text)} from the residual left after them "
                "(a correction)"
            )
        elif nxt is None and target is not None:
            out.append(
                f"{here} is a leaf (no guess below it): the target draws a bonus token {_tok(target.text)} from p."
            )
            continue
        elif nxt is None:
            out.append(f"{here} is the end of the text: the run stops, and the guesses below it are not used.")
            continue
        out.append(f"{after}: {'; '.join(words)}.")
    return out


def tree_captions(step: StepEvent, rule: str, strategy: str = "drafttree") -> list[tuple[str, str]]:
    """(stage title, caption) for a tree step: the tree, the one pass, the walk node by node, the target's token."""
    c = tree_counts(step)
    nodes = step.tree or []
    first = sum(n.parent == -1 for n in nodes)
    how = TREE_BUILDERS.get(strategy, f"The {html.escape(strategy)} strategy guessed a tree")
    shape = (
        f"{c['nodes']} guesses: {first} for the next token, {c['depth']} level{'s' if c['depth'] != 1 else ''} deep, "
        f"{c['branches']} branch{'es' if c['branches'] != 1 else ''} (root-to-leaf paths). Siblings are alternatives "
        "for the same position."
    )
    out = [("1. Draft proposes a tree", f"{how}: {shape}")]
    out.append(
        (
            "2. Target checks",
            f"The target scored all {c['nodes']} nodes in <b>one</b> forward pass under a tree attention mask: each "
            "node sees the context and its own ancestors only, so every branch is checked as if it were alone.",
        )
    )
    if rule == "greedy":
        rule_txt = "Greedy walk from the root: follow the child that equals the target's top choice."
    else:
        rule_txt = (
            "Sampling walk from the root (SpecInfer): try the children in order, each accepted with probability "
            "min(1, p'/q); after a refusal p' becomes the residual, so the output still follows the target exactly."
        )
    walk = "".join(f"<li>{s}</li>" for s in tree_walk(step, rule))
    out.append(("3. Walk", f"{rule_txt}<ol class='sv-walk'>{walk}</ol>"))
    target = target_token(step)
    if target is not None:
        title = "4. Correction" if target.origin == "resampled" else "4. Bonus"
        where = "where no child passed" if target.origin == "resampled" else "at the leaf the walk reached"
        out.append((title, f"The target puts {_tok(target.text)} {where}, so the step always gains a token."))
    gained = len(step.emitted)
    out.append(
        (
            "Result",
            f"+{gained} token{'s' if gained != 1 else ''} for one target pass ({step.total_tokens} so far); of the "
            f"{c['nodes']} nodes {c['accepted']} accepted, {c['rejected']} refused, {c['not_reached']} never checked.",
        )
    )
    return out


def render_step_panel(
    step: StepEvent | None,
    rule: str,
    detail: dict[str, Any] | None = None,
    strategy: str = "draft",
    finished: bool = False,
) -> str:
    """Step mode: the draft's proposals, the target's verdict on each, captions per stage, and a note about the
    p/q chart (drawn by charts.step_detail_chart from `detail`)."""
    if step is None:
        return (
            '<div class="sv-steppanel sv-muted">Classroom mode: press <b>Step</b> to advance one verification step. '
            "Each press shows what the draft proposed, the target's verdict on every guess and, at a rejection, "
            "where the correction comes from.</div>"
        )
    rows = []
    for t in step.tokens:
        kind = token_class(t, step)
        who = "draft" if t.origin in ("accepted", "rejected", "not_reached") else "target"
        ratio = fmt_prob(t.accept_prob) if who == "draft" else ""
        rows.append(
            f"<tr class='sv-row-{kind}'><td>{t.draft_pos + 1 if who == 'draft' else ''}</td><td>{who}</td>"
            f"<td>{render_token(t, step, rule)}</td><td>{fmt_prob(t.q)}</td><td>{fmt_prob(t.p)}</td><td>{ratio}</td>"
            f"<td>{html.escape(STYLES[kind].label)}</td></tr>"
        )
    table = (
        f"<table class='sv-steptable'><thead><tr><th>{'depth' if step.tree else 'pos'}</th><th>by</th><th>token</th>"
        "<th>q (draft)</th><th>p (target)</th><th>min(1, p/q)</th><th>verdict</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    caps = "".join(f"<li><b>{title}.</b> {text}</li>" for title, text in step_captions(step, rule, strategy))
    if step.n_drafted == 0:
        note = ""
    elif detail is None:
        note = "<p class='sv-note'>The p/q chart needs the distributions at this position, which this engine did not attach.</p>"
    else:
        pos = detail.get("position", 0)
        if step.tree:  # the target spoke where the walk stopped, whatever was refused on the way
            target = target_token(step)
            what = (
                "the node where every child was refused"
                if target and target.origin == "resampled"
                else "the leaf reached"
            )
            at = f"depth {pos + 1} of the tree"
        else:
            what = "the rejected position" if step.rejected else "the final position"
            at = f"draft position {pos + 1}"
        note = f"Chart: the {len(detail['tokens'])} most likely tokens at {what} ({at})."
        shown = set(detail.get("token_ids") or detail.get("ids") or [])
        role = {"rejected": "the rejected guess", "resampled": "the target's token", "bonus": "the target's token"}
        missing = [
            f"{html.escape(repr(t.text))} ({role[t.origin]}, p = {fmt_prob(t.p)})"
            for t in step.tokens
            if shown and t.id not in shown and t.origin in role and t.draft_pos == pos
        ]
        if missing:
            note += " Not among them: " + "; ".join(missing) + "."
        note = f"<p class='sv-note'>{note}</p>"
    end = "<p class='sv-done'>Generation finished: press Step to start again.</p>" if finished else ""
    return (
        f'<div class="sv-steppanel" data-step="{step.step + 1}"><h4>Step {step.step + 1}</h4>'
        f"<ol class='sv-captions'>{caps}</ol>{table}{note}{end}</div>"
    )
