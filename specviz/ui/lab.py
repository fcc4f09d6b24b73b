"""The Theory lab's words and plain helpers: its introduction and chart captions (each naming the result of Yin et
al. (2024) or Leviathan et al. (2023) it checks), result tables and the toy
playground's summary. No gradio."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from specviz.core.config import ConfigError, whole
from specviz.lab import playground as pgm

YIN = "Yin, Chen, Huang and Wang, “A Theoretical Perspective for Speculative Decoding Algorithm” (NeurIPS 2024)"
LEVIATHAN = "Leviathan, Kalman and Matias, “Fast Inference from Transformers via Speculative Decoding” (ICML 2023)"

INTRO = f"""### Theory lab
Checks on this machine and the loaded pair what {YIN} and {LEVIATHAN} predict. Their definitions, in this app's
notation (p = the target's next-token distribution, q = the draft's):

- **Decoding as a Markov chain**: the state is the prefix x<sub>1:n-1</sub>; the target moves to x<sub>n</sub> with
  p<sub>n</sub>(· | x<sub>1:n-1</sub>), the draft with q<sub>n</sub>(· | x<sub>1:n-1</sub>).
- **Total variation**: TV(p, q) = ½ Σ<sub>x</sub> |p(x) − q(x)| = 1 − Σ<sub>x</sub> min(p(x), q(x)).
- **Rejection-based algorithm**: a drafted token is accepted or rejected by a rule that sees p and q, and a rejected
  one is replaced by a draw from a correction distribution; it is **unbiased** when its output follows p exactly.
- **Rejections**: the number of drafted tokens rejected over a whole generation.

Results: expected rejections = Σ<sub>n</sub> E[TV(p<sub>n</sub>, q<sub>n</sub>)], and no unbiased rejection-based
algorithm does better; several drafts per step (batch speculative decoding) reject less, with a gain that saturates;
a biased rule with rejection probability R and output P has R + TV(P, p) ≥ TV(p, q), and the optimal trade-off is the
line from (0, TV) to (TV, 0) (their Theorem 5). Leviathan et al.: a step emits (1 − α<sup>γ+1</sup>) / (1 − α)
tokens on average and speeds decoding up by that over γc + 1, which beats 1 for some γ exactly when α > c.
"""

CAPTIONS = {
    "pg_dist": "Bars: p, q and their overlap min(p, q), whose sum is the chance that a drafted token survives, "
    "1 − TV(p, q); diamonds: each token's acceptance if drafted. This is one position of Yin et al.'s rejection "
    "formula: expected rejections = TV(p, q).",
    "pg_hist": "N simulated rounds of draft, test and correct: the histogram of emitted tokens matches p, up to "
    "sampling noise that shrinks like 1/√N. This is the lossless lemma (Leviathan et al.'s correctness proof; the "
    "unbiasedness in Yin et al.); with relax above 0 it follows the rule's exact output (circles) instead.",
    "batch": "Measured rejections per generated token (left: steps where all M drafts were rejected and the target "
    "corrected) and tokens per step (right) as the number of drafts M grows, beside the single draft's expected "
    "rejections, its sum of TV per token: checks Yin et al.'s batch result that more drafts reject less, with a gain "
    "that saturates.",
    "tradeoff": "Each filled point is one relax setting (its label): measured rejections and the exact drift "
    "TV(output, p) summed over checked positions, both over the run's Σ TV; open points use the exact expected "
    "rejections. The dashed line rejections + drift = Σ TV is Yin et al.'s optimal trade-off (Theorem 5): linear and "
    "power land on it, the geometric mix above it, and in expectation nothing goes below.",
    "cost": "What one target pass over k tokens costs on this machine, in one-token passes, and c = draft ms per token "
    "/ target ms per pass: Leviathan et al.'s speedup formula assumes the flat dashed line.",
    "planner": "Left: Leviathan et al.'s predicted speedup against gamma for the measured alpha and c (dotted: their "
    "formula; solid: with the measured pass cost), best gammas starred, measured speedups as diamonds. Right: the "
    "formula's best speedup against alpha passes 1 exactly at alpha = c, their break-even condition.",
    "replay": "The recorded greedy run replayed under other draft-length schedules: tokens per pass are exact (under "
    "greedy, where the draft agrees with the output fixes every accepted length), speedups are predictions from the "
    "measured costs, not timings. It checks what Leviathan et al.'s one fixed gamma leaves to adaptive schedules.",
}


RELAX_NOTE = (
    "Relaxed acceptance, one knob λ from 0 (lossless, the default everywhere else) to 1 (accept every "
    "guess). **linear**: accept with min(1, p/q) + λ(1 − min(1, p/q)), correct from norm(max(0, p − q)): "
    "the lossless rule against (1 − λ)p + λq, rejections (1 − λ)TV, drift λTV. **power**: accept with "
    "min(1, p/q)<sup>1−λ</sup>, same correction. **geometric**: the lossless rule against the normalised "
    "p<sup>1−λ</sup>q<sup>λ</sup> (logit interpolation). The engine records each checked position's exact "
    "drift TV(output, p) from p, q and the rule."
)

BATCH_COLUMNS = {  # result key -> column title
    "M": "M",
    "steps": "steps",
    "tokens_per_step": "tokens/step",
    "tries": "tries",
    "rejections": "rejected tries",
    "corrections": "rejections (all M rejected)",
    "corrections_per_token": "rejections per token",
    "tv_sum": "Σ TV of the tries",
    "wall_s": "wall s",
}
RELAX_COLUMNS = {
    "family": "family",
    "relax": "relax",
    "steps": "steps",
    "checked": "checked",
    "rejections": "rejections",
    "expected_rejections": "expected rejections",
    "tv_sum": "Σ TV",
    "drift_sum": "Σ drift",
    "rel_rejections": "rejections / Σ TV",
    "rel_drift": "drift / Σ TV",
    "tokens_per_step": "tokens/step",
}
PLAN_COLUMNS = {
    "gamma": "gamma",
    "steps": "steps",
    "tokens_per_step": "tokens/step",
    "alpha": "alpha",
    "speedup": "measured speedup",
    "identical": "same as plain",
}
REPLAY_COLUMNS = {
    "label": "schedule",
    "steps": "target passes",
    "tokens_per_step": "tokens/pass",
    "drafted": "drafted",
    "wasted": "wasted drafts",
    "predicted_s": "predicted s",
    "predicted_speedup": "predicted speedup",
}


def count(name: str, v: Any) -> int:
    """A whole-number field the engine's config does not check (draws, tokens, rounds, a seed) as an int."""
    v = whole(name, v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be a whole number, got {v!r}")
    return v


def table(rows: list[dict[str, Any]], cols: dict[str, str]) -> pd.DataFrame:
    """Selected columns renamed, floats rounded to 3 places."""
    data = [
        {label: (round(r[k], 3) if isinstance(r.get(k), float) else r.get(k)) for k, label in cols.items()}
        for r in rows
    ]
    return pd.DataFrame(data, columns=list(cols.values()))


def render_playground(pg: pgm.Playground) -> str:
    """The playground's numbers: overlap, rejection, drift, sampling check, and a per-token table."""
    relaxed = pg.relax > 0
    head = (
        f'<p class="sv-lab-big" data-overlap="{sum(pg.overlap):.4f}">Overlap Σ min(p, q) = '
        f"<b>{sum(pg.overlap):.3f}</b> = 1 − TV(p, q). Without relaxing, a drafted token is kept with probability "
        f"{1 - pg.tv:.3f} and rejected with probability TV = {pg.tv:.3f}: one position of Yin et al.'s "
        "expected rejections = Σ TV.</p>"
    )
    if relaxed:
        head += (
            f"<p>Relaxed ({html.escape(pg.family)}, λ = {pg.relax:g}): P(reject) = <b>{pg.rejection:.3f}</b>, "
            f"drift TV(output, p) = <b>{pg.drift:.3f}</b>; sum {pg.rejection + pg.drift:.3f} vs TV {pg.tv:.3f} "
            f"({'on' if abs(pg.rejection + pg.drift - pg.tv) < 1e-9 else 'above'} the optimal line).</p>"
        )
    target = "the rule's exact output" if relaxed else "p"
    ref = pg.output if relaxed else pg.p
    tv_ref = 0.5 * sum(abs(c / pg.n - r) for c, r in zip(pg.counts, ref))
    head += (
        f'<p data-sample-tv="{pg.sample_tv:.4f}">{pg.n} simulated draws: {pg.accepted_draws} drafts kept; '
        f"TV(histogram, {target}) = {tv_ref:.4f}, about the sampling noise √(V / 2πN) ≈ {pg.noise:.4f}.</p>"
    )
    rows = "".join(
        f"<tr><th>{lab}</th><td>{p:.3f}</td><td>{q:.3f}</td><td>{o:.3f}</td>"
        f"<td>{'never drafted' if a is None else f'{a:.3f}'}</td><td>{r:.3f}</td><td>{c}</td></tr>"
        for lab, p, q, o, a, r, c in zip(pg.labels, pg.p, pg.q, pg.overlap, pg.accept, pg.residual, pg.counts)
    )
    fix = "correction" if relaxed else "residual"
    table = (
        "<table class='sv-lab-table'><thead><tr><th>token</th><th>p</th><th>q</th><th>min(p, q)</th>"
        f"<th>kept if drafted</th><th>{fix}</th><th>draws</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return f'<div class="sv-lab-summary">{head}{table}</div>'
