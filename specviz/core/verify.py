"""The acceptance rules that decide which drafted tokens survive.

Convention, fixed once for the whole project (the paper's names, Leviathan et al. 2023):
    p = the TARGET model's next-token distribution (the one output must follow),
    q = the DRAFT's distribution (the guesser's).
A proposer with no probabilities (n-gram lookup, random guess) is treated as q = one-hot on its guess
(sampling.draft_probs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specviz.core import relaxed
from specviz.core.sampling import Sampler, draft_probs, residual, sample


@dataclass(frozen=True)
class Verdict:
    """n_accepted drafted tokens survive; then the target adds `token`, a correction ('resampled') or a 'bonus'."""

    n_accepted: int
    token: int
    origin: str


def greedy_verify(draft: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Keep guesses while they equal the target's argmax. draft: (k,), target_logits: (k+1, V)."""
    best = target_logits.argmax(-1).tolist()  # (k+1,), one host sync
    guesses = draft.tolist()
    n = 0
    while n < len(guesses) and guesses[n] == best[n]:
        n += 1
    return Verdict(n, best[n], "bonus" if n == len(guesses) else "resampled")


def accept_ratios(draft: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """p(x)/q(x) for each drafted x (q = 1 when the proposer gave no q). draft (k,), p (>=k, V), q (k, V) -> (k,)."""
    k = draft.shape[0]
    idx = torch.arange(k, device=p.device)
    px = p[idx, draft]
    if q is None:
        return px
    return px / q[idx, draft].clamp_min(torch.finfo(q.dtype).tiny)


def speculative_verify(draft: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, sampler: Sampler) -> Verdict:
    """Speculative sampling: accept x with probability min(1, p(x)/q(x)); at the first rejection draw
    from norm(max(0, p - q)); if all pass, draw a bonus token from p. draft (k,), p (k+1, V), q (k, V) or None."""
    k = draft.shape[0]
    n = k
    if k:
        u = sampler.uniform(k, p.device)  # always k draws, so the generator's stream is reproducible
        rejected = (u >= accept_ratios(draft, p, q)).tolist()
        n = rejected.index(True) if True in rejected else k
    if n == k:
        return Verdict(k, int(sample(p[k], sampler.generator)), "bonus")
    q_n = draft_probs(q[n] if q is not None else None, draft[n], p.shape[-1], p.dtype)
    return Verdict(n, int(sample(residual(p[n], q_n), sampler.generator)), "resampled")


def relaxed_verify(
    draft: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, sampler: Sampler, lam: float, family: str = "linear"
) -> Verdict:
    """The relaxed rule of specviz/core/relaxed.py: accept x with probability a_lam(x), at the first rejection draw from
    the family's correction, a bonus token from p if all pass. lam = 0 IS speculative_verify (same random draws).
    draft (k,), p (k+1, V), q (k, V) or None (one-hot on each guess)."""
    if lam == 0:
        return speculative_verify(draft, p, q, sampler)
    k = draft.shape[0]
    rows = draft_probs(q, draft, p.shape[-1], p.dtype).to(p.dtype)  # (k, V)
    n = k
    if k:
        u = sampler.uniform(k, p.device)  # k draws, as the lossless rule takes
        a = relaxed.acceptance(p[:k], rows, lam, family)[torch.arange(k, device=p.device), draft]  # (k,)
        rejected = (u >= a).tolist()
        n = rejected.index(True) if True in rejected else k
    if n == k:
        return Verdict(k, int(sample(p[k], sampler.generator)), "bonus")
    return Verdict(n, int(sample(relaxed.correction(p[n], rows[n], lam, family), sampler.generator)), "resampled")
