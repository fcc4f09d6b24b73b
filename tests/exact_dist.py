"""Test helpers: a target's exact two-token output distribution, and a chi-square of observed two-token outputs
against it (cells expecting fewer than 5 pooled)."""

from __future__ import annotations

import torch
from scipy.stats import chisquare

from specviz.backends.lm import LM
from specviz.core.config import GenConfig
from specviz.core.sampling import probs_from_logits


def exact_two_token_probs(target: LM, prompt: list[int], cfg: GenConfig) -> dict[tuple[int, int], float]:
    """P(x1, x2) of the target's first two tokens after prompt, under cfg's temperature, top-k and top-p."""

    def next_probs(ids: list[int]) -> torch.Tensor:
        target.reset()
        return probs_from_logits(target.forward(ids)[-1], cfg.temperature, cfg.top_k, cfg.top_p)

    p1 = next_probs(prompt)
    out = {}
    for x1 in range(p1.shape[0]):
        p2 = next_probs(prompt + [x1])
        out.update({(x1, x2): float(p1[x1] * p2[x2]) for x2 in range(p2.shape[0])})
    return out


def two_token_pvalue(counts: dict[tuple[int, int], int], exact: dict[tuple[int, int], float]) -> float:
    """Chi-square p-value of observed counts against exact; outputs with probability 0 must never appear."""
    assert all(counts[k] == 0 for k in exact if exact[k] == 0), "an impossible output was produced"
    n = sum(counts.values())
    keys = sorted(exact, key=exact.get, reverse=True)
    big = [k for k in keys if exact[k] * n >= 5]
    rest = [k for k in keys if k not in big and exact[k] > 0]  # pooled so that every cell expects at least 5
    obs = [counts[k] for k in big] + ([sum(counts[k] for k in rest)] if rest else [])
    exp = [exact[k] * n for k in big] + ([sum(exact[k] for k in rest) * n] if rest else [])
    return chisquare(obs, [e * sum(obs) / sum(exp) for e in exp]).pvalue
