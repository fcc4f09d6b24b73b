"""A vLLM completion turned into specviz's records: its tokens split into verify steps from the per-step arrays of
`metrics.speculative_decoding`, StepEvents without p, q or rejected guesses (vLLM reports none), and a RunSummary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from specviz.core.config import ConfigError
from specviz.core.events import RunSummary, StepEvent, TokenEvent
from specviz.core.metrics import summarize

# proposers that draft at every decode step (drafts stop only at the model's context end), so a run's steps without
# a draft can only come after its last verify step
EVERY_STEP_METHODS = frozenset({"draft_model", "eagle", "eagle3", "medusa", "mtp", "mlp_speculator", "dflash"})
NGRAM_DEFAULT = (5, 5)  # vLLM 0.32.0's prompt_lookup_min / max when neither is given
MAX_NGRAM_SEARCH = 8  # largest prompt_lookup_max tried when the server's n-gram sizes are unknown
SEARCH_BUDGET = 3_000_000  # token comparisons the size search may spend (output tokens x context x sizes)


@dataclass(frozen=True)
class SpecMetrics:
    """`metrics.speculative_decoding` of one response, as vLLM 0.32.0 writes it (an experimental field: every key is
    read defensively). per_step_*: one entry per verify step, only at the server's `detailed` level."""

    num_spec_tokens: int  # the server's num_speculative_tokens, k
    histogram: list[int]  # verify steps by accepted drafted tokens 0..k (the target's own token excluded)
    num_spec_steps: int
    num_draft_tokens: int
    num_accepted: int
    mean_acceptance_length: float  # bonus token included: 1 + accepted / verify steps
    draft_acceptance_rate: float
    per_step_accepted: list[int] | None
    per_step_drafted: list[int] | None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One engine step of a completion: where its tokens start, how many it emitted, what it drafted and accepted
    (as the server counted them: a last step cut by max_tokens or a stop may emit fewer than accepted + 1)."""

    start: int
    n_tokens: int
    drafted: int
    accepted: int
    kind: str  # "prefill" (the first token), "verify" (an entry of the arrays), "plain" (a step without a draft)


@dataclass(frozen=True)
class Layout:
    """The steps of a completion and how their places were found (`how`, one sentence for the screens)."""

    steps: list[Step]
    how: str
    ngram: tuple[int, int] | None = None  # the n-gram sizes whose replay placed the steps without a draft


def parse_spec_metrics(raw: Any) -> SpecMetrics:
    """SpecMetrics from a response's `metrics.speculative_decoding`; ConfigError on a shape this code cannot read."""
    if not isinstance(raw, dict):
        raise ConfigError("the response's metrics.speculative_decoding is not a record")

    def whole(key: str, default: int | None = None) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"metrics.speculative_decoding.{key} must be a whole number, got {str(v)[:40]!r}")
        return v

    def counts(key: str) -> list[int] | None:
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
            raise ConfigError(f"metrics.speculative_decoding.{key} must be a list of whole numbers")
        return list(v)

    k = whole("num_spec_tokens")
    hist = counts("acceptance_histogram") or [0] * (k + 1)
    acc, drafted = counts("per_step_accepted"), counts("per_step_drafted")
    if (acc is None) != (drafted is None) or (acc is not None and drafted is not None and len(acc) != len(drafted)):
        raise ConfigError("metrics.speculative_decoding: per_step_accepted and per_step_drafted differ in length")
    if acc is not None and drafted is not None and any(a > d for a, d in zip(acc, drafted)):
        raise ConfigError("metrics.speculative_decoding: a step accepted more drafted tokens than it drafted")
    steps = whole("num_spec_steps", sum(hist))
    accepted = whole("num_accepted_draft_tokens", sum(j * c for j, c in enumerate(hist)))
    if acc is None and steps == 0:  # 0.32.0 leaves the arrays out when they are empty, at either level
        acc, drafted = [], []
    if acc is not None and (len(acc) != steps or sum(acc) != accepted):
        raise ConfigError(
            f"metrics.speculative_decoding: the per-step arrays ({len(acc)} steps, {sum(acc)} accepted) disagree "
            f"with its totals ({steps} steps, {accepted} accepted)"
        )
    mean = raw.get("mean_acceptance_length")
    rate = raw.get("draft_acceptance_rate")
    return SpecMetrics(
        num_spec_tokens=k,
        histogram=hist,
        num_spec_steps=steps,
        num_draft_tokens=whole("num_draft_tokens", sum(drafted or [])),
        num_accepted=accepted,
        mean_acceptance_length=float(mean) if isinstance(mean, int | float) else 1.0 + accepted / max(1, steps),
        draft_acceptance_rate=float(rate) if isinstance(rate, int | float) else 0.0,
        per_step_accepted=acc,
        per_step_drafted=drafted,
        raw=dict(raw),
    )


# ---------------------------------------------------------------- where the steps fall


def ngram_draft(tokens: Sequence[int], min_n: int, max_n: int, k: int, max_model_len: int) -> list[int]:
    """vLLM 0.32.0's n-gram proposal for a context (v1/spec_decode/ngram_proposer.py,
    _find_longest_matched_ngram_and_propose_tokens, ported line for line): the up to k tokens after the earliest
    occurrence of the longest suffix of length min_n..max_n seen before. Used only to find which steps had a draft."""
    total = len(tokens)
    if total < min_n:
        return []
    k = min(k, max_model_len - total)
    if k <= 0:
        return []
    rev = tokens[::-1]
    lps = [0] * max_n
    longest = position = prev = 0
    i = 1
    while i < total:
        if rev[prev] == rev[i]:
            prev += 1
            if prev >= longest:
                longest, position = prev, i
            if i < max_n:
                lps[i] = prev
            if prev == max_n:
                prev = lps[max_n - 1]
            i += 1
        elif prev != 0:
            prev = lps[prev - 1]
        else:
            i += 1
    if longest < min_n:
        return []
    start = total - 1 - position + longest
    return list(tokens[start : start + min(k, total - start)])


def _walk(
    n_out: int, acc: list[int], drafted: list[int], has_draft: Callable[[int], int | None], check: Any = None
) -> list[Step] | None:
    """The steps when `has_draft(t)` gives the draft length of the decode step that starts at output token t (None:
    no say, the arrays decide while they last); None when the arrays do not fit (entries left over, a length or, with
    `check(t, accepted, n)`, an accepted count that disagrees)."""
    steps, t, i = [Step(0, 1, 0, 0, "prefill")], 1, 0
    while t < n_out:
        want = has_draft(t)
        if i == len(acc):
            if want:  # the replay drafts where the server had no verify step left
                return None
            want = 0
        if want is None or want:
            if want is not None and want != drafted[i]:
                return None  # the replayed draft length is not the server's
            n = min(acc[i] + 1, n_out - t)
            if check is not None and not check(t, acc[i], n):
                return None
            steps.append(Step(t, n, drafted[i], acc[i], "verify"))
            t, i = t + n, i + 1
        else:
            steps.append(Step(t, 1, 0, 0, "plain"))
            t += 1
    return steps if i == len(acc) else None


def layout(
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    spec: SpecMetrics,
    method: str | None = None,
    ngram: tuple[int, int] | None = None,
    max_model_len: int | None = None,
    greedy: bool = False,
) -> Layout:
    """Which output tokens each engine step emitted. vLLM's arrays list the verify steps only: a step with no draft
    (n-gram lookup found no match) leaves no entry, so where such steps fell is found by replaying vLLM's n-gram
    lookup, accepted only when it reproduces every verify step's draft length (and, greedy, its accepted count).
    ConfigError when the places cannot be known."""
    acc, drafted = spec.per_step_accepted, spec.per_step_drafted
    if acc is None or drafted is None:
        raise ConfigError(
            "the server reports speculative decoding only in summary: start it with "
            "--per-request-spec-decode-metrics detailed for the per-step arrays that split the tokens into steps"
        )
    n_out = len(output_ids)
    if n_out == 0:
        raise ConfigError("the server returned no tokens")
    plain = n_out - 1 - sum(a + 1 for a in acc)  # the steps without a draft, fewer when the last step was cut
    if 1 + sum(a + 1 for a in acc[:-1]) + (1 if acc else 0) > n_out:  # a cut last step still emits a token
        raise ConfigError(
            f"the server's arrays account for more steps than its {n_out} tokens allow: this response's shape is "
            "not the one specviz reads (tested with vLLM 0.32.0)"
        )
    every = _walk(n_out, acc, drafted, lambda t: None)
    if plain <= 0 and every is not None:
        return Layout(every, "from the server's per-step arrays: every decode step verified a draft")
    if method in EVERY_STEP_METHODS and every is not None:
        return Layout(
            every,
            f"from the server's per-step arrays ({method} drafts at every step; the steps without "
            "a draft are the last ones, where the context ran out)",
        )
    if method not in (None, "ngram"):
        raise ConfigError(
            f"{plain} of this run's steps had no draft, and vLLM's per-step arrays do not say where they fell; specviz "
            f"can place them for method ngram only (this server's method: {method})"
        )
    context = list(prompt_ids) + list(output_ids)
    limit = max_model_len or len(context) + spec.num_spec_tokens + 1
    p = len(prompt_ids)

    def fits(sizes: tuple[int, int]) -> list[Step] | None:
        def has_draft(t: int) -> int:
            return len(ngram_draft(context[: p + t], sizes[0], sizes[1], spec.num_spec_tokens, limit))

        def greedy_ok(t: int, accepted: int, n: int) -> bool:
            guess = ngram_draft(context[: p + t], sizes[0], sizes[1], spec.num_spec_tokens, limit)
            got = output_ids[t : t + n]
            agree = next((j for j, (a, b) in enumerate(zip(guess, got)) if a != b), min(len(guess), len(got)))
            return agree == accepted if t + n < n_out else agree >= min(accepted, n)

        return _walk(n_out, acc, drafted, has_draft, greedy_ok if greedy else None)

    tried = [ngram] if ngram else [NGRAM_DEFAULT]
    if ngram is None and n_out * len(context) * MAX_NGRAM_SEARCH**2 // 2 <= SEARCH_BUDGET:
        tried += [(lo, hi) for hi in range(1, MAX_NGRAM_SEARCH + 1) for lo in range(1, hi + 1)]
    found: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for sizes in dict.fromkeys(tried):
        steps = fits(sizes)
        if steps is not None:
            found.setdefault(tuple(s.start for s in steps if s.kind == "verify"), []).append(sizes)
    if len(found) == 1:
        agree = next(iter(found.values()))
        lo, hi = agree[0]
        sizes = f"prompt_lookup_min {lo}, prompt_lookup_max {hi}" + (
            f", and {len(agree) - 1} other sizes that place them alike" if len(agree) > 1 else ""
        )
        return Layout(
            fits((lo, hi)) or [],
            f"{plain} steps had no draft; they were placed by replaying vLLM's n-gram lookup ({sizes}), which "
            "reproduces every verify step's draft length" + (" and accepted count" if greedy else ""),
            (lo, hi),
        )
    why = "no n-gram sizes reproduce" if not found else "several n-gram sizes reproduce, with different places for"
    raise ConfigError(
        f"{plain} of this run's steps had no draft, and vLLM's per-step arrays do not say where they fell; {why} the "
        "server's draft lengths: give the server's speculative config (method and prompt_lookup_min/max)"
    )


# ---------------------------------------------------------------- token texts


def token_pieces(strings: Sequence[str], text: str) -> tuple[list[str], int]:
    """Each token's share of the server's text, concatenating to it exactly. `strings`: each token decoded alone (the
    logprobs' tokens): right for whole characters, wrong for a byte-level token that is part of one (empty or U+FFFD)
    and for special tokens the text skips. A run of such tokens gets the text up to the next token found in place, on
    its last token (as our engine shows a character split over tokens: on the token that completes it).
    -> (pieces, how many tokens were placed that way)"""
    pieces, cursor, fixed, pending = [""] * len(strings), 0, 0, []
    for i, s in enumerate(strings):
        clean = bool(s) and "\ufffd" not in s
        at = cursor if clean and text.startswith(s, cursor) else text.find(s, cursor) if clean and pending else -1
        if at < 0:
            pending.append(i)
            continue
        if pending:
            pieces[pending[-1]] = text[cursor:at]
            fixed += len(pending)
            pending = []
        pieces[i], cursor = s, at + len(s)
    if pending:
        pieces[pending[-1]] = text[cursor:]
        fixed += len(pending)
    elif cursor < len(text):  # text beyond the tokens (never seen): kept, on the last token
        pieces[-1] += text[cursor:] if pieces else ""
    return pieces, fixed


# ---------------------------------------------------------------- specviz's records


def step_events(
    lay: Layout, output_ids: Sequence[int], pieces: Sequence[str], arrivals_ms: Sequence[float], k: int, stop: str
) -> list[StepEvent]:
    """One StepEvent per engine step: accepted drafted tokens, then the target's own token (a correction after a
    rejection, "resampled"; "bonus" when every drafted token was accepted or there was no draft). p, q and the
    rejected guess are not reported by vLLM: None and absent. Timings: elapsed_ms is when the step's last token
    reached specviz (vLLM streams several steps in one chunk when the client lags); draft_ms and verify_ms are 0."""
    events: list[StepEvent] = []
    total = drafted_total = accepted_total = 0
    for n, s in enumerate(lay.steps):
        tokens = []
        for j in range(s.n_tokens):
            pos = s.start + j
            origin = "accepted" if j < s.accepted else ("bonus" if s.accepted == s.drafted else "resampled")
            tokens.append(TokenEvent(int(output_ids[pos]), pieces[pos], origin, j))  # type: ignore[arg-type]
        kept = sum(t.origin == "accepted" for t in tokens)
        total += s.n_tokens
        drafted_total += s.drafted
        accepted_total += kept
        last = n == len(lay.steps) - 1
        events.append(
            StepEvent(
                step=n,
                start=s.start,
                gamma=k,
                tokens=tokens,
                n_drafted=s.drafted,
                n_accepted=kept,
                draft_ms=0.0,
                verify_ms=0.0,
                elapsed_ms=float(arrivals_ms[s.start + s.n_tokens - 1]),
                total_tokens=total,
                total_drafted=drafted_total,
                total_accepted=accepted_total,
                finished=last,
                stop_reason=stop if last else None,
            )
        )
    return events


def run_summary(
    events: list[StepEvent],
    lay: Layout,
    strategy: str,
    rule: str,
    k: int,
    wall_s: float,
    first_ms: float,
    stop: str,
    output_ids: Sequence[int],
    text: str,
) -> RunSummary:
    """The run's totals. rejections: the verify steps that refused a drafted token (one each: the first refused;
    the rest were never checked), a count the arrays give exactly; tv_sum and cost_ratio are unknown (0 and None)."""
    summary = summarize(
        events,
        strategy=strategy,
        rule=rule,
        gamma=k,
        wall_s=wall_s,
        prefill_ms=first_ms,
        stop_reason=stop,
        output_ids=output_ids,
        text=text,
    )
    # the arrays count refusals exactly, though the refused tokens themselves are not reported
    return replace(summary, rejections=sum(s.kind == "verify" and s.accepted < s.drafted for s in lay.steps))


def position_rates(lay: Layout) -> list[dict[str, Any]]:
    """Acceptance by draft position from this request's own arrays: position j was checked in every verify step
    that accepted j tokens and drafted more, and accepted in those that accepted more than j."""
    verify = [s for s in lay.steps if s.kind == "verify"]
    width = max((s.drafted for s in verify), default=0)
    out = []
    for j in range(width):
        reached = sum(s.drafted > j and s.accepted >= j for s in verify)
        accepted = sum(s.accepted > j for s in verify)
        out.append(
            {
                "position": j + 1,
                "reached": reached,
                "accepted": accepted,
                "rate": accepted / reached if reached else None,
            }
        )
    return out
