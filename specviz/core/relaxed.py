"""Relaxed acceptance rules, the quality/speed knob: exact per-position maths (pure torch) of each family's acceptance,
correction, output distribution, rejection probability and drift TV(output, p). p = target, q = draft, rows (..., V).

One knob lam in [0, 1]: lam = 0 is lossless speculative sampling (accept with m = min(1, p/q), correct from
norm(max(0, p - q))); lam = 1 accepts every guess (the output is q). In between:

  linear     a = m + lam (1 - m), correction norm(max(0, p - q)). The same rule as lossless verification against the
             arithmetic mix (1 - lam) p + lam q: output (1 - lam) p + lam q, rejection (1 - lam) TV, drift lam TV.
  power      a = m^(1 - lam), correction norm(max(0, p - q)): other rejections per lam, same optimal line.
  geometric  lossless verification against the normalised geometric mix p^(1 - lam) q^lam (logit interpolation).

Why linear and power lie ON Yin et al.'s optimal line rejection + drift = TV (their Pareto front, thm 5): take any a
with m <= a <= 1 and the residual as correction, and A = {x: p(x) < q(x)}. The rejection probability is
R = sum_A q (1 - a). On A the output q a is at least p; elsewhere it is q + R (p - q) / TV <= p. So the drift is the
excess on A, sum_A (q a - p) = TV - R. The geometric mix is not between p and q token by token (normalising by
sum p^(1-lam) q^lam <= 1 lifts it), so TV(g, p) + TV(g, q) > TV(p, q): its points lie above the line.
"""

from __future__ import annotations

import torch

from specviz.core.config import RELAX_FAMILIES
from specviz.core.sampling import tv_distance

FAMILIES = RELAX_FAMILIES


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def ratio(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """m = min(1, p/q) for every token (1 where q = 0 and p > 0; such a token is never drafted)."""
    return (p / q.clamp_min(_tiny(q))).clamp(max=1.0)


def residual_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) row by row; p itself where p <= q everywhere (a rejection then has probability 0)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(_tiny(r)), p)


def geometric_mix(p: torch.Tensor, q: torch.Tensor, lam: float) -> torch.Tensor:
    """p^(1 - lam) q^lam, normalised; q where the supports do not meet (nothing to normalise)."""
    g = p.pow(1 - lam) * q.pow(lam)  # 0^0 = 1, so lam = 0 gives p and lam = 1 gives q
    total = g.sum(-1, keepdim=True)
    return torch.where(total > 0, g / total.clamp_min(_tiny(g)), q)


def _check(lam: float, family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown relax family {family!r}; known: {', '.join(FAMILIES)}")
    if not 0 <= lam <= 1:
        raise ValueError(f"relax must be in [0, 1], got {lam}")


def acceptance(p: torch.Tensor, q: torch.Tensor, lam: float, family: str = "linear") -> torch.Tensor:
    """a(x): the probability that a drafted x is kept, for every token x. (..., V) -> (..., V)."""
    _check(lam, family)
    if family == "geometric":
        return ratio(geometric_mix(p, q, lam), q)
    m = ratio(p, q)
    return m + lam * (1 - m) if family == "linear" else m.pow(1 - lam)


def correction(p: torch.Tensor, q: torch.Tensor, lam: float, family: str = "linear") -> torch.Tensor:
    """The distribution the target's token is drawn from after a rejection. (..., V) -> (..., V)."""
    _check(lam, family)
    return residual_rows(geometric_mix(p, q, lam) if family == "geometric" else p, q)


def output_dist(p: torch.Tensor, q: torch.Tensor, lam: float, family: str = "linear") -> torch.Tensor:
    """What one position emits: x ~ q kept with a(x), else a draw from the correction. (..., V) -> (..., V)."""
    kept = q * acceptance(p, q, lam, family)
    rejected = (1 - kept.sum(-1, keepdim=True)).clamp_min(0)
    return kept + rejected * correction(p, q, lam, family)


def rejection_prob(p: torch.Tensor, q: torch.Tensor, lam: float, family: str = "linear") -> torch.Tensor:
    """P(the drafted token is rejected) = 1 - sum_x q(x) a(x). (..., V) -> (...,)."""
    return (1 - (q * acceptance(p, q, lam, family)).sum(-1)).clamp_min(0)


def drift(p: torch.Tensor, q: torch.Tensor, lam: float, family: str = "linear") -> torch.Tensor:
    """TV(output distribution, p): how far the rule moves one position's output off the target. (..., V) -> (...,)."""
    return tv_distance(output_dist(p, q, lam, family), p)
