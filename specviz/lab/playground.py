"""The toy playground: two small hand-made distributions p (target) and q (draft) over 5 to 10 tokens, no model.
Overlap sum min(p, q) = 1 - TV, each token's acceptance min(1, p/q), the residual norm(max(0, p - q)), and N draws of
the speculative rule (optionally relaxed) whose histogram matches p. Pure functions; errors are ConfigError."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from specviz.core import relaxed
from specviz.core.config import ConfigError
from specviz.core.sampling import tv_distance

MIN_TOKENS, MAX_TOKENS = 5, 10
MAX_DRAWS = 200_000
LABELS = "ABCDEFGHIJ"

# name -> (p, q): teaching cases, each showing one thing
PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "close": ([0.30, 0.25, 0.20, 0.15, 0.10], [0.25, 0.30, 0.20, 0.10, 0.15]),
    "disjoint": ([0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.3, 0.2, 0.2]),
    "q has zeros": ([0.10, 0.30, 0.20, 0.25, 0.15, 0.00], [0.40, 0.00, 0.40, 0.20, 0.00, 0.00]),
    "overconfident draft": ([0.35, 0.25, 0.20, 0.10, 0.05, 0.05], [0.90, 0.02, 0.02, 0.02, 0.02, 0.02]),
    "identical": ([0.4, 0.3, 0.1, 0.1, 0.1], [0.4, 0.3, 0.1, 0.1, 0.1]),
}


def parse_dist(text: str | Sequence[float] | None, name: str) -> list[float]:
    """Weights from '0.3, 0.2 0.5' (commas, spaces or semicolons) or a list; normalised to sum 1.
    ConfigError names the problem: empty, not a number, negative, all zero, fewer than 5 or more than 10 tokens."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise ConfigError(f"{name} is empty: type {MIN_TOKENS} to {MAX_TOKENS} numbers, e.g. 0.4, 0.3, 0.1, 0.1, 0.1")
    parts = [x for x in re.split(r"[,;\s]+", text.strip()) if x] if isinstance(text, str) else list(text)
    values = []
    for raw in parts:
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {raw!r} is not a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"{name}: {raw!r} is not a finite number")
        if v < 0:
            raise ConfigError(f"{name}: probabilities cannot be negative, got {raw}")
        values.append(v)
    if not MIN_TOKENS <= len(values) <= MAX_TOKENS:
        raise ConfigError(f"{name} has {len(values)} numbers: give {MIN_TOKENS} to {MAX_TOKENS}, one per token")
    total = sum(values)
    if total <= 0:
        raise ConfigError(f"{name} is all zeros: at least one token needs some probability")
    return [v / total for v in values]


def parse_pair(p_text: str | Sequence[float], q_text: str | Sequence[float]) -> tuple[list[float], list[float]]:
    p, q = parse_dist(p_text, "p (target)"), parse_dist(q_text, "q (draft)")
    if len(p) != len(q):
        raise ConfigError(f"p has {len(p)} tokens and q has {len(q)}: give both the same number")
    return p, q


def random_pair(n_tokens: int, seed: int, concentration: float = 0.7) -> tuple[list[float], list[float]]:
    """Two Dirichlet draws over n_tokens, rounded to 2 decimals and renormalised; the same seed gives the same pair."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or not MIN_TOKENS <= n_tokens <= MAX_TOKENS:
        raise ConfigError(f"the number of tokens must be from {MIN_TOKENS} to {MAX_TOKENS}, got {n_tokens!r}")
    rng = np.random.default_rng(int(seed))
    out = []
    for _ in range(2):
        w = np.round(rng.dirichlet([concentration] * n_tokens), 2)
        w = w if w.sum() > 0 else np.ones(n_tokens)
        out.append((w / w.sum()).tolist())
    return out[0], out[1]


def format_dist(d: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in d)


@dataclass
class Playground:
    """Everything the page shows for one (p, q, N, seed, relax, family)."""

    labels: list[str]
    p: list[float]
    q: list[float]
    overlap: list[float]  # min(p, q) per token; its sum is 1 - TV
    accept: list[float | None]  # the rule's acceptance of each token if drafted (None where q = 0: never drafted)
    residual: list[float]  # where a correction is drawn from
    output: list[float]  # exact distribution of the emitted token (= p when lossless)
    counts: list[int]  # histogram of N simulated emissions
    n: int
    seed: int
    relax: float
    family: str
    tv: float  # TV(p, q)
    rejection: float  # exact P(reject)
    drift: float  # exact TV(output, p)
    sample_tv: float  # TV(histogram / N, p): sampling noise plus drift
    accepted_draws: int  # how many of the N drafted tokens were kept

    @property
    def acceptance_rate(self) -> float:
        return 1 - self.rejection

    @property
    def noise(self) -> float:
        """The typical TV between an N-draw histogram and its distribution: about sqrt(V / (2 pi N))."""
        return math.sqrt(len(self.p) / (2 * math.pi * self.n))


def simulate(
    p: Sequence[float], q: Sequence[float], n: int, seed: int, relax: float = 0.0, family: str = "linear"
) -> tuple[list[int], int]:
    """N independent one-token rounds of the rule: x ~ q, keep with a(x), else draw from the correction.
    -> (counts of the emitted tokens, number of kept drafts). Vectorised: 10^5 draws in milliseconds."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DRAWS:
        raise ConfigError(f"the number of draws must be a whole number from 1 to {MAX_DRAWS}, got {n!r}")
    pt, qt = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    drafts = torch.multinomial(qt, n, replacement=True, generator=g)  # (n,)
    keep = torch.rand(n, generator=g, dtype=torch.float64) < relaxed.acceptance(pt, qt, relax, family)[drafts]
    fixes = torch.multinomial(relaxed.correction(pt, qt, relax, family), n, replacement=True, generator=g)
    out = torch.where(keep, drafts, fixes)
    return torch.bincount(out, minlength=len(p)).tolist(), int(keep.sum())


def playground(
    p: Sequence[float], q: Sequence[float], n: int = 10_000, seed: int = 0, relax: float = 0.0, family: str = "linear"
) -> Playground:
    """All the numbers for one setting (p and q already parsed and normalised)."""
    if not 0 <= relax <= 1:
        raise ConfigError(f"relax must be from 0 to 1, got {relax}")
    if family not in relaxed.FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(relaxed.FAMILIES)}, got {family!r}")
    pt, qt = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    counts, kept = simulate(p, q, n, seed, relax, family)
    out = relaxed.output_dist(pt, qt, relax, family)
    acc = relaxed.acceptance(pt, qt, relax, family)
    freq = torch.tensor(counts, dtype=torch.float64) / n
    return Playground(
        labels=list(LABELS[: len(p)]),
        p=list(p),
        q=list(q),
        overlap=torch.minimum(pt, qt).tolist(),
        accept=[float(a) if qx > 0 else None for a, qx in zip(acc.tolist(), q)],
        residual=relaxed.correction(pt, qt, relax, family).tolist(),
        output=out.tolist(),
        counts=counts,
        n=n,
        seed=int(seed),
        relax=float(relax),
        family=family,
        tv=float(tv_distance(pt, qt)),
        rejection=float(relaxed.rejection_prob(pt, qt, relax, family)),
        drift=float(relaxed.drift(pt, qt, relax, family)),
        sample_tv=float(tv_distance(freq, pt)),
        accepted_draws=kept,
    )
