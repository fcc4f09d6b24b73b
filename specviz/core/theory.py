"""Theory numbers (Leviathan et al. 2023; Yin et al. 2024): expected tokens per pass and speedup from alpha, gamma and
c, the best gamma, and a run's measured figures set beside its predicted ones."""

from __future__ import annotations

from specviz.core.events import RunSummary


def per_token_alpha(s: RunSummary) -> float:
    """alpha, the chance a reached draft token is accepted: accepted / (accepted + rejected). Drafts after a rejection
    were never checked, so accepted / drafted (the acceptance rate) would understate it."""
    reached = s.accepted + s.rejections
    return s.accepted / reached if reached else 0.0


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Leviathan et al. (2023), eq. 1: E[tokens per step] = (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al. (2023), thm. 3.8: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + 1)


def cost_aware_speedup(alpha: float, gamma: int, c: float, pass_ratio: float) -> float:
    """expected_speedup with the measured cost of a (gamma+1)-token pass, c being a draft token's cost against that
    pass: E[tokens] V(1) / ((gamma c + 1) V(gamma+1)). Leviathan's form assumes pass_ratio = V(k)/V(1) = 1."""
    return expected_speedup(alpha, gamma, c) / pass_ratio


def predicted_speedup(s: RunSummary) -> float | None:
    """A run's predicted speedup: cost-aware where its pass ratio was measured (against a plain run), else Leviathan's
    classic form; None without a measured c."""
    alpha, c = per_token_alpha(s), s.cost_ratio
    if c is None:
        return None
    if s.pass_ratio:
        return cost_aware_speedup(alpha, s.gamma, c, s.pass_ratio)
    return expected_speedup(alpha, s.gamma, c)


def best_gamma(alpha: float, c: float, max_gamma: int = 16) -> int:
    """The draft length that maximises expected_speedup for this alpha and c."""
    return max(range(1, max_gamma + 1), key=lambda g: expected_speedup(alpha, g, c))


def speedup_at_best(alpha: float, c: float, max_gamma: int = 15) -> float:
    """The classic speedup at its best gamma for this alpha and c (the Theory lab's break-even panel)."""
    return expected_speedup(alpha, best_gamma(alpha, c, max_gamma), c)


def theory_numbers(s: RunSummary) -> dict[str, float | None]:
    """Measured next to predicted: tokens per step, speedup (Leviathan et al. 2023, with the measured pass cost where
    known) and rejections (Yin et al. 2024)."""
    alpha, c = per_token_alpha(s), s.cost_ratio
    return {
        "alpha": alpha,
        "c": c,
        "gamma": float(s.gamma),
        "tokens_per_step": s.tokens_per_step,
        "expected_tokens_per_step": expected_tokens_per_step(alpha, s.gamma) if s.drafted else None,
        "speedup": s.speedup,
        "expected_speedup": predicted_speedup(s),
        "pass_ratio": s.pass_ratio,
        "rejections": float(s.rejections),
        "expected_rejections": s.tv_sum,
    }


def why(s: RunSummary) -> str:
    """One plain sentence on why the run was or was not faster."""
    if not s.drafted:
        return "No drafts were made, so this run is plain decoding."
    return why_sentence(per_token_alpha(s), s.cost_ratio, s.gamma, s.speedup, s.pass_ratio)


def why_sentence(
    alpha: float, c: float | None, gamma: int, speedup: float | None, pass_ratio: float | None = None
) -> str:
    """One plain sentence on why a run was or was not faster; c None: drafting was not timed apart (say, a vLLM
    server's run), so no speedup is predicted; pass_ratio: V(k)/V(1) measured, counted in the prediction."""
    if c is None:
        measured = f"; measured {speedup:.2f}x against plain" if speedup is not None else ""
        return (
            f"{alpha:.0%} of guesses were accepted; what a draft step costs was not measured for this run, so theory "
            f"predicts no speedup{measured}."
        )
    if pass_ratio:
        pred = cost_aware_speedup(alpha, gamma, c, pass_ratio)
        head = (
            f"Drafting costs {c:.2f} of a target pass, a pass over the guesses costs {pass_ratio:.2f}x a one-token "
            f"pass and {alpha:.0%} of guesses were accepted, so with gamma={gamma} theory predicts {pred:.2f}x"
        )
    else:
        pred = expected_speedup(alpha, gamma, c)
        head = (
            f"Drafting costs {c:.2f} of a target step and {alpha:.0%} of guesses were accepted, so with gamma={gamma} "
        )
        head += f"theory predicts {pred:.2f}x"
    if speedup is None:
        return head + "."
    verdict = "faster" if speedup > 1.02 else ("no faster" if speedup > 0.98 else "slower")
    tail = f"; measured {speedup:.2f}x ({verdict} than plain)."
    if speedup < 1 and alpha < c:
        tail += " Acceptance is below the cost ratio, the break-even point (alpha = c)."
    if c >= 0.5:  # e.g. the 0.5B draft beside the 1.5B target on a GPU, where every pass is mostly fixed cost
        tail += (
            " A draft that costs half a target step or more leaves little to gain: prompt lookup, layer skip or"
            " helper heads guess for less."
        )
    return head + tail
