"""`specviz bench`: the strategy table over prompt suites, or with --targets the speed targets, each a ratio measured
in this one run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from specviz.bench import targets as tg
from specviz.bench.gpu import check_gpu, format_gpu_details, gpu_report
from specviz.bench.llamacpp import check_llamacpp
from specviz.bench.startup import check_startup
from specviz.bench.suite import aggregate, bench_rows
from specviz.bench.tables import format_table
from specviz.cli.common import config_from, load
from specviz.core.config import ConfigError, check_prompt
from specviz.core.presets import default_preset, suite_prompts
from specviz.proposers import STRATEGIES

WARM_UP_TOKENS = 64  # the warm-up's prompt: the first prompt's first tokens (a long suite's prefill takes a minute)


def cmd_targets(args: argparse.Namespace, out: TextIO) -> int:
    """bench --targets: each chosen speed target measured as a ratio in this one run, with whether it holds."""
    cfg = config_from(args)
    names = tg.chosen(args.targets)
    bad = [t for t in names if t not in tg.TARGETS]
    if bad:
        raise ConfigError(f"unknown target {bad[0]!r}; known: {', '.join(tg.TARGETS)}, all")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    preset = args.preset or default_preset()
    rows: list[tg.TargetRow] = []
    if "startup" in names:  # first, before this process holds a pair in memory
        rows += check_startup(preset, args.cold, log)
    details, report = "", None
    if "gpu" in names:  # its own pair: random weights of the default pair's shapes, on CUDA
        report = gpu_report(args.max_new_tokens, gamma=cfg.gamma, log=log, budget_s=330)
        rows += check_gpu(report)
        details = "\n" + format_gpu_details(report) + "\n"
    measured = [t for t in names if t not in ("startup", "gpu")]
    pair = load(args) if measured else None
    if pair is not None:
        ids = pair.codec.encode(suite_prompts(args.suite)[0][2])
        tg.warm_up(pair, ids[:WARM_UP_TOKENS])
    suite = args.suite if args.suite != "all" else "code"
    for name in measured:
        if name == "baseline":
            rows.append(tg.check_baseline(pair, cfg, suite, args.limit, log))
        elif name == "overhead":
            rows.append(tg.check_overhead(pair, cfg, suite, args.limit, "draft", log))
        elif name == "attention":
            rows += tg.check_attention(pair, cfg, suite, args.limit, log)
        elif name == "assisted":
            rows += tg.check_assisted(pair, cfg, suite, args.limit, log)
        elif name == "speedups":
            rows += tg.check_speedups(pair, cfg, args.limit, args.ngram_gamma, log)
        elif name == "quant":
            rows += tg.check_quant(pair, cfg, suite, args.limit, log)
        elif name == "int8":
            rows += tg.check_int8(pair, cfg, suite, args.limit, log)
        elif name == "llamacpp":
            rows += check_llamacpp(pair, cfg, suite, args.limit, log)
    gpu_only = report is not None and set(names) == {"gpu"}  # its own preset, on its GPU
    meta = {
        "preset": report["preset"] if gpu_only else preset,
        "device": report["device"] if gpu_only else str(pair.device) if pair else "cpu",
        "threads": torch.get_num_threads(),
        "config": cfg.to_dict(),
        "suite": suite,
        "limit": args.limit,
        "machine": f"{os.cpu_count()} cpus",
    }
    title = (
        f"speed targets, preset {preset} on {meta['device']} ({meta['threads']} threads), greedy, gamma "
        f"{cfg.gamma}, {cfg.max_new_tokens} new tokens, suite {suite}\n\n{tg.format_targets(rows)}\n"
    )
    results = {"meta": meta, "targets": [r.to_dict() for r in rows]}
    if details:
        results["gpu"] = report
    if not _emit(args, out, results):
        out.write(title + details)
    return 0


def _emit(args: argparse.Namespace, out: TextIO, results: dict[str, Any]) -> bool:
    """Write the JSON results to --save, and to out with --json; True when out got the JSON."""
    text = json.dumps(results, indent=1) + "\n"
    if args.save:
        Path(args.save).write_text(text)
    if args.json:
        out.write(text)
    return bool(args.json)


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    if args.targets:
        return cmd_targets(args, out)
    cfg = config_from(args)
    strategies = (
        [s for s in STRATEGIES if s != "plain"]
        if args.strategies == "all"
        else [s.strip() for s in args.strategies.split(",") if s.strip()]
    )
    for s in strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r}; known: {', '.join(STRATEGIES)}, all")
    strategies = [s for s in strategies if s != "plain"]
    if args.prompt is not None:
        prompts = [("custom", "prompt", check_prompt(args.prompt))]
    else:
        prompts = suite_prompts(args.suite)
        if args.limit:
            prompts = [p for i, p in enumerate(prompts) if sum(q[0] == p[0] for q in prompts[:i]) < args.limit]
    pair = load(args)
    t0 = time.perf_counter()
    rows = bench_rows(pair, prompts, strategies, cfg)
    by_suite, overall = aggregate(rows, "suite"), aggregate(rows, "")
    meta = {
        "preset": pair.preset,
        "device": str(pair.device),
        "dtype": str(pair.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "config": cfg.to_dict(),
        "bench_s": round(time.perf_counter() - t0, 1),
    }
    if not _emit(args, out, {"meta": meta, "per_prompt": rows, "per_suite": by_suite, "overall": overall}):
        out.write(
            f"preset {pair.preset} on {pair.device} ({meta['dtype']}, {meta['threads']} threads), rule {cfg.rule}, "
            f"gamma {cfg.gamma}, {cfg.max_new_tokens} new tokens\n\n"
        )
        out.write(format_table(by_suite + (overall if len(by_suite) > len(overall) else [])) + "\n")
        for r in rows:
            if r.get("diverges_at") is not None:
                out.write(
                    f"note: {r['suite']}/{r['prompt']} {r['strategy']} differs from plain at token {r['diverges_at']}, "
                    f"where the target's top-2 margin is {r['top2_margin']:.2e}\n"
                )
    return 0
