"""Composition root: parse flags, start loading the model pair in the background, build the Gradio app and launch it."""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial

from specviz.backends.loading import load_pair
from specviz.core.presets import default_preset, model_presets
from specviz.ui.models import ModelManager
from specviz.ui.page import build_app, launch_kwargs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    presets = list(model_presets())
    p = argparse.ArgumentParser(description="specviz: see speculative decoding in the browser")
    p.add_argument("--host", default=None, help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or the first free from 7860)"
    )
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless asked)")
    p.add_argument(
        "--preset",
        default=os.environ.get("SPECVIZ_PRESET") or default_preset(),
        choices=presets,
        help=f"model pair to load (default: {presets[0]}; tiny-random needs no download)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    manager = ModelManager(args.preset, loader=partial(load_pair, device=args.device))
    manager.request(args.preset)  # loads in the background; the page is up meanwhile
    demo = build_app(manager)
    demo.queue(max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=True if args.share else None,  # None: Gradio's default (off; GRADIO_SHARE=True turns it on)
        **launch_kwargs(),
    )


if __name__ == "__main__":
    main()
