"""Pure torch sampling: logits -> processed probabilities (temperature, top-k, top-p), draws with an explicit generator, the residual distribution."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside top-k and the top-p nucleus with -inf. logits: (..., V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def probs_from_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a sampler draws from; applied identically to target (p) and draft (q). (..., V) -> (..., V)."""
    t = temperature if temperature > 0 else 1.0
    return torch.softmax(filter_logits(at_least_fp32(logits) / t, top_k, top_p), dim=-1)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row. probs: (..., V) -> (...,) long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): where the correction after a rejection is drawn from. (V,) -> (V,).
    When p == q (no mass left; a rejection then has probability 0) fall back to p."""
    r = torch.clamp(p - q, min=0)
    total = r.sum()
    return r / total if total > 0 else p


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance 0.5 * sum |p - q| over the last axis."""
    return 0.5 * (p - q).abs().sum(-1)


class Sampler:
    """The run's sampling settings and its one seeded generator, shared by the draft and the verifier."""

    def __init__(
        self, rule: str, temperature: float, top_k: int, top_p: float, seed: int, device: torch.device | str = "cpu"
    ):
        self.greedy = rule == "greedy"
        # greedy decisions use argmax; the probabilities shown (and TV) are at temperature 1 then
        self.temperature = 1.0 if self.greedy else temperature
        self.top_k, self.top_p = top_k, top_p
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p)

    def pick(self, probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The draft's choice: argmax of the logits when greedy, else a draw from probs."""
        return logits.argmax(-1) if self.greedy else sample(probs, self.generator)

    def uniform(self, n: int, device: torch.device | str) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=device)


def draft_probs(q: torch.Tensor | None, draft: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """The draft distribution q of drafted tokens `draft` (any shape S): the proposer's own q (S, V) when it gave one;
    for a proposer with no probabilities (prompt lookup, random guess) a one-hot on each guess, so that the lossless
    rule becomes "keep the guess with probability p(x)". This is the one place where that one-hot is built; code that
    needs only q(x) of the guess itself uses q(x) = 1 directly."""
    if q is not None:
        return q
    return torch.nn.functional.one_hot(draft, vocab).to(dtype)
