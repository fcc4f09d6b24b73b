"""Events -> HTML and tables: the styled token stream with tooltips, its legend, the step-mode panel, status lines,
the theory card and the summary tables. Plain functions of events (no torch, no gradio), so tests call them directly."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from specviz.core.events import RunSummary, StepEvent, TokenEvent
from specviz.core.metrics import position_stats
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
            "(1 - &alpha;<sup>&gamma;+1</sup>) / ((1 - &alpha;)(&gamma;c + 1))",
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
    return (
        f'<div class="sv-theory"><p class="sv-why" data-testid="why">{html.escape(why(s))}</p>'
        f"<p class='sv-inputs'>{inputs}</p>"
        "<table><thead><tr><th></th><th>formula</th><th>predicted</th><th>measured</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        "<p class='sv-cite'>Predictions: Leviathan et al. 2023 (tokens per pass, speedup); "
        "Yin et al. 2024 (expected rejections = sum of TV distances).</p></div>"
    )


# ---------------------------------------------------------------- step mode


def _chip(tok: TokenEvent, step: StepEvent, rule: str) -> str:
    return render_token(tok, step, rule)


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
            f"<td>{_chip(t, step, rule)}</td><td>{fmt_prob(t.q)}</td><td>{fmt_prob(t.p)}</td><td>{ratio}</td>"
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


# ---------------------------------------------------------------- tables (summary, per-step CSV)

SUMMARY_COLUMNS = [
    "run",
    "tokens",
    "steps",
    "mean accepted/step",
    "acceptance rate",
    "tokens/s",
    "speedup",
    "c (draft/target cost)",
]


def summary_row(label: str, s: RunSummary, plain: RunSummary | None = None) -> dict[str, Any]:
    """One table row; speedup against `plain` when given (the plain row itself reads 1.00)."""
    speed = s.speedup
    if speed is None and plain is not None and plain.tokens_per_s > 0:
        speed = s.tokens_per_s / plain.tokens_per_s
    return {
        "run": label,
        "tokens": s.new_tokens,
        "steps": s.steps,
        "mean accepted/step": round(s.mean_accepted, 3) if s.drafted else None,
        "acceptance rate": round(s.acceptance_rate, 3) if s.drafted else None,
        "tokens/s": round(s.tokens_per_s, 2),
        "speedup": None if speed is None else round(speed, 3),
        "c (draft/target cost)": None if s.cost_ratio is None else round(s.cost_ratio, 3),
    }


def summary_table(spec: RunSummary | None, plain: RunSummary | None) -> pd.DataFrame:
    """The Run tab's table: the speculative run and its plain baseline, one row each."""
    rows = []
    if spec is not None:
        rows.append(summary_row(f"speculative ({spec.strategy}, {spec.rule}, gamma={spec.gamma})", spec, plain))
    if plain is not None:
        rows.append(summary_row("plain decoding (baseline)", plain, plain))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def steps_table(steps: Sequence[StepEvent]) -> pd.DataFrame:
    """One row per verification step (the CSV export)."""
    rows = []
    for s in steps:
        rows.append(
            {
                "step": s.step,
                "start": s.start,
                "gamma": s.gamma,
                "drafted": s.n_drafted,
                "accepted": s.n_accepted,
                "rejected": int(s.rejected),
                "emitted": len(s.emitted),
                "target_token_origin": next((t.origin for t in s.tokens if t.origin in ("resampled", "bonus")), ""),
                "drafted_text": "".join(t.text for t in s.drafted),
                "emitted_text": "".join(t.text for t in s.emitted),
                "draft_ms": round(s.draft_ms, 4),
                "verify_ms": round(s.verify_ms, 4),
                "elapsed_ms": round(s.elapsed_ms, 4),
                "total_tokens": s.total_tokens,
                "running_acceptance": round(s.total_accepted / s.total_drafted, 4) if s.total_drafted else None,
                "tv_sum_step": round(sum(t.tv or 0.0 for t in s.drafted if t.origin in ("accepted", "rejected")), 6),
            }
        )
    return pd.DataFrame(rows)


COMPARE_COLUMNS = [*SUMMARY_COLUMNS, "acceptance by draft position", "same as plain"]


def compare_table(tracks: Sequence[Any], plain: RunSummary | None, greedy: bool = True) -> pd.DataFrame:
    """The Compare tab's table (see compare_rows)."""
    return pd.DataFrame(compare_rows(tracks, plain, greedy), columns=COMPARE_COLUMNS)


def compare_rows(tracks: Sequence[Any], plain: RunSummary | None, greedy: bool = True) -> list[dict[str, Any]]:
    """One row per finished run (objects with .label and .summary), plus, for greedy decoding, whether each output
    equals plain decoding token for token (it must: the rule is lossless). Missing numbers are None."""
    rows = []
    for t in tracks:
        if t.summary is None:
            continue
        row = summary_row(t.label, t.summary, plain)
        reached, accepted, _ = position_stats(getattr(t, "steps", []))
        # per draft position (for medusa, per head): accepted among the guesses checked there
        row["acceptance by draft position"] = " ".join(f"{a / n:.0%}" for a, n in zip(accepted, reached) if n) or None
        if greedy and plain is not None:
            row["same as plain"] = "yes" if t.summary.output_ids == plain.output_ids else "NO"
        else:
            row["same as plain"] = "n/a (sampling)" if not greedy else "-"
        rows.append(row)
    return rows


def render_side_by_side(tracks: Sequence[Any], rule: str) -> str:
    """Each run's coloured output in its own column (objects with .label, .steps and .summary)."""
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
    return f'<div class="sv-cols">{"".join(cols)}</div>'
