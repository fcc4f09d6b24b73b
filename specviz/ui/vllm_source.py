"""What the Run and Compare tabs show for a run from a vLLM server: its label, the panels it has no data for (one
sentence why each), and the numbers its StepEvents cannot carry (per-step rejections, acceptance by position, the
server's counters), all read from the run's trace meta."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from specviz.core.events import RunSummary, StepEvent
from specviz.core.theory import expected_tokens_per_step, per_token_alpha

# the Run tab's panels (by elem_id) that a vLLM run cannot fill, and why: vLLM reports how many drafted tokens each
# verify step accepted, never the guesses it refused nor any probability
UNAVAILABLE: dict[str, str] = {
    "sv-stepmode": "Step mode's probability chart needs p and q at the position where the target spoke; vLLM returns "
    "neither.",
    "sv-treebox": "vLLM reports each verify step's accepted count, not a tree of guesses, so there is no tree to draw.",
    "rejected-guess": "The stream shows accepted drafted tokens and the target's own token; vLLM does not say which "
    "guess it refused, so no struck-out token is shown.",
    "position-expected": "The expected acceptance by position (1 - TV(p, q)) needs p and q, which vLLM does not return.",
    "theory-speedup": "The predicted speedup needs the cost ratio c, and vLLM does not time drafting and verifying "
    "apart.",
    "theory-rejections": "The predicted rejections (the sum of TV(p, q)) need p and q, which vLLM does not return.",
}
# panels with data, drawn from something other than the StepEvents' token origins, or with a caveat
NOTES: dict[str, str] = {
    "sv-fig-tput": "Times are when each step's tokens reached specviz: vLLM streams several steps in one chunk when "
    "the client lags, so steps can share a time.",
    "sv-fig-accept": "Rejected and discarded counts come from the server's per-step arrays (a step that accepted fewer "
    "than it drafted refused one guess and never checked the rest).",
    "sv-fig-pos": "Acceptance by position comes from this request's own arrays; the server's /metrics counters, read "
    "around the run, count other requests served meanwhile too.",
}


def is_vllm(meta: dict[str, Any] | None) -> bool:
    return bool(meta) and meta.get("source") == "vllm" and isinstance(meta.get("vllm"), dict)


def source_label(meta: dict[str, Any]) -> str:
    """E.g. "vLLM 0.32.0 · ngram, k = 4 · tiny at http://127.0.0.1:8300"."""
    v = meta.get("vllm") or {}
    opts = (meta.get("config") or {}).get("options") or {}
    method = opts.get("method") or "speculation"
    k = opts.get("num_speculative_tokens")
    tested = "" if v.get("version") == v.get("tested_version") else f" (specviz tested {v.get('tested_version')})"
    return f"vLLM {v.get('version', '?')}{tested} · {method}, k = {k} · {v.get('model', '?')} at {v.get('url', '?')}"


def step_counts(steps: list[StepEvent], meta: dict[str, Any]) -> list[dict[str, int]]:
    """Per step: drafted, accepted (emitted), rejected (1 when the step refused a guess) and discarded (drafted after
    the refused one, never checked), from the server's counts: what the acceptance chart draws."""
    out = []
    for s in steps:
        rejected = int(_server_accepted(s, meta) < s.n_drafted)
        out.append(
            {
                "drafted": s.n_drafted,
                "accepted": s.n_accepted,
                "rejected": rejected,
                "discarded": s.n_drafted - s.n_accepted - rejected,
            }
        )
    return out


def _server_accepted(s: StepEvent, meta: dict[str, Any]) -> int:
    """The accepted count the server gave this step (a last step cut by max_tokens emits fewer than it accepted)."""
    counts = (meta.get("vllm") or {}).get("step_accepted") or []
    return counts[s.step] if s.step < len(counts) else s.n_accepted


@dataclass
class VllmView:
    """What the Run tab shows for a vLLM run besides what it draws from StepEvents and the RunSummary."""

    label: str
    placement: str  # how the tokens were split into steps, one sentence
    unavailable: dict[str, str]
    notes: dict[str, str]
    step_counts: list[dict[str, int]]
    positions: list[dict[str, Any]]  # per draft position: reached, accepted, rate (this request's arrays)
    counters: dict[str, Any] | None  # the /metrics counters' difference around the run, with its caveat
    theory: dict[str, float | None]
    extra: dict[str, Any] = field(default_factory=dict)


def run_view(steps: list[StepEvent], summary: RunSummary, meta: dict[str, Any]) -> VllmView:
    """The Run tab's view of a vLLM run (run_vllm's steps, summary and meta, or a trace read back)."""
    v = meta.get("vllm") or {}
    alpha = per_token_alpha(summary) if summary.drafted else None
    theory = {
        "alpha": alpha,
        "tokens_per_step": summary.tokens_per_step,
        "expected_tokens_per_step": expected_tokens_per_step(alpha, summary.gamma) if alpha is not None else None,
        "speedup": summary.speedup,
        "expected_speedup": None,  # needs c
        "rejections": float(summary.rejections),
        "expected_rejections": None,  # needs TV(p, q)
    }
    return VllmView(
        label=source_label(meta),
        placement=str(v.get("placement", "")),
        unavailable=dict(UNAVAILABLE),
        notes=dict(NOTES),
        step_counts=step_counts(steps, meta),
        positions=list(v.get("position_rates") or []),
        counters=v.get("counters"),
        theory=theory,
        extra={"server_metrics": v.get("server_metrics") or {}, "text_placed": v.get("text_placed", 0)},
    )


def render_notes(view: VllmView) -> str:
    """One HTML block for the Run tab: the source's label, how the steps were found, and each panel without data."""
    items = "".join(f"<li>{html.escape(why)}</li>" for why in view.unavailable.values())
    return (
        f'<div class="sv-vllm" data-source="vllm"><p><b>{html.escape(view.label)}</b></p>'
        f"<p>{html.escape(view.placement)}.</p><p>Not shown for this source:</p><ul>{items}</ul></div>"
    )
