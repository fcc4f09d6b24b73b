"""Prompt lookup (n-gram) proposer: find the longest recent n-gram of the context that appeared earlier and propose the
tokens that followed it. No model call, no probabilities (q = one-hot on each guess).

Saxena 2023 ("prompt lookup decoding"), as in transformers' PromptLookupCandidateGenerator, with three choices of
ours: the MOST RECENT earlier occurrence wins (transformers takes the first); the copy may run on into the text it is
copying (LZ77-style), so a context ending in a loop like "abab" proposes "abab..." for the full draft length; and the
draft length follows how sure the match is. A match whose agreement runs at least `sure` tokens back (the copy is on
track) drafts the full gamma; a shorter one drafts at most 2 tokens. On our CPU kernel a 3-token pass costs what a
1-token pass costs, so unsure guesses come free; a 9-token pass costs about 1.6x one.
"""

from __future__ import annotations

from collections.abc import Sequence

from specviz.core.proposal import Proposal, Proposer
from specviz.core.sampling import Sampler

SURE = 4  # default: tokens of agreement before a match drafts the full gamma


def find_match(ctx: Sequence[int], max_n: int, min_n: int) -> tuple[int, int] | None:
    """(start, n) of the most recent earlier occurrence of the longest suffix n-gram of ctx, max_n >= n >= min_n,
    that has at least one token after it; None when no suffix of those sizes occurred before."""
    ctx = list(ctx)
    size = len(ctx)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = ctx[size - n :]
        last = suffix[-1]
        for start in range(size - n - 1, -1, -1):  # start + n <= size - 1: a token follows the occurrence
            if ctx[start + n - 1] == last and ctx[start : start + n] == suffix:
                return start, n
    return None


def match_extent(ctx: Sequence[int], start: int, n: int, cap: int = 64) -> int:
    """How many tokens the match at ctx[start : start + n] agrees with the end of ctx, counting back past the n-gram
    (n at least, at most cap)."""
    e, size = n, len(ctx)
    while e < cap and start - (e - n) - 1 >= 0 and ctx[start - (e - n) - 1] == ctx[size - e - 1]:
        e += 1
    return e


def find_candidates(ctx: Sequence[int], max_n: int, min_n: int, k: int, sure: int = 0) -> list[int]:
    """Up to k tokens that followed the longest (most recent) earlier match of a suffix n-gram; [] when none. With
    sure > 0, at most 2 tokens unless the match agrees with at least `sure` tokens before the end of ctx."""
    match = find_match(ctx, max_n, min_n)
    if match is None or k <= 0:
        return []
    start, n = match
    if sure and match_extent(ctx, start, n, sure) < sure:
        k = min(k, 2)
    src = list(ctx)
    out: list[int] = []
    for j in range(k):
        pos = start + n + j  # < len(ctx) + j, so a position past the end copies a token proposed just before
        out.append(src[pos] if pos < len(src) else out[pos - len(src)])
    return out


class NgramProposer(Proposer):
    """Proposes find_candidates(ctx, max_n, min_n, gamma, sure); an empty proposal (plain step) when nothing matches."""

    name = "ngram"

    def __init__(self, gamma: int = 4, max_n: int = 3, min_n: int = 1, sure: int = SURE) -> None:
        super().__init__(gamma)
        self.max_n, self.min_n, self.sure = max_n, min_n, sure

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        return Proposal(find_candidates(ctx, self.max_n, self.min_n, min(self.next_gamma(), limit), self.sure))
