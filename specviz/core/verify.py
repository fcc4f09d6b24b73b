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
from specviz.core.sampling import Sampler, draft_probs, residual, sample, tv_distance


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


# ------------------------------------------------------------- several drafts at once (multi-draft)


@dataclass(frozen=True)
class Try:
    """One candidate's token tested at one draft position. accept_prob: the min(1, p'(x)/q(x)) used, p' being p after
    the residual updates of the rejections before it there; tv: TV(p', q), this try's chance of rejection. Both are
    None under greedy."""

    position: int
    row: int
    token: int
    accepted: bool
    accept_prob: float | None = None
    tv: float | None = None


@dataclass(frozen=True)
class MultiVerdict:
    """`verdict` is over candidate `row` (its first n_accepted tokens, then the target's token); `tries` lists every
    test in the order made; `residual` is the distribution a correction was drawn from (None for a bonus, or greedy)."""

    row: int
    verdict: Verdict
    tries: tuple[Try, ...]
    residual: torch.Tensor | None = None

    @property
    def rejections(self) -> int:
        return sum(not t.accepted for t in self.tries)


def multi_draft_verify(cands: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, sampler: Sampler) -> MultiVerdict:
    """Multi-step speculative sampling, the stochastic verification of SpecInfer (Miao et al., "SpecInfer:
    Accelerating Large Language Model Serving with Tree-based Speculative Inference and Verification", ASPLOS 2024),
    for M drafts drawn independently from the draft model.

    cands (M, k); p (M, k+1, V): p[j, i] is the target's distribution after the context and cands[j, :i];
    q (M, k, V): q[j, i] is the distribution cands[j, i] was drawn from (None: one-hot on each guess).
    Position by position, the candidates that agree with the accepted prefix are tried in turn, starting from p' = p:
        accept x_j with probability min(1, p'(x_j) / q_j(x_j)); after a rejection, p' <- norm(max(0, p' - q_j)).
    The first accepted token is kept and only the candidates carrying it stay in play. If every one is rejected, the
    correction is drawn from the last p' (the residual after all of them); if candidates survive all k positions, a
    bonus token is drawn from p at position k.

    Why the output follows p: given what was decided so far (which looked only at earlier positions), the candidates
    in play at a position are independent draws from one q. A test of x ~ q against p' emits x with probability
    min(p'(x), q(x)) and rejects with probability TV(p', q); by induction over the remaining candidates, a rejection
    leads to a draw from norm(max(0, p' - q)), and min(p', q) + TV(p', q) * norm(max(0, p' - q)) = p'. Duplicate
    candidates are tried again rather than merged: a copy of a rejected token is then surely rejected (p' has no
    mass left on it), but its residual update is part of the induction."""
    m, k = cands.shape
    toks = cands.tolist()
    alive = list(range(m))
    tries: list[Try] = []
    for i in range(k):
        p_cur = p[alive[0], i]  # the candidates in play share their prefix, so any of their rows is this p
        hit = None
        for j in alive:
            x = toks[j][i]
            q_j = draft_probs(q[j, i] if q is not None else None, cands[j, i], p.shape[-1], p.dtype)
            ratio = float(p_cur[x]) / max(float(q_j[x]), torch.finfo(q_j.dtype).tiny)
            tv = float(tv_distance(p_cur, q_j))
            ok = float(sampler.uniform(1, p.device)) < ratio
            tries.append(Try(i, j, x, ok, min(1.0, ratio), tv))
            if ok:
                hit = x
                break
            p_cur = residual(p_cur, q_j)
        if hit is None:
            token = int(sample(p_cur, sampler.generator))
            return MultiVerdict(alive[0], Verdict(i, token, "resampled"), tuple(tries), p_cur)
        alive = [j for j in alive if toks[j][i] == hit]
    return MultiVerdict(alive[0], Verdict(k, int(sample(p[alive[0], k], sampler.generator)), "bonus"), tuple(tries))


def multi_greedy_verify(cands: torch.Tensor, target_logits: torch.Tensor) -> MultiVerdict:
    """Greedy over M candidates: at each position the candidates that agree with the accepted prefix are tried in
    turn, and the one equal to the target's argmax is kept; the output is the target's greedy continuation, exactly
    as with one draft. cands (M, k), target_logits (M, k+1, V)."""
    m, k = cands.shape
    best = target_logits.argmax(-1).tolist()  # (M, k+1), one host sync
    toks = cands.tolist()
    alive = list(range(m))
    tries: list[Try] = []
    for i in range(k):
        want = best[alive[0]][i]
        for j in alive:
            tries.append(Try(i, j, toks[j][i], toks[j][i] == want))
            if toks[j][i] == want:
                break
        else:
            return MultiVerdict(alive[0], Verdict(i, want, "resampled"), tuple(tries))
        alive = [j for j in alive if toks[j][i] == want]
    return MultiVerdict(alive[0], Verdict(k, best[alive[0]][k], "bonus"), tuple(tries))
