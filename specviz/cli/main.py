"""The command line: `generate` prints a marked-up speculative generation; `bench` compares strategies with plain
decoding (with --vllm-url, beside a vLLM server); `lab` runs the Theory lab's experiments; `train-heads` trains
Medusa helper heads; `record` records the Run tab's gallery of replays; `serve-vllm` starts local vLLM servers."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

import torch

from specviz.cli import lab as lab_cli
from specviz.cli import record as record_cli
from specviz.cli import train_heads as medusa_cli
from specviz.cli import vllm as vllm_cli
from specviz.cli.bench import cmd_bench
from specviz.cli.common import check_args, gen_args
from specviz.cli.generate import cmd_generate
from specviz.core.config import ConfigError
from specviz.proposers import STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m specviz", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate once and print accepted / rejected / corrected tokens")
    g.add_argument("--prompt", default="Write a Python function that reverses a string.", help="the prompt")
    g.add_argument("--strategy", default="draft", help=f"one of: {', '.join(STRATEGIES)}")
    g.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    g.add_argument("--json", action="store_true", help="print the full event trace as JSON instead")
    gen_args(g)
    b = sub.add_parser("bench", help="run strategies and plain decoding on prompt suites; print a table")
    b.add_argument(
        "--suite",
        default="code",
        help="prompt suites from presets/prompts.yaml, comma-separated, or 'all' (the short ones); 'long': the "
        "long-context suite (presets/long_prompts.yaml)",
    )
    b.add_argument("--prompt", default=None, help="a single prompt instead of a suite")
    b.add_argument("--strategies", default="draft", help="comma-separated strategies, or 'all'")
    b.add_argument("--limit", type=int, default=0, help="at most this many prompts per suite (0 = all)")
    b.add_argument("--json", action="store_true", help="print results as JSON")
    b.add_argument("--save", default=None, metavar="FILE", help="also write the JSON results to FILE")
    b.add_argument(
        "--targets",
        default=None,
        help="instead of the strategy table, check speed targets: comma-separated from "
        "baseline, overhead, attention, assisted, speedups, startup, gpu (needs CUDA), or 'all' (gpu only where CUDA is) "
        "(see specviz/bench/targets.py)",
    )
    b.add_argument("--cold", action="store_true", help="with --targets startup: also time a cold start (minutes)")
    b.add_argument("--ngram-gamma", type=int, default=12, help="with --targets speedups: prompt lookup's draft length")
    gen_args(b)
    vllm_cli.add_bench_args(b)
    lab_cli.add_parser(sub, gen_args)
    medusa_cli.add_parser(sub)
    record_cli.add_parser(sub)
    vllm_cli.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        check_args(args)
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        commands = {
            "generate": cmd_generate,
            "bench": vllm_cli.cmd_bench_engines if getattr(args, "vllm_url", None) else cmd_bench,
            "lab": lab_cli.cmd_lab,
            "train-heads": medusa_cli.cmd_train_heads,
            "record": record_cli.cmd_record,
            "serve-vllm": vllm_cli.cmd_serve,
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


def entry() -> None:
    """The `specviz` console script."""
    sys.exit(main())
