"""Typed, JSON-serialisable records of a run: one TokenEvent per token, one StepEvent per verification step, one RunSummary per run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# Where a token came from. Drafted tokens are accepted, rejected or not reached (after the first
# rejection); the target adds one token per step: a resampled correction or a bonus token.
Origin = Literal["prompt", "accepted", "rejected", "not_reached", "resampled", "bonus"]
DRAFT_ORIGINS = ("accepted", "rejected", "not_reached")
EMITTED_ORIGINS = ("accepted", "resampled", "bonus")


@dataclass(frozen=True)
class TokenEvent:
    """One token of a step. p is the target's probability of it, q the draft's (None: no draft probabilities)."""

    id: int
    text: str
    origin: Origin
    draft_pos: int  # position in this step's draft (0-based); the target's token has pos = n_accepted
    p: float | None = None
    q: float | None = None
    accept_prob: float | None = None  # min(1, p/q) for drafted tokens (q = 1 when the proposer has none); relaxed: a(x)
    tv: float | None = None  # total-variation distance between p and q at this position
    drift: float | None = None  # relaxed rule only (GenConfig.relax > 0): exact TV(the rule's output distribution, p)
    reject_prob: float | None = None  # relaxed rule only: the exact probability that this position rejects

    @property
    def emitted(self) -> bool:
        return self.origin in EMITTED_ORIGINS


@dataclass(frozen=True)
class TreeNode:
    """One guess of a token tree (a step that verified a tree of guesses in one pass). Nodes are listed parents first;
    parent -1 is the tree's root, the context's last token. verdict: "accepted" (on the path the target kept),
    "rejected" (tried by the rule and refused), "not_reached" (below a refused or untried node, never decided).
    p: the target's probability of the token at its parent, q the proposer's (None: no draft probabilities),
    accept_prob: min(1, p/q) at the rule's try (sampling: with the residual after its rejected elder siblings)."""

    id: int
    text: str
    parent: int
    depth: int  # 1 for the root's children
    verdict: str
    p: float | None = None
    q: float | None = None
    accept_prob: float | None = None


@dataclass(frozen=True)
class StepEvent:
    """One verification step: what was drafted, what the target decided, timings and running totals."""

    step: int  # 0-based
    start: int  # number of generated tokens before this step
    gamma: int  # draft length asked of the proposer this step
    tokens: list[TokenEvent]  # drafted tokens in order, then the target's own token (if any)
    n_drafted: int
    n_accepted: int
    draft_ms: float
    verify_ms: float
    elapsed_ms: float  # wall time since the run started (prefill included) when this step ended
    total_tokens: int  # running totals after this step
    total_drafted: int
    total_accepted: int
    finished: bool = False
    stop_reason: str | None = None  # "max_new_tokens" | "eos" | "stopped"
    # with detail_top=N: the top tokens at the position where the target spoke (a rejection, or the bonus):
    # {"position", "token_ids", "tokens", "p", "q" (None without draft probabilities), "residual" (None unless rejected)}
    detail: dict[str, Any] | None = None
    # a tree step only: every node verified in the pass (its `tokens` then hold the accepted path, the tries refused
    # along it, and the target's own token, as for a chain)
    tree: list[TreeNode] | None = None

    @property
    def drafted(self) -> list[TokenEvent]:
        return [t for t in self.tokens if t.origin in DRAFT_ORIGINS]

    @property
    def emitted(self) -> list[TokenEvent]:
        return [t for t in self.tokens if t.emitted]

    @property
    def rejected(self) -> bool:
        """Whether the step refused a guess: a rejected token, or a correction after fewer accepted than drafted (a
        source that does not report the refused guess itself, such as a vLLM server, leaves only that)."""
        if any(t.origin == "rejected" for t in self.tokens):
            return True
        return self.n_accepted < self.n_drafted and any(t.origin == "resampled" for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepEvent:
        d = dict(d)
        d["tokens"] = [TokenEvent(**t) for t in d["tokens"]]
        if d.get("tree") is not None:
            d["tree"] = [TreeNode(**n) for n in d["tree"]]
        return cls(**d)


@dataclass
class RunSummary:
    """Totals of a run. speedup is set only when a plain-decoding run of the same prompt was measured."""

    strategy: str
    rule: str
    gamma: int
    new_tokens: int
    steps: int
    drafted: int
    accepted: int
    acceptance_rate: float  # accepted / drafted
    mean_accepted: float  # accepted drafted tokens per step
    tokens_per_step: float  # tokens emitted per target verification pass (plain = 1.0)
    wall_s: float
    prefill_ms: float
    tokens_per_s: float
    draft_ms: float
    verify_ms: float
    cost_ratio: float | None  # c: ms per draft token / ms per target step, from this run's timings
    tv_sum: float  # sum of TV over reached draft positions = expected rejections (Yin et al. 2024)
    rejections: int
    stop_reason: str
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    plain_tokens_per_s: float | None = None
    speedup: float | None = None
    # V(k)/V(1), measured: this run's ms per verification pass over the plain run's ms per (one-token) pass
    pass_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def trace_to_json(steps: list[StepEvent], summary: RunSummary | None = None, meta: dict | None = None) -> str:
    """The full event trace of a run as one JSON document."""
    return json.dumps(
        {"meta": meta or {}, "steps": [s.to_dict() for s in steps], "summary": summary.to_dict() if summary else None},
        indent=1,
    )


def trace_from_json(text: str) -> tuple[list[StepEvent], RunSummary | None, dict]:
    d = json.loads(text)
    summary = RunSummary.from_dict(d["summary"]) if d.get("summary") else None
    return [StepEvent.from_dict(s) for s in d["steps"]], summary, d.get("meta", {})
