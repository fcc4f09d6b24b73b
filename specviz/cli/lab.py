"""`python -m specviz lab {playground,relaxed,planner,replay,batch}`: the Theory lab's four parts as printed tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from specviz.backends.loading import ModelPair
from specviz.bench.tables import format_rows
from specviz.cli.common import config_from, load
from specviz.core.config import RELAX_FAMILIES, ConfigError, parse_numbers
from specviz.core.presets import suite_prompts
from specviz.core.trace import Trace, read_trace_file

PARTS = ("playground", "relaxed", "planner", "replay", "batch")


def add_parser(sub: Any, gen_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `lab` subcommand; gen_args adds the shared generation flags (preset, gamma, rule, ...)."""
    p = sub.add_parser("lab", help="the Theory lab: check Yin et al. 2024 and Leviathan et al. 2023 on this machine")
    p.add_argument("part", choices=PARTS, help="which experiment")
    p.add_argument("--prompt", default=None, help="the prompt (default: the first code prompt of presets/prompts.yaml)")
    p.add_argument("--p", default=None, help="playground: the target distribution, e.g. '0.3,0.25,0.2,0.15,0.1'")
    p.add_argument("--q", default=None, help="playground: the draft distribution")
    p.add_argument("--case", default="close", help="playground: a preset case when --p/--q are not given")
    p.add_argument("--draws", type=int, default=10_000, help="playground: simulated draws")
    p.add_argument("--lams", default="0,0.25,0.5,0.75,1", help="relaxed: the relax settings")
    p.add_argument("--families", default="linear,geometric", help="relaxed: relax families, comma-separated")
    p.add_argument("--gammas", default="1,2,4,8", help="planner: gammas whose speedup is measured")
    p.add_argument("--ks", type=int, default=16, help="planner/replay: time target passes of k = 1..KS tokens")
    p.add_argument("--repeats", type=int, default=3, help="planner/replay: timing rounds per k")
    p.add_argument("--trace", default=None, help="replay: a greedy event trace (JSON, from generate --json or the app)")
    p.add_argument("--confidence", type=float, default=0.5, help="replay: the confidence stop's threshold")
    p.add_argument("--ms", default="1,2,4,8", help="batch: numbers of drafts per step")
    gen_args(p)


def cmd_lab(args: argparse.Namespace, out: TextIO) -> int:
    if args.part == "playground":
        return _playground(args, out)
    cfg = config_from(args)
    # the lists and the trace are read before any model loads, so a mistake in them costs no load
    lams = parse_numbers(args.lams, "--lams", float, 0, 1) if args.part == "relaxed" else []
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in RELAX_FAMILIES]
    if args.part == "relaxed" and (bad or not families):
        raise ConfigError(f"--families: unknown {bad[0]!r}; known: {', '.join(RELAX_FAMILIES)}" if bad else "--families is empty")
    ms = parse_numbers(args.ms, "--ms", int, 1) if args.part == "batch" else []
    gammas = parse_numbers(args.gammas, "--gammas", int, 1) if args.part == "planner" else []  # replay: plain only
    if args.part == "replay" and args.trace:
        trace = read_trace_file(args.trace, greedy=True)
        return _replay_trace(args, out, load(args), trace)
    prompt = args.prompt or suite_prompts("code")[0][2]
    pair = load(args)
    ids = pair.codec.encode(prompt)
    log = lambda msg, frac=None: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.part == "relaxed":
        from specviz.lab.tradeoff import relaxed_sweep

        rows = relaxed_sweep(
            pair, ids, cfg.with_(rule="sample"), lams, families, progress=log
        )
        out.write(
            format_rows(
                rows,
                [
                    "family",
                    "relax",
                    "steps",
                    "checked",
                    "rejections",
                    "expected_rejections",
                    "tv_sum",
                    "drift_sum",
                    "rel_rejections",
                    "rel_expected",
                    "rel_drift",
                    "tokens_per_step",
                ],
            )
            + "\noptimal line (Yin et al. 2024): rel_rejections + rel_drift = 1 (expected rejections + drift = Σ TV)\n"
        )
        return 0
    if args.part == "batch":
        from specviz.lab.batch import batch_sweep

        rows = batch_sweep(pair, ids, cfg, ms)
        out.write(
            format_rows(
                rows,
                [
                    "M",
                    "steps",
                    "tokens",
                    "tokens_per_step",
                    "tries",
                    "rejections",
                    "corrections",
                    "corrections_per_token",
                    "tv_sum",
                    "wall_s",
                ],
            )
            + "\nrejections = rejected tries; corrections = steps where all M candidates were rejected (a batch "
            "algorithm's rejections in Yin et al. 2024); tv_sum at M = 1 = the expected rejections, Σ TV\n"
        )
        return 0
    from specviz.lab import planner, replay

    costs = planner.measure_costs(pair, ids, range(1, args.ks + 1), args.repeats, progress=log)
    cost_rows = [{"k": k, "ms": ms, "V(k)/V(1)": costs.ratio(k)} for k, ms in zip(costs.ks, costs.target_ms)]
    out.write(format_rows(cost_rows, ["k", "ms", "V(k)/V(1)"]) + "\n")
    c = costs.c
    out.write(f"draft ms per token: {costs.draft_ms}, c = {c}\n\n")
    greedy = cfg.with_(rule="greedy", relax=0.0)
    measured, plain = planner.measure_speedups(pair, ids, greedy, gammas, progress=log)
    alpha = planner.pooled_alpha(measured)
    if args.part == "planner":
        out.write(format_rows(measured, ["gamma", "steps", "tokens_per_step", "alpha", "speedup", "identical"]) + "\n")
        if c is not None:
            curve = planner.speedup_curve(alpha, costs)
            out.write(f"\nalpha = {alpha:.3f} (pooled), c = {c:.3f}: break-even at alpha = c\n")
            out.write(format_rows(curve, ["gamma", "expected_tokens", "classic", "cost_aware", "ratio"]) + "\n")
            out.write(
                f"best gamma: classic {planner.best_gamma(curve, 'classic')}, "
                f"with the measured pass cost {planner.best_gamma(curve, 'cost_aware')}\n"
            )
        return 0
    ag = replay.draft_agreement(pair.draft, ids, plain.output_ids, cfg.top_k, cfg.top_p)
    rows = replay.replay(ag, costs, cfg.gamma, cfg.max_new_tokens, args.confidence)
    out.write(_replay_table(rows))
    return 0


def _replay_table(rows: list[dict[str, Any]]) -> str:
    cols = ["label", "steps", "tokens_per_step", "drafted", "wasted", "predicted_s", "predicted_speedup"]
    return format_rows(rows, cols) + "\n(steps exact under greedy; time and speedup predicted from measured costs)\n"


def _replay_trace(args: argparse.Namespace, out: TextIO, pair: ModelPair, trace: Trace) -> int:
    from specviz.lab import planner, replay

    trace.check_vocab(pair.target.vocab_size)
    conf = trace.config
    ids = pair.codec.encode(trace.prompt)
    log = lambda msg, frac=None: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    costs = planner.measure_costs(pair, ids, range(1, args.ks + 1), args.repeats, progress=log)
    ag = replay.draft_agreement(pair.draft, ids, trace.summary.output_ids, conf.top_k, conf.top_p)
    rows = replay.replay(ag, costs, conf.gamma, conf.max_new_tokens, args.confidence)
    out.write(_replay_table(rows))
    return 0


def _playground(args: argparse.Namespace, out: TextIO) -> int:
    from specviz.lab import playground as pgm

    if args.p is None and args.q is None:
        if args.case not in pgm.PRESETS:
            raise ConfigError(f"unknown case {args.case!r}; known: {', '.join(pgm.PRESETS)}")
        p, q = pgm.PRESETS[args.case]
    else:
        p, q = pgm.parse_pair(args.p, args.q)
    pg = pgm.playground(p, q, args.draws, args.seed, args.relax, args.relax_family)
    rows = [
        {
            "token": lab,
            "p": pg.p[i],
            "q": pg.q[i],
            "min(p,q)": pg.overlap[i],
            "accept if drafted": pg.accept[i],
            "correction": pg.residual[i],
            "draws": pg.counts[i],
            "frequency": pg.counts[i] / pg.n,
        }
        for i, lab in enumerate(pg.labels)
    ]
    out.write(format_rows(rows, list(rows[0])) + "\n")
    out.write(
        f"overlap = {sum(pg.overlap):.4f} = 1 - TV; TV(p, q) = {pg.tv:.4f}; P(reject) = {pg.rejection:.4f}; "
        f"exact drift TV(output, p) = {pg.drift:.4f}; TV(histogram, p) = {pg.sample_tv:.4f} "
        f"(sampling noise about {pg.noise:.4f})\n"
    )
    return 0
