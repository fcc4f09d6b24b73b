"""Classroom step mode as HTML: plain-language captions for each stage of one verification step and the panel with the
draft's proposals and the target's verdict on each. No torch, no gradio."""

from __future__ import annotations

import html
from typing import Any

from specviz.core.events import StepEvent
from specviz.ui.render import STYLES, fmt_prob, render_token, token_class


def step_captions(step: StepEvent, rule: str, strategy: str = "draft") -> list[tuple[str, str]]:
    """(stage title, plain-language caption) for each stage of one verification step."""
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
        "<table class='sv-steptable'><thead><tr><th>pos</th><th>by</th><th>token</th><th>q (draft)</th>"
        "<th>p (target)</th><th>min(1, p/q)</th><th>verdict</th></tr></thead><tbody>"
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
        what = "the rejected position" if step.rejected else "the final position"
        note = f"Chart: the {len(detail['tokens'])} most likely tokens at {what} (draft position {pos + 1})."
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
