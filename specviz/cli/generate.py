"""`specviz generate`: one speculative generation printed with each token marked by origin (or its JSON trace)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from specviz.cli.common import config_from, load
from specviz.core.config import check_prompt
from specviz.core.engine import run
from specviz.core.events import StepEvent, trace_to_json
from specviz.proposers import build_proposer

ANSI = {"accepted": "\033[32m", "rejected": "\033[9;31m", "resampled": "\033[1;33m", "bonus": "\033[4;36m"}
PLAIN_MARKS = {"accepted": ("", ""), "rejected": ("[-", "-]"), "resampled": ("{+", "+}"), "bonus": ("", "")}
RESET = "\033[0m"


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
