"""vLLM rows for the strategy bench: a server's speculation and its configuration without, on the same prompts as our
engine's strategies, with the same columns (tokens per pass, acceptance, speedup), each row labelled with its engine
and version; each run's trace can be saved in specviz's trace format."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import specviz
from specviz.backends.vllm_client import VllmRun, run_vllm, vllm_trace_json, warm_up
from specviz.bench.suite import aggregate, summary_row
from specviz.core.config import GenConfig
from specviz.core.events import RunSummary

PLAIN = "vllm-plain"  # the baseline's strategy name: apart from our engine's "plain", whose times it must not mix with
OUR_ENGINE = f"specviz {specviz.__version__}"


def vllm_rows(
    prompts: list[tuple[str, str, str]],
    url: str,
    model: str | None,
    baseline_url: str | None,
    baseline_model: str | None,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    chat: bool = False,
    method: str | None = None,
    ngram: tuple[int, int] | None = None,
    traces: Path | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> list[dict[str, Any]]:
    """Per prompt: the baseline row (the configuration without speculation) and the speculative row, whose speedup is
    measured against it. Both servers answer one warm-up request first. traces: a folder for each run's trace."""
    warm_up(url, model, chat)
    if baseline_url or baseline_model:
        warm_up(baseline_url or url, baseline_model, chat)
    rows = []
    for i, (suite, name, prompt) in enumerate(prompts, 1):
        log(f"[{i}/{len(prompts)}] {suite}/{name}: vLLM at {url}")
        run = run_vllm(url, model, prompt, max_tokens, temperature, seed, chat=chat, baseline_url=baseline_url,
                       baseline_model=baseline_model, method=method, ngram=ngram)  # fmt: skip
        rows += run_rows(suite, name, run)
        if traces is not None:
            traces.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^\w.-]", "_", f"{suite}-{name}-{run.summary.strategy}")
            (traces / f"{slug}.json").write_text(vllm_trace_json(run))
    return rows


def run_rows(suite: str, name: str, run: VllmRun) -> list[dict[str, Any]]:
    """The bench rows of one run: its baseline's (when it had one), then its own, labelled with vLLM's version."""
    v = run.meta["vllm"]
    cfg = GenConfig(rule=run.summary.rule, temperature=1.0)
    plain = RunSummary.from_dict(run.meta["plain_summary"]) if run.meta.get("plain_summary") else None
    engine = f"vLLM {v['version']}"
    out = []
    if plain is not None:
        plain.strategy = PLAIN
        out.append(summary_row(suite, name, plain, None, cfg) | {"engine": engine, "c": None})
    row = summary_row(suite, name, run.summary, plain, cfg) | {"engine": engine, "c": None}
    if plain is None:
        row["speedup"] = None
    row["reached"] = [p["reached"] for p in v["position_rates"]]
    row["accepted_at"] = [p["accepted"] for p in v["position_rates"]]
    out.append(row)
    return out


def aggregate_engines(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """aggregate() per engine, each total row labelled with its engine: our engine's speedups against its plain runs,
    vLLM's against its baseline server's (none without one)."""
    out = []
    for engine in dict.fromkeys(r.get("engine", OUR_ENGINE) for r in rows):
        mine = [r for r in rows if r.get("engine", OUR_ENGINE) == engine]
        if engine == OUR_ENGINE:
            out += [{"engine": engine} | a for a in aggregate(mine, key)]
            continue
        # aggregate() times speedups against the rows named "plain"; without a baseline, stand-ins of no time
        base = [r | {"strategy": "plain"} for r in mine if r["strategy"] == PLAIN]
        stand_in = not base
        if stand_in:
            base = [r | {"strategy": "plain", "wall_s": 0.0} for r in mine]
        for a in aggregate([r for r in mine if r["strategy"] != PLAIN] + base, key):
            if a["strategy"] == "plain":
                if stand_in:
                    continue
                a["strategy"] = PLAIN
            out.append({"engine": engine} | a | {"c": None} | ({"speedup": None} if stand_in else {}))
    return out
