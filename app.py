"""Composition root: parse and check flags (a mistake is one line and exit 2, before any model loads), start loading
the offered model pairs in the background, build the Gradio app and launch it. On a Hugging Face Space, which runs
`python app.py` with no flags, $SPECVIZ_ARGS holds them."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import socket
import sys
from functools import partial
from typing import NoReturn

from specviz.backends.cache import cache_dir
from specviz.backends.loading import load_pair
from specviz.backends.spaces import on_space, on_zero_gpu
from specviz.core.config import ConfigError
from specviz.core.presets import default_preset, model_presets
from specviz.ui.exports import KEEP_RUNS, MAX_MB, ExportStore
from specviz.ui.models import JOB_SECONDS, ModelManager
from specviz.ui.page import build_app, launch_kwargs
from specviz.ui.vllm_panel import VllmTarget
from specviz.ui.zerogpu import expose

ZERO_GPU_JOB_SECONDS = 60.0  # a ZeroGPU call holds a GPU that visitors share, out of their daily quota


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit status 2."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked: ports, counts and budgets in range, presets known (and --preset among --presets)."""
    known = list(model_presets())
    p = OneLineParser(prog="app.py", description="specviz: see speculative decoding in the browser")
    p.add_argument("--host", default=None, help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or the first free from 7860)"
    )
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless asked)")
    p.add_argument(
        "--preset",
        default=os.environ.get("SPECVIZ_PRESET") or None,
        choices=known,
        help=f"model pair loaded at start, the visitors' default (default: the first of --presets, else {known[0]}; "
        "tiny-random needs no download)",
    )
    p.add_argument(
        "--presets",
        default=None,
        help="comma-separated presets visitors may pick among, all loaded side by side at start "
        "(default: only --preset)",
    )
    p.add_argument(
        "--job-seconds",
        type=float,
        default=None,
        help=f"time budget of one visitor's job on the models; a job past it is stopped (default: {JOB_SECONDS:g}; "
        f"{ZERO_GPU_JOB_SECONDS:g} on ZeroGPU, where a job holds a shared GPU)",
    )
    p.add_argument("--keep-exports", type=int, default=KEEP_RUNS, help=f"runs whose downloads are kept ({KEEP_RUNS})")
    p.add_argument("--exports-mb", type=float, default=MAX_MB, help=f"disk for all kept downloads, MB ({MAX_MB:g})")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--vllm",
        default=None,
        metavar="URL[#MODEL]",
        help="a vLLM server with speculation that the Run tab's 'Watch a vLLM server' panel sends prompts to "
        "(visitors cannot name others; see docs/vllm.md)",
    )
    p.add_argument(
        "--vllm-plain", default=None, metavar="URL[#MODEL]", help="with --vllm: its baseline without speculation"
    )
    args = p.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.job_seconds is None:
        args.job_seconds = ZERO_GPU_JOB_SECONDS if on_zero_gpu() else JOB_SECONDS
    if not 1 <= args.job_seconds <= 86400:
        p.error(f"--job-seconds must be between 1 and 86400, got {args.job_seconds:g}")
    if args.keep_exports < 1:
        p.error(f"--keep-exports must be at least 1, got {args.keep_exports}")
    if not args.exports_mb > 0:
        p.error(f"--exports-mb must be more than 0, got {args.exports_mb:g}")
    offered = [name.strip() for name in (args.presets or "").split(",") if name.strip()]
    unknown = [name for name in offered if name not in known]
    if unknown:
        p.error(f"unknown preset {unknown[0]!r} in --presets; known presets: {', '.join(known)}")
    if args.presets is not None and not offered:
        p.error("--presets names no preset; give a comma-separated list, e.g. --presets tiny-random")
    args.preset = args.preset or (offered[0] if offered else default_preset())
    if args.preset not in known:  # $SPECVIZ_PRESET is not checked by argparse
        p.error(f"unknown preset {args.preset!r} ($SPECVIZ_PRESET); known presets: {', '.join(known)}")
    if offered and args.preset not in offered:
        p.error(f"--preset {args.preset} is not among --presets ({', '.join(offered)})")
    args.presets = list(dict.fromkeys([args.preset, *offered]))
    if args.vllm_plain and not args.vllm:
        p.error("--vllm-plain is the baseline of a --vllm server: give --vllm too")
    try:
        args.vllm = VllmTarget.parse(args.vllm, args.vllm_plain)
    except ConfigError as e:
        p.error(f"--vllm: {e}")
    return args


def check_port(host: str | None, port: int | None) -> str | None:
    """Why the server could not listen on host:port (in use, not allowed, no such address), or None when it can."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if port is None:
        env = os.environ.get("GRADIO_SERVER_PORT")
        if not env:
            return None  # Gradio takes the first free port from 7860
        if not env.isdigit() or not 1 <= int(env) <= 65535:
            return f"$GRADIO_SERVER_PORT must be a port between 1 and 65535, got {env!r}"
        port = int(env)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot listen on {host!r}: {e.strerror}"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT leftovers are fine
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use: stop what listens there or pick another with --port"
            return f"cannot listen on {host}:{port}: {e.strerror}"
    return None


def fail(message: str) -> NoReturn:
    """A mistake found after parsing: one line on stderr, exit status 2."""
    print(f"app.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def env_args() -> list[str]:
    """The flags in $SPECVIZ_ARGS (how a Space's operator sets them), split like a shell would."""
    try:
        return shlex.split(os.environ.get("SPECVIZ_ARGS", ""))
    except ValueError as e:
        fail(f"$SPECVIZ_ARGS cannot be read as flags: {e}")


def main(argv: list[str] | None = None) -> None:
    """Check the flags ($SPECVIZ_ARGS, then the command line's) and the port, then serve the app (loading the offered
    presets once the server is up)."""
    args = parse_args([*env_args(), *(sys.argv[1:] if argv is None else argv)])
    problem = check_port(args.host, args.port)
    if problem:
        fail(problem)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    manager = ModelManager(
        args.preset, loader=partial(load_pair, device=args.device), allowed=args.presets, job_seconds=args.job_seconds
    )
    if on_space():  # the compiled CPU kernel beside the model cache: where that persists, both survive a restart
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    demo = build_app(manager, exports=ExportStore(keep=args.keep_exports, max_mb=args.exports_mb), vllm=args.vllm)
    # ZeroGPU: each GPU call waits for the loads (a GPU worker forked before a pair is loaded would never see it)
    expose(demo, duration=args.job_seconds + 30, gate=manager.settle)
    demo.queue(max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=True if args.share else None,  # None: Gradio's default (off; GRADIO_SHARE=True turns it on)
        prevent_thread_lock=True,
        **launch_kwargs(),
    )
    # loading starts once the server is up (the page shows the progress), and after launch's own imports: a loader
    # thread importing transformers while the main thread still imports could meet it half-initialised
    manager.request_all()
    demo.block_thread()


if __name__ == "__main__":
    main()
