"""Events -> HTML: the styled token stream with tooltips, its legend, status lines, the KPIs, the theory card and the
Compare tab's outputs side by side (step mode is in step_panel.py, tables in tables.py). Plain functions of events (no
torch, no gradio), so tests call them directly."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specviz.core.events import RunSummary, StepEvent, TokenEvent
from specviz.core.theory import theory_numbers, why


@dataclass(frozen=True)
class TokenStyle:
    """How one token class looks and what it means; the cue names the non-colour signal."""

    css: str
    label: str
    cue: str
    meaning: str


# One entry per token class. Each has a non-colour cue (underline, strike, box, weight) for colour-blind viewers.
STYLES: dict[str, TokenStyle] = {
    "accepted": TokenStyle("sv-accepted", "accepted draft", "solid underline", "drafted, and the target agreed"),
    "rejected": TokenStyle("sv-rejected", "rejected draft", "struck through", "drafted, and the target said no"),
    "not_reached": TokenStyle(
        "sv-not-reached", "discarded draft", "faded, dotted", "drafted after a rejection, never checked"
    ),
    "resampled": TokenStyle(
        "sv-resampled", "target's correction", "bold, boxed", "the target's own token where a draft failed"
    ),
    "bonus": TokenStyle("sv-bonus", "bonus token", "bold, double underline", "free extra token when all drafts pass"),
    "plain": TokenStyle("sv-plain", "target token", "plain text", "one target pass, no draft (plain decoding)"),
}
PROMPT_CSS = "sv-prompt"
EMPTY_STREAM = (
    '<p class="sv-placeholder">Press <b>Run</b> to generate, or <b>Step</b> to walk through one verification '
    "step at a time.</p>"
)


def token_class(tok: TokenEvent, step: StepEvent) -> str:
    """The style key of a token: its origin, except a target token in a step without drafts is 'plain'."""
    if tok.origin in ("bonus", "resampled") and step.n_drafted == 0:
        return "plain"
    return tok.origin


def fmt_prob(x: float | None) -> str:
    """A probability with 4 decimals, small ones in scientific notation; '-' when unknown."""
    if x is None:
        return "-"
    return f"{x:.4f}" if x == 0 or x >= 1e-3 else f"{x:.2e}"


def verdict_text(kind: str, rule: str) -> str:
    """One line on why a token has its class, in the words of the verification rule."""
    greedy = rule == "greedy"
    return {
        "accepted": "accepted: equals the target's top choice" if greedy else "accepted: passed the min(1, p/q) test",
        "rejected": "rejected: the target's top choice differs" if greedy else "rejected: failed the min(1, p/q) test",
        "not_reached": "discarded: came after a rejection, never checked",
        "resampled": "correction: the target's top choice" if greedy else "correction: drawn from norm(max(0, p - q))",
        "bonus": "bonus: every draft passed; the target adds one more token from p",
        "plain": "target token: no draft this step",
    }[kind]


def token_tip(tok: TokenEvent, step: StepEvent, rule: str) -> str:
    """The hover text of a token: step, draft position, p, q, min(1, p/q) and the verdict."""
    kind = token_class(tok, step)
    drafted = tok.origin in ("accepted", "rejected", "not_reached")
    if drafted:
        where = f"draft position {tok.draft_pos + 1} of {step.n_drafted}"
    elif step.n_drafted:
        where = f"the target's token at position {tok.draft_pos + 1}"
    else:
        where = "the target's token (no draft)"
    lines = [f"step {step.step + 1} - {where}", verdict_text(kind, rule), f"p (target) = {fmt_prob(tok.p)}"]
    if tok.q is not None or drafted:
        lines.append(f"q (draft)  = {fmt_prob(tok.q)}")
    if drafted:
        lines.append(f"accept prob min(1, p/q) = {fmt_prob(tok.accept_prob)}")
    lines.append(f"token {tok.id} {tok.text!r}")
    return "\n".join(lines)


def _attr(text: str) -> str:
    """Escape for an attribute value; newlines become &#10; so they survive any re-serialisation."""
    return html.escape(text, quote=True).replace("\n", "&#10;")


def token_text_html(text: str, discarded: bool) -> tuple[str, list[str]]:
    """Escaped token text and extra classes. Emitted whitespace stays literal (the container keeps it, pre-wrap),
    with a faint glyph before each newline; discarded tokens show newline/tab/space as symbols so layout never breaks."""
    if text == "":
        return "", ["sv-empty"]
    if discarded:
        shown = text.replace("\n", "\u21b5").replace("\t", "\u21e5")
        if not shown.strip():
            shown = shown.replace(" ", "\u2423")
        return html.escape(shown), []
    body = html.escape(text)
    extra = ["sv-ws"] if not text.strip() else []
    if "\n" in text:
        body = body.replace("\n", '<span class="sv-nlg" aria-hidden="true"></span>\n')
    return body, extra


def render_token(tok: TokenEvent, step: StepEvent, rule: str) -> str:
    kind = token_class(tok, step)
    body, extra = token_text_html(tok.text, discarded=not tok.emitted)
    cls = " ".join(["sv-tok", STYLES[kind].css, *extra])
    return f'<span class="{cls}" data-origin="{kind}" data-tip="{_attr(token_tip(tok, step, rule))}">{body}</span>'


def render_step(step: StepEvent, rule: str, current: bool = False) -> str:
    """One verification step: a boundary marker, then its tokens in draft order and the target's token last."""
    cls = "sv-step sv-current" if current else "sv-step"
    sep = f'<span class="sv-sep" aria-hidden="true" data-tip="step {step.step + 1} starts"></span>'
    toks = "".join(render_token(t, step, rule) for t in step.tokens)
    return f'{sep}<span class="{cls}" data-step="{step.step + 1}">{toks}</span>'


def render_stream(
    steps: Sequence[StepEvent], *, prompt: str = "", rule: str = "greedy", current: int | None = None
) -> str:
    """The whole token stream so far. Append-only while a run grows (no closing wrapper), so streaming sends diffs.
    current: index of the step to highlight (step mode)."""
    if not steps and not prompt:
        return EMPTY_STREAM
    head = f'<span class="{PROMPT_CSS}" data-tip="the prompt">{html.escape(prompt)}</span>' if prompt else ""
    return head + "".join(render_step(s, rule, s.step == current) for s in steps)


def render_legend() -> str:
    """A legend of the token classes, each drawn in its own style with its non-colour cue."""
    items = []
    for st in STYLES.values():
        sample = f'<span class="sv-tok {st.css}">{html.escape(st.label)}</span>'
        items.append(
            f'<span class="sv-legend-item" data-tip="{_attr(st.meaning)}">{sample}<small>{st.cue}</small></span>'
        )
    items.append('<span class="sv-legend-item"><span class="sv-sep"></span><small>step boundary</small></span>')
    return f'<div class="sv-legend" role="list">{"".join(items)}</div>'


# ---------------------------------------------------------------- status lines


def render_status(message: str, kind: str = "info", fraction: float | None = None) -> str:
    """A status line: kind is info | busy | ok | warn | error; fraction draws a progress bar."""
    icon = {"info": "i", "busy": "...", "ok": "ok", "warn": "!", "error": "x"}.get(kind, "i")
    bar = ""
    if fraction is not None:
        pct = max(0.0, min(1.0, fraction)) * 100
        bar = f'<div class="sv-bar" role="progressbar" aria-valuenow="{pct:.0f}"><div style="width:{pct:.1f}%"></div></div>'
    role = ' role="alert"' if kind == "error" else ""
    return (
        f'<div class="sv-status sv-{kind}"{role}><span class="sv-icon" aria-hidden="true">{icon}</span>'
        f'<span class="sv-msg">{html.escape(message)}</span>{bar}</div>'
    )


def render_error(message: str) -> str:
    return render_status(message, "error")


# ---------------------------------------------------------------- numbers: KPIs, theory


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def render_kpis(spec: RunSummary | None, plain: RunSummary | None, phase: str = "") -> str:
    """The headline numbers, large enough for a projector; each has a stable data-kpi name."""
    if spec is None:
        return ""
    speed = spec.speedup
    kpis = [
        ("tokens", f"{spec.new_tokens}", "new tokens"),
        ("steps", f"{spec.steps}", "target passes"),
        ("accepted", _fmt(spec.mean_accepted), "accepted / step"),
        ("acceptance", _fmt(spec.acceptance_rate * 100, ".0f", "%"), "acceptance rate"),
        ("tps", _fmt(spec.tokens_per_s, ".1f"), "tokens/s speculative"),
        ("plain_tps", _fmt(plain.tokens_per_s if plain else None, ".1f"), "tokens/s plain"),
        ("speedup", _fmt(speed, ".2f", "x"), "measured speedup"),
    ]
    cls = "" if speed is None else (" sv-good" if speed > 1.02 else (" sv-bad" if speed < 0.98 else ""))
    cells = "".join(
        f'<div class="sv-kpi{cls if k == "speedup" else ""}" data-kpi="{k}"><b>{v}</b><small>{label}</small></div>'
        for k, v, label in kpis
    )
    return f'<div class="sv-kpis">{cells}</div>'


def render_theory(s: RunSummary | None) -> str:
    """The formulas with this run's numbers filled in, measured beside predicted, and the one-sentence why."""
    if s is None:
        return '<div class="sv-theory sv-muted">The theory appears here after a run.</div>'
    t = theory_numbers(s)
    a, c, g = t["alpha"], t["c"], s.gamma
    rule_note = "" if s.rule == "sample" else " (exact for speculative sampling; greedy checks the argmax)"
    rows = [
        (
            "tokens per target pass",
            "(1 - &alpha;<sup>&gamma;+1</sup>) / (1 - &alpha;)",
            _fmt(t["expected_tokens_per_step"]),
            _fmt(t["tokens_per_step"]),
        ),
        (
            "speedup",
            "(1 - &alpha;<sup>&gamma;+1</sup>) / ((1 - &alpha;)(&gamma;c + 1)"
            + (" V(k)/V(1))" if t["pass_ratio"] else ")"),
            _fmt(t["expected_speedup"], ".2f", "x"),
            _fmt(t["speedup"], ".2f", "x"),
        ),
        (
            "rejections",
            f"&Sigma; TV(p, q) over checked drafts{rule_note}",
            _fmt(t["expected_rejections"], ".1f"),
            f"{s.rejections}",
        ),
    ]
    body = "".join(
        f"<tr><th>{name}</th><td class='sv-formula'>{f}</td><td>{e}</td><td>{m}</td></tr>" for name, f, e, m in rows
    )
    inputs = (
        f"&alpha; = accepted / checked drafts = {s.accepted}/{s.accepted + s.rejections} = {a:.3f}; "
        f"c = draft ms per token / target ms per pass = {_fmt(c, '.3f')}; &gamma; = {g}"
    )
    if t["pass_ratio"]:
        inputs += f"; V(k)/V(1) = this run's ms per target pass / plain's = {t['pass_ratio']:.2f}"
    return (
        f'<div class="sv-theory"><p class="sv-why" data-testid="why">{html.escape(why(s))}</p>'
        f"<p class='sv-inputs'>{inputs}</p>"
        "<table><thead><tr><th></th><th>formula</th><th>predicted</th><th>measured</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        "<p class='sv-cite'>Predictions: Leviathan et al. 2023 (tokens per pass, speedup); "
        "Yin et al. 2024 (expected rejections = sum of TV distances).</p></div>"
    )


# ---------------------------------------------------------------- the Compare tab


def render_side_by_side(tracks: Sequence[Any], rule: str, closed: bool = True) -> str:
    """Each run's coloured output in its own column (objects with .label, .steps and .summary). closed=False leaves
    the row open (the browser closes it), so the HTML for k + 1 runs starts with the HTML for k and a stream of them
    is sent as appends."""
    cols = []
    for t in tracks:
        s = t.summary
        sub = (
            f"{s.new_tokens} tokens, {s.steps} steps, {s.tokens_per_s:.1f} tok/s"
            if s
            else f"{len(t.steps)} steps so far"
        )
        cols.append(
            f'<div class="sv-col" data-run="{html.escape(t.label, quote=True)}"><h4>{html.escape(t.label)}'
            f"<small>{html.escape(sub)}</small></h4>"
            f'<div class="sv-stream sv-col-stream">{render_stream(t.steps, rule=rule) if t.steps else ""}</div></div>'
        )
    return f'<div class="sv-cols">{"".join(cols)}' + ("</div>" if closed else "")
