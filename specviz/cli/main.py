"""Command line: `generate` prints a marked-up speculative generation; `bench` compares strategies with plain decoding;
`lab` runs the Theory lab's experiments; `train-heads` trains Medusa helper heads."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from specviz.backends.loading import ModelPair, load_pair
from specviz.cli import lab as lab_cli
from specviz.cli import train_heads as medusa_cli
from specviz.core.config import RELAX_FAMILIES, ConfigError, GenConfig, check_prompt
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import first_divergence, position_stats, with_plain
from specviz.core.presets import default_preset, suite_prompts
from specviz.proposers import STRATEGIES, build_proposer

ANSI = {"accepted": "\033[32m", "rejected": "\033[9;31m", "resampled": "\033[1;33m", "bonus": "\033[4;36m"}
PLAIN_MARKS = {"accepted": ("", ""), "rejected": ("[-", "-]"), "resampled": ("{+", "+}"), "bonus": ("", "")}
RESET = "\033[0m"


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="model pair from specviz/presets/models.yaml (default: the first)")
    p.add_argument("--gamma", type=int, default=4, help="draft length (1..32)")
    p.add_argument("--rule", choices=["greedy", "sample"], default="greedy", help="verification rule")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (rule 'sample')")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relax", type=float, default=0.0, help="relaxed acceptance, 0 (lossless) to 1; rule 'sample' only")
    p.add_argument("--relax-family", default="linear", choices=RELAX_FAMILIES, help="the relaxed rule's family")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option (repeatable), e.g. ngram_max=3",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m specviz", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate once and print accepted / rejected / corrected tokens")
    g.add_argument("--prompt", default="Write a Python function that reverses a string.", help="the prompt")
    g.add_argument("--strategy", default="draft", help=f"one of: {', '.join(STRATEGIES)}")
    g.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    g.add_argument("--json", action="store_true", help="print the full event trace as JSON instead")
    _gen_args(g)
    b = sub.add_parser("bench", help="run strategies and plain decoding on prompt suites; print a table")
    b.add_argument("--suite", default="code", help="prompt suites from presets/prompts.yaml, comma-separated, or 'all'")
    b.add_argument("--prompt", default=None, help="a single prompt instead of a suite")
    b.add_argument("--strategies", default="draft", help="comma-separated strategies, or 'all'")
    b.add_argument("--limit", type=int, default=0, help="at most this many prompts per suite (0 = all)")
    b.add_argument("--json", action="store_true", help="print results as JSON")
    b.add_argument("--save", default=None, metavar="FILE", help="also write the JSON results to FILE")
    b.add_argument(
        "--targets",
        default=None,
        help="instead of the strategy table, check speed targets: comma-separated from "
        "baseline, overhead, assisted, speedups, startup, gpu (needs CUDA), or 'all' (gpu only where CUDA is) "
        "(see specviz/targets.py)",
    )
    b.add_argument("--cold", action="store_true", help="with --targets startup: also time a cold start (minutes)")
    b.add_argument("--ngram-gamma", type=int, default=12, help="with --targets speedups: prompt lookup's draft length")
    _gen_args(b)
    lab_cli.add_parser(sub, _gen_args)
    medusa_cli.add_parser(sub)
    return ap


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--option needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def config_from(args: argparse.Namespace) -> GenConfig:
    return GenConfig(
        gamma=args.gamma,
        rule=args.rule,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        relax=args.relax,
        relax_family=args.relax_family,
        options=parse_options(args.option),
    ).validated()


def load(args: argparse.Namespace) -> ModelPair:
    last = [0.0]

    def progress(frac: float, msg: str) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or frac >= 1:
            last[0] = now
            print(f"[{frac:4.0%}] {msg}", file=sys.stderr, flush=True)

    return load_pair(args.preset or default_preset(), device=args.device, progress=progress)


def marked(steps: Sequence[StepEvent], color: bool) -> str:
    """The generation with each token marked by origin: ANSI styles on a terminal, plain marks when piped."""
    out = []
    for s in steps:
        for t in s.tokens:
            if t.origin == "not_reached":
                continue
            if color:
                out.append(f"{ANSI[t.origin]}{t.text}{RESET}")
            else:
                a, b = PLAIN_MARKS[t.origin]
                out.append(f"{a}{t.text}{b}")
    return "".join(out)


def legend(color: bool) -> str:
    if color:
        return " ".join(f"{ANSI[o]}{o}{RESET}" for o in ANSI)
    return "marks: [-rejected draft-]  {+target's correction+}  (accepted and bonus tokens unmarked)"


def cmd_generate(args: argparse.Namespace, out: TextIO) -> int:
    prompt = check_prompt(args.prompt)
    cfg = config_from(args)
    pair = load(args)
    ids = pair.codec.encode(prompt)
    spec = run(
        pair.target,
        build_proposer(args.strategy, pair, cfg),
        ids,
        cfg,
        eos_ids=pair.codec.eos_ids,
        piece=pair.codec.piece,
    )
    steps = list(spec)
    summary = spec.summary
    assert summary is not None
    if args.json:
        from specviz.core.events import trace_to_json

        out.write(
            trace_to_json(steps, summary, {"prompt": prompt, "preset": pair.preset, "config": cfg.to_dict()}) + "\n"
        )
        return 0
    color = args.color == "always" or (args.color == "auto" and out.isatty() and "NO_COLOR" not in os.environ)
    out.write(marked(steps, color) + "\n")
    print(legend(color), file=sys.stderr)
    print(
        f"{summary.new_tokens} tokens in {summary.steps} target passes ({summary.tokens_per_step:.2f} per pass), "
        f"acceptance {summary.acceptance_rate:.0%}, {summary.tokens_per_s:.2f} tokens/s, stop: {summary.stop_reason}",
        file=sys.stderr,
    )
    return 0


def top2_margin(pair: ModelPair, ids: list[int]) -> float:
    """p(top1) - p(top2) of the target after `ids`: tells a numerical near-tie from a bug at a divergence."""
    pair.target.reset()
    probs = torch.softmax(pair.target.forward(ids, keep=1)[-1].float(), -1)
    top = torch.topk(probs, 2).values.tolist()
    return top[0] - top[1]


def bench_rows(
    pair: ModelPair, prompts: list[tuple[str, str, str]], strategies: list[str], cfg: GenConfig
) -> list[dict[str, Any]]:
    rows = []
    for i, (suite, name, prompt) in enumerate(prompts, 1):
        ids = pair.codec.encode(prompt)
        kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
        print(f"[{i}/{len(prompts)}] {suite}/{name}: plain", file=sys.stderr, flush=True)
        plain = run(pair.target, None, ids, cfg, **kw).run()
        rows.append(_row(suite, name, plain, None, cfg))
        for strat in strategies:
            print(f"[{i}/{len(prompts)}] {suite}/{name}: {strat}", file=sys.stderr, flush=True)
            r = run(pair.target, build_proposer(strat, pair, cfg), ids, cfg, **kw)
            s = with_plain(r.run(), plain)
            row = _row(suite, name, s, plain, cfg)
            row["reached"], row["accepted_at"], _ = position_stats(r.steps)
            if row["identical"] is False:
                d = first_divergence(s.output_ids, plain.output_ids)
                row["diverges_at"] = d
                row["top2_margin"] = top2_margin(pair, ids + plain.output_ids[:d]) if d is not None else None
            rows.append(row)
    return rows


def _row(suite: str, name: str, s: RunSummary, plain: RunSummary | None, cfg: GenConfig) -> dict[str, Any]:
    return {
        "suite": suite,
        "prompt": name,
        "strategy": s.strategy,
        "tokens": s.new_tokens,
        "steps": s.steps,
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
    """Per (group, strategy): token-weighted rates; speedup = total plain time / total strategy time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r[key] if key else "overall", r["strategy"]), []).append(r)
    plain_wall = {(r["suite"], r["prompt"]): r["wall_s"] for r in rows if r["strategy"] == "plain"}
    out = []
    for (g, strat), rs in groups.items():
        tokens, steps, wall = sum(r["tokens"] for r in rs), sum(r["steps"] for r in rs), sum(r["wall_s"] for r in rs)
        drafted_acc = [(r["acceptance"], r["steps"] * r["mean_accepted"]) for r in rs]
        accepted = sum(a for _, a in drafted_acc)
        drafted = sum(a / acc for acc, a in drafted_acc if acc > 0)
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
                "acceptance": accepted / drafted if drafted else 0.0,
                "tokens_per_s": tokens / wall if wall else 0.0,
                "speedup": base / wall if wall and strat != "plain" else 1.0,
                "c": sum(cs) / len(cs) if cs else None,
                "identical": all(ident) if ident else None,
                "by_position": [a / n if n else 0.0 for a, n in zip(acc_at, reached)][:8],
            }
        )
    return out


def _fmt(col: str, fmt: str, value: Any) -> str:
    if col == "by_position":  # acceptance at draft positions 1, 2, ... (medusa: heads 1, 2, ...), in percent
        return " ".join(f"{v:.0%}" for v in value)
    return fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("group", "{}"),
        ("strategy", "{}"),
        ("prompts", "{}"),
        ("tokens", "{}"),
        ("steps", "{}"),
        ("mean_accepted", "{:.2f}"),
        ("tokens_per_step", "{:.2f}"),
        ("acceptance", "{:.1%}"),
        ("tokens_per_s", "{:.2f}"),
        ("speedup", "{:.2f}x"),
        ("c", "{:.2f}"),
        ("identical", "{}"),
        ("by_position", "{}"),
    ]
    cells = [[("-" if not r.get(c) and r.get(c) != 0 else _fmt(c, f, r[c])) for c, f in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, (c, _) in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line([c for c, _ in cols]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]
    )


def cmd_targets(args: argparse.Namespace, out: TextIO) -> int:
    """bench --targets: each chosen speed target measured as a ratio in this one run, with whether it holds."""
    from specviz.bench import targets as tg

    cfg = config_from(args)
    names = tg.chosen(args.targets)
    bad = [t for t in names if t not in tg.TARGETS]
    if bad:
        raise ConfigError(f"unknown target {bad[0]!r}; known: {', '.join(tg.TARGETS)}, all")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    preset = args.preset or default_preset()
    rows: list[tg.TargetRow] = []
    if "startup" in names:  # first, before this process holds a pair in memory
        rows += tg.check_startup(preset, args.cold, log)
    details, report = "", None
    if "gpu" in names:  # its own pair: random weights of the default pair's shapes, on CUDA
        from specviz.bench.gpu import gpu_report

        report = gpu_report(args.max_new_tokens, gamma=cfg.gamma, log=log, budget_s=330)
        rows += tg.check_gpu(report)
        details = "\n" + tg.format_gpu_details(report) + "\n"
    measured = [t for t in names if t not in ("startup", "gpu")]
    pair = load(args) if measured else None
    if pair is not None:
        ids = pair.codec.encode(suite_prompts(args.suite)[0][2])
        tg._warm(pair, ids)
    suite = args.suite if args.suite != "all" else "code"
    for name in measured:
        if name == "baseline":
            rows.append(tg.check_baseline(pair, cfg, suite, args.limit, log))
        elif name == "overhead":
            rows.append(tg.check_overhead(pair, cfg, suite, args.limit, "draft", log))
        elif name == "assisted":
            rows += tg.check_assisted(pair, cfg, suite, args.limit, log)
        elif name == "speedups":
            rows += tg.check_speedups(pair, cfg, args.limit, args.ngram_gamma, log)
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


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        commands = {
            "generate": cmd_generate,
            "bench": cmd_bench,
            "lab": lab_cli.cmd_lab,
            "train-heads": medusa_cli.cmd_train_heads,
        }
        return commands[args.cmd](args, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the CLI never dies with a bare traceback unless asked
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1
