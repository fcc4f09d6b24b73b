"""Shared test helpers (the one module tests import helpers from; fixtures live in conftest.py): exact output
distributions and chi-square p-values against them, the constructed (p, q) cases of the rule tests, a stand-in for a
loaded ModelPair, and the checks of an EOS that lands inside an accepted draft."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from specviz.backends.lm import LM
from specviz.core.config import GenConfig
from specviz.core.events import DRAFT_ORIGINS, RunSummary, StepEvent, TokenEvent
from specviz.core.sampling import probs_from_logits

ALPHA = 1e-3  # a correct rule fails a chi-square test at this rate; a broken one fails with p-values near 0

# constructed (p, q) rows over 6 tokens for the rule tests: overlapping supports, zeros in q, zeros in p, disjoint
CASES = {
    "overlapping": ([0.1, 0.2, 0.3, 0.15, 0.25, 0.0], [0.3, 0.1, 0.1, 0.2, 0.2, 0.1]),
    "q_has_zeros": ([0.05, 0.15, 0.4, 0.1, 0.2, 0.1], [0.5, 0.0, 0.5, 0.0, 0.0, 0.0]),
    "p_has_zeros": ([0.0, 0.5, 0.0, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]),
    "disjoint": ([0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.3, 0.4, 0.0]),
}


def case(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q) of CASES[name] as float64 tensors."""
    p, q = CASES[name]
    return torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)


# ------------------------------------------------------------- exact distributions and chi-square


def token_pvalue(counts: torch.Tensor, dist: torch.Tensor) -> float:
    """Chi-square p-value of per-token counts against the distribution dist; 0 when a token that dist gives no
    probability (below 1e-12) was emitted at all, which no run of a correct rule can do."""
    support = dist > 1e-12
    if counts[~support].sum() > 0:
        return 0.0
    return float(chisquare(counts[support].numpy(), (dist[support] * counts.sum()).numpy()).pvalue)


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
    """Chi-square p-value of observed two-token outputs against exact, the outputs expecting fewer than 5 pooled into
    one cell; 0 when an output of probability 0 was produced."""
    if any(counts[k] for k in exact if exact[k] == 0):
        return 0.0
    n = sum(counts.values())
    keys = sorted(exact, key=exact.get, reverse=True)
    big = [k for k in keys if exact[k] * n >= 5]
    rest = [k for k in keys if k not in big and exact[k] > 0]  # pooled so that every cell expects at least 5
    obs = [counts[k] for k in big] + ([sum(counts[k] for k in rest)] if rest else [])
    exp = [exact[k] * n for k in big] + ([sum(exact[k] for k in rest) * n] if rest else [])
    return float(chisquare(obs, [e * sum(obs) / sum(exp) for e in exp]).pvalue)


# ------------------------------------------------------------- stand-ins


def fake_pair(target, draft=None, heads=None, **extra) -> types.SimpleNamespace:
    """What build_proposer reads of a loaded ModelPair, without loading a preset."""
    return types.SimpleNamespace(target=target, draft=draft, preset="test", heads=heads, **extra)


# ------------------------------------------------------------- an EOS inside an accepted draft


def eos_candidate(steps: list[StepEvent], output_ids: list[int]) -> tuple[int, int]:
    """From a run without EOS: (a token id, its index in output_ids) such that the token was drafted and accepted,
    its step drafted at least one more token after it, and it does not occur earlier in the output, so that a rerun
    that treats it as EOS must stop inside that draft. The latest such token, so that whole steps come before."""
    found = None
    for s in steps:
        last_pos = max((t.draft_pos for t in s.tokens if t.origin in DRAFT_ORIGINS), default=-1)
        for j, t in enumerate(s.emitted):
            i = s.start + j
            if t.origin == "accepted" and t.draft_pos < last_pos and output_ids.index(t.id) == i:
                found = (t.id, i)
    assert found is not None, "no accepted draft token with more drafted after it: the case cannot be built"
    return found


def assert_eos_ended_inside_a_draft(steps: list[StepEvent], summary: RunSummary, eos: int, want: list[int]) -> None:
    """The run stopped at the EOS, which was a drafted, accepted token of its last step: that step drafted past it,
    nothing after it was emitted (neither the drafted tokens after it nor a target token), stop_reason is 'eos'."""
    assert summary.output_ids == want and want[-1] == eos and eos not in want[:-1]
    assert summary.stop_reason == "eos"
    last = steps[-1]
    assert last.finished and last.stop_reason == "eos"
    assert last.start + len(last.emitted) == len(want)
    hit = last.emitted[-1]
    assert hit.id == eos and hit.origin == "accepted", "the EOS was not an accepted drafted token"
    assert not any(t.origin in ("resampled", "bonus") for t in last.tokens)  # no target token after the EOS
    after = [t for t in last.tokens if t.draft_pos > hit.draft_pos]
    assert after, "the step did not draft past the EOS"
    assert all(t.origin == "not_reached" for t in after)  # drafted after the EOS, never emitted
    assert last.n_drafted > hit.draft_pos + 1


# ---------------------------------------------------------------- hand-made events for the renderers and charts


def tok(text: str, origin: str, pos: int, p: float | None = 0.5, q: float | None = 0.4, tok_id: int = 7) -> TokenEvent:
    drafted = origin in ("accepted", "rejected", "not_reached")
    ratio = min(1.0, p / q) if drafted and p is not None and q else None
    return TokenEvent(tok_id, text, origin, pos, p, q, ratio, 0.1 if drafted else None)  # type: ignore[arg-type]


def step(i: int, tokens: list[TokenEvent], start: int = 0, total: int = 0) -> StepEvent:
    drafted = [t for t in tokens if t.origin in ("accepted", "rejected", "not_reached")]
    acc = sum(t.origin == "accepted" for t in tokens)
    return StepEvent(
        step=i,
        start=start,
        gamma=4,
        tokens=tokens,
        n_drafted=len(drafted),
        n_accepted=acc,
        draft_ms=4.0,
        verify_ms=2.0,
        elapsed_ms=10.0 * (i + 1),
        total_tokens=total,
        total_drafted=4 * (i + 1),
        total_accepted=acc,
    )


def summary(**kw) -> RunSummary:
    """A finished run's summary with round numbers; keywords override any field."""
    base = dict(
        strategy="draft",
        rule="sample",
        gamma=4,
        new_tokens=30,
        steps=10,
        drafted=40,
        accepted=8,
        acceptance_rate=0.2,
        mean_accepted=0.8,
        tokens_per_step=3.0,
        wall_s=1.0,
        prefill_ms=1.0,
        tokens_per_s=30.0,
        draft_ms=100.0,
        verify_ms=200.0,
        cost_ratio=0.5,
        tv_sum=2.5,
        rejections=2,
        stop_reason="max_new_tokens",
        speedup=1.5,
        plain_tokens_per_s=20.0,
    )
    base.update(kw)
    return RunSummary(**base)


# ---------------------------------------------------------------- the app in a subprocess, and pages in chromium

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("SPECVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(args: Sequence[str] = (), env: Mapping[str, str] | None = None, log_name: str = "app.log") -> Iterator[str]:
    """`python app.py --preset tiny-random` plus `args` in a subprocess on a free loopback port, with `env` added;
    yields its URL once it answers. Its log (tests/artifacts/<log_name>) is shown if it dies, and must hold no
    traceback when it is stopped."""
    port = free_port()
    log = ARTIFACTS / log_name
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "app.py", "--preset", "tiny-random", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--threads", "1", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"app.py did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "Traceback" not in log.read_text(), f"the app logged a traceback:\n{log.read_text()[-3000:]}"


def open_page(browser, url: str, dark: bool = False, width: int = 1400, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(url + ("/?__theme=dark" if dark else "/?__theme=light"))
    page.wait_for_selector("#sv-model-status .sv-ok", timeout=120_000)
    return page


def set_number(page, elem_id: str, value: float | int) -> None:
    """Type into a slider's or number field's number input and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def set_prompt(page, text: str) -> None:
    page.locator("#sv-prompt textarea").fill(text)


def choose_rule(page, label: str) -> None:
    page.locator("#sv-rule label", has_text=label).click()


def choose_strategy(page, name: str) -> None:
    """Pick a strategy in the Run tab's dropdown and check the choice took."""
    box = page.locator("#sv-strategy input").first
    box.click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(
        "(v) => document.querySelector('#sv-strategy input').value === v", arg=name, polling=100, timeout=10_000
    )


def wait_status(page, pattern: str, selector: str = "#sv-run-status", timeout: float = 90) -> str:
    """Wait until the status text matches `pattern` (regex); return it."""
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = page.locator(selector).inner_text()
        if re.search(pattern, text, re.I):
            return text
        time.sleep(0.2)
    raise AssertionError(f"status never matched {pattern!r}; last: {text!r}")


def figure_points(page, elem_id: str) -> list[int]:
    """Number of points in each trace of the Plotly figure drawn in #elem_id."""
    return page.evaluate(
        """(id) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                     return el && el.data ? el.data.map(t => (t.y || []).length) : null; }""",
        elem_id,
    )


def wait_figure(page, elem_id: str, traces: int) -> list[int]:
    """Wait until the figure in #elem_id has `traces` traces (Plotly draws asynchronously); return their sizes."""
    page.wait_for_function(
        """([id, n]) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                          return el && el.data && el.data.length === n; }""",
        arg=[elem_id, traces],
    )
    return figure_points(page, elem_id)


def emitted_count(page) -> int:
    return page.locator("#sv-stream .sv-tok:not(.sv-rejected):not(.sv-not-reached)").count()
