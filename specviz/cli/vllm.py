"""`specviz serve-vllm`: local vLLM servers (one with speculation, one without) on loopback from a model folder specviz
writes; and `bench --vllm-url`: a vLLM server's rows beside our engine's strategies on the same prompts."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from specviz.backends.vllm_server import (
    METHODS,
    NGRAM_SIZES,
    PRESETS,
    LocalServer,
    ServerSpec,
    model_folders,
    models_dir,
    speculative_config,
    vllm_python,
)
from specviz.bench.suite import bench_rows
from specviz.bench.tables import format_table
from specviz.bench.vllm import aggregate_engines, vllm_rows
from specviz.cli.common import config_from, load
from specviz.core.config import ConfigError, check_prompt
from specviz.core.presets import default_preset, model_preset, suite_prompts
from specviz.proposers import STRATEGIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve-vllm", help="start local vLLM servers (with and without speculation) on 127.0.0.1")
    s.add_argument("--preset", dest="vllm_preset", choices=PRESETS, default="tiny-random", help="the models to serve")
    s.add_argument("--method", choices=METHODS, default="ngram", help="vLLM's proposer")
    s.add_argument("--k", type=int, default=4, help="num_speculative_tokens (1..32)")
    s.add_argument("--port", type=int, default=8300, help="the speculative server's port")
    s.add_argument("--plain-port", type=int, default=8301, help="the server without speculation's port (0: none)")
    s.add_argument("--dtype", default=None, help="vLLM's --dtype (default: float32 for tiny-random, bfloat16 else)")
    s.add_argument("--max-model-len", type=int, default=2048)
    s.add_argument("--kv-cache-gib", type=int, default=None, help="VLLM_CPU_KVCACHE_SPACE (default 1, embedded 4)")
    s.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for each server")
    s.add_argument("--logs", default=None, help="folder for the servers' logs (default: beside the model folders)")
    s.add_argument("--check", action="store_true", help="start, print the URLs and stop (a smoke test)")
    s.add_argument("--debug", action="store_true", help="show tracebacks")


def add_bench_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--vllm-url", default=None, help="also bench a vLLM server with speculation at this URL")
    b.add_argument("--vllm-model", default=None, help="its served model name (default: the only one it serves)")
    b.add_argument("--vllm-plain-url", default=None, help="the configuration without speculation (for the speedup)")
    b.add_argument("--vllm-plain-model", default=None, help="its served model name")
    b.add_argument("--vllm-method", default=None, help="the server's proposer, when known (e.g. ngram, draft_model)")
    b.add_argument("--vllm-ngram", default=None, metavar="MIN,MAX", help="its prompt_lookup_min,max, when known")
    b.add_argument("--vllm-chat", choices=["auto", "yes", "no"], default="auto",
                   help="send prompts as chat messages (auto: as the --preset does)")  # fmt: skip
    b.add_argument("--vllm-only", action="store_true", help="bench the vLLM server alone (no model loads here)")
    b.add_argument("--vllm-traces", default=None, metavar="DIR", help="write each vLLM run's trace (JSON) there")


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Write the model folders, start the servers one after the other, print their URLs, serve until Ctrl-C."""
    python = vllm_python()  # before any folder is written: a missing vLLM says so at once
    _stop_on_signals()
    if not 1 <= args.k <= 32:
        raise ConfigError(f"--k must be between 1 and 32, got {args.k}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    target, draft = model_folders(args.vllm_preset, lambda f, m: log(f"[{f:4.0%}] {m}"))
    dtype = args.dtype or ("float32" if args.vllm_preset == "tiny-random" else "bfloat16")
    kv = args.kv_cache_gib or (1 if args.vllm_preset == "tiny-random" else 4)
    spec = speculative_config(args.method, args.k, draft)
    logs = Path(args.logs) if args.logs else models_dir() / "logs"
    specs = [ServerSpec(target, f"{args.vllm_preset}-{args.method}", args.port, spec, dtype, args.max_model_len, kv)]
    if args.plain_port:
        specs.append(ServerSpec(target, args.vllm_preset, args.plain_port, None, dtype, args.max_model_len, kv))
    servers: list[LocalServer] = []
    try:
        for s in specs:
            log(f"starting vLLM ({python.parent.parent}) on {s.url}: {s.name}; log {logs / (s.name + '.log')}")
            servers.append(LocalServer(s, logs / f"{s.name}.log"))
            took = servers[-1].wait_ready(args.ready_timeout)
            log(f"ready after {took:.0f} s")
        out.write(f"speculative:  {specs[0].url}  model {specs[0].name}  --speculative-config '{json.dumps(spec)}'\n")
        if len(specs) > 1:
            out.write(f"plain:        {specs[1].url}  model {specs[1].name}\n")
            hint = f" --vllm-plain-url {specs[1].url}"
        else:
            hint = ""
        if args.method == "ngram":
            hint += " --vllm-ngram {},{}".format(*NGRAM_SIZES)
        # our tiny-random is another model (over characters): only the embedded pair is the same model on both sides
        hint += " --vllm-only" if args.vllm_preset == "tiny-random" else " --preset qwen-coder-1.5b"
        out.write(
            f"bench:        python -m specviz bench --vllm-url {specs[0].url}{hint} --vllm-method {args.method}\n"
        )
        out.flush()
        if not args.check:
            log("serving; Ctrl-C stops the servers")
            while all(s.proc.poll() is None for s in servers):
                time.sleep(1.0)
            dead = next(s for s in servers if s.proc.poll() is not None)
            raise ConfigError(f"the vLLM server on {dead.url} exited:\n{dead.tail()}")
        return 0
    finally:
        for s in reversed(servers):
            s.stop()


def _stop_on_signals() -> None:
    """SIGTERM (and SIGINT, even where a shell started us with it ignored) end the wait as Ctrl-C does, so the
    servers are stopped on the way out, never left behind."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _ngram(raw: str | None) -> tuple[int, int] | None:
    if raw is None:
        return None
    try:
        lo, hi = (int(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"--vllm-ngram needs MIN,MAX (e.g. 1,3), got {raw!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"--vllm-ngram needs 1 <= MIN <= MAX, got {raw!r}")
    return lo, hi


def cmd_bench_engines(args: argparse.Namespace, out: TextIO) -> int:
    """bench with --vllm-url: our engine's strategies (unless --vllm-only) and the vLLM server on the same prompts,
    one table with an engine column."""
    cfg = config_from(args)
    if args.relax:
        raise ConfigError("--relax has no vLLM counterpart: bench vLLM with the lossless rules")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prompts = (
        [("custom", "prompt", check_prompt(args.prompt))] if args.prompt is not None else suite_prompts(args.suite)
    )
    if args.prompt is None and args.limit:
        prompts = [p for i, p in enumerate(prompts) if sum(q[0] == p[0] for q in prompts[:i]) < args.limit]
    preset = args.preset or default_preset()
    chat = {"yes": True, "no": False}.get(args.vllm_chat, bool(model_preset(preset).get("chat", False)))
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"config": cfg.to_dict(), "vllm_url": args.vllm_url, "chat": chat}
    if not args.vllm_only:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        strategies = [s for s in STRATEGIES if s != "plain"] if args.strategies == "all" else names
        bad = [s for s in strategies if s not in STRATEGIES]
        if bad:
            raise ConfigError(f"unknown strategy {bad[0]!r}; known: {', '.join(STRATEGIES)}, all")
        pair = load(args)
        rows += bench_rows(pair, prompts, [s for s in strategies if s != "plain"], cfg)
        meta |= {"preset": pair.preset, "device": str(pair.device), "threads": torch.get_num_threads()}
    temperature = 0.0 if cfg.rule == "greedy" else cfg.temperature
    rows += vllm_rows(
        prompts, args.vllm_url, args.vllm_model, args.vllm_plain_url, args.vllm_plain_model, cfg.max_new_tokens,
        temperature, cfg.seed, chat, args.vllm_method, _ngram(args.vllm_ngram),
        Path(args.vllm_traces) if args.vllm_traces else None, log,
    )  # fmt: skip
    by_suite, overall = aggregate_engines(rows, "suite"), aggregate_engines(rows, "")
    results = {"meta": meta, "per_prompt": rows, "per_suite": by_suite, "overall": overall}
    text = json.dumps(results, indent=1) + "\n"
    if args.save:
        Path(args.save).write_text(text)
    if args.json:
        out.write(text)
        return 0
    out.write(
        f"engines side by side, rule {cfg.rule}, gamma {cfg.gamma} (ours) / the server's k (vLLM), "
        f"{cfg.max_new_tokens} new tokens; vLLM speedups against {args.vllm_plain_url or args.vllm_plain_model or 'no baseline'}\n\n"
    )
    out.write(format_table(by_suite + (overall if len(by_suite) > len(overall) else [])) + "\n")
    return 0
