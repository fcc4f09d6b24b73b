"""The strategy bench: every strategy and plain decoding on the same prompts, one row per run, and the totals per
suite (what `specviz bench` prints)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from specviz.backends.loading import ModelPair
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary
from specviz.core.metrics import first_divergence, position_stats, with_plain
from specviz.proposers import build_proposer


def top2_margin(pair: ModelPair, ids: list[int]) -> float:
    """p(top1) - p(top2) of the target after `ids`: tells a numerical near-tie from a bug at a divergence."""
    pair.target.reset()
    probs = torch.softmax(pair.target.forward(ids, keep=1)[-1].float(), -1)
    top = torch.topk(probs, 2).values.tolist()
    return top[0] - top[1]


def bench_rows(
    pair: ModelPair, prompts: list[tuple[str, str, str]], strategies: list[str], cfg: GenConfig
) -> list[dict[str, Any]]:
    """Plain decoding, then each strategy, on every prompt: one row per (prompt, strategy), with the measured speedup
    over that prompt's plain run and, for greedy, whether the output was identical."""
    rows = []
    for i, (suite, name, prompt) in enumerate(prompts, 1):
        ids = pair.codec.encode(prompt)
        kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
        print(f"[{i}/{len(prompts)}] {suite}/{name}: plain", file=sys.stderr, flush=True)
        plain = run(pair.target, None, ids, cfg, **kw).run()
        rows.append(summary_row(suite, name, plain, None, cfg))
        for strat in strategies:
            print(f"[{i}/{len(prompts)}] {suite}/{name}: {strat}", file=sys.stderr, flush=True)
            r = run(pair.target, build_proposer(strat, pair, cfg), ids, cfg, **kw)
            s = with_plain(r.run(), plain)
            row = summary_row(suite, name, s, plain, cfg)
            row["reached"], row["accepted_at"], _ = position_stats(r.steps)
            if row["identical"] is False:
                d = first_divergence(s.output_ids, plain.output_ids)
                row["diverges_at"] = d
                row["top2_margin"] = top2_margin(pair, ids + plain.output_ids[:d]) if d is not None else None
            rows.append(row)
    return rows


def summary_row(suite: str, name: str, s: RunSummary, plain: RunSummary | None, cfg: GenConfig) -> dict[str, Any]:
    return {
        "suite": suite,
        "prompt": name,
        "strategy": s.strategy,
        "tokens": s.new_tokens,
        "steps": s.steps,
        "drafted": s.drafted,
        "accepted": s.accepted,
        "mean_accepted": s.mean_accepted,
        "tokens_per_step": s.tokens_per_step,
        "acceptance": s.acceptance_rate,
        "tokens_per_s": s.tokens_per_s,
        "speedup": s.speedup if plain else 1.0,
        "c": s.cost_ratio,
        "identical": (s.output_ids == plain.output_ids) if plain is not None and cfg.rule == "greedy" else None,
        "wall_s": s.wall_s,
    }


def aggregate(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per (group, strategy): totals over the group's prompts (acceptance = accepted / drafted drafted tokens, so a
    prompt whose drafts were all rejected counts); speedup = total plain time / total strategy time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r[key] if key else "overall", r["strategy"]), []).append(r)
    plain_wall = {(r["suite"], r["prompt"]): r["wall_s"] for r in rows if r["strategy"] == "plain"}
    out = []
    for (g, strat), rs in groups.items():
        tokens, steps, wall = sum(r["tokens"] for r in rs), sum(r["steps"] for r in rs), sum(r["wall_s"] for r in rs)
        accepted, drafted = sum(r["accepted"] for r in rs), sum(r["drafted"] for r in rs)
        base = sum(plain_wall[(r["suite"], r["prompt"])] for r in rs)
        cs = [r["c"] for r in rs if r["c"] is not None]
        width = max((len(r.get("reached", [])) for r in rs), default=0)
        reached = [sum(r["reached"][i] for r in rs if i < len(r.get("reached", []))) for i in range(width)]
        acc_at = [sum(r["accepted_at"][i] for r in rs if i < len(r.get("accepted_at", []))) for i in range(width)]
        ident = [r["identical"] for r in rs if r["identical"] is not None]
        out.append(
            {
                "group": g,
                "strategy": strat,
                "prompts": len(rs),
                "tokens": tokens,
                "steps": steps,
                "mean_accepted": accepted / steps if steps else 0.0,
                "tokens_per_step": tokens / steps if steps else 0.0,
                "nodes_per_step": drafted / steps if steps else 0.0,  # guesses verified per pass (a tree's nodes)
                "acceptance": accepted / drafted if drafted else 0.0,
                "tokens_per_s": tokens / wall if wall else 0.0,
                "speedup": base / wall if wall and strat != "plain" else 1.0,
                "c": sum(cs) / len(cs) if cs else None,
                "identical": all(ident) if ident else None,
                "by_position": [a / n if n else 0.0 for a, n in zip(acc_at, reached)][:8],
            }
        )
    return out
