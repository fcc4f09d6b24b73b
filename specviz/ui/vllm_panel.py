"""The Run tab's vLLM panel: the visitor's prompt sent to the vLLM server the operator named (app.py --vllm URL, and
--vllm-plain URL for the baseline without speculation), its answer split into verify steps and played in the Run tab
as a replay is, beside one sentence for each panel this source has no data for. Visitors never type an address: the
app only ever asks the servers its operator configured."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.blocks import Block

from specviz.backends.vllm_client import VllmRun, run_vllm, vllm_trace_json
from specviz.core.config import ConfigError
from specviz.core.trace import read_trace
from specviz.ui import render
from specviz.ui.common import Update
from specviz.ui.controls import Controls
from specviz.ui.replay import recording
from specviz.ui.replay_panel import ReplayPanel
from specviz.ui.session import RunRequest
from specviz.ui.vllm_source import render_notes, run_view, source_label

log = logging.getLogger("specviz.ui")
TIMEOUT_S = 180.0  # one request to the server (and its baseline): a stalled server frees the visitor in time
# at most two visitors wait on the servers at once (the others queue): no visitor can flood the operator's server
VLLM_EVENTS: dict[str, Any] = {"concurrency_limit": 2, "concurrency_id": "vllm", "show_progress": "hidden"}


@dataclass(frozen=True)
class VllmTarget:
    """The operator's vLLM servers: one that speculates, and optionally one without speculation (the baseline that a
    speedup is measured against). model / plain_model: the served names (None: the server's only model)."""

    url: str
    plain_url: str | None = None
    model: str | None = None
    plain_model: str | None = None

    @staticmethod
    def parse(url: str | None, plain: str | None = None) -> VllmTarget | None:
        """From app.py's flags: URL or URL#model for each (None when no server is named); ConfigError for an address
        that is not http(s)."""
        if not url:
            return None
        parts = []
        for raw in (url, plain):
            if not raw:
                parts += [None, None]
                continue
            addr, _, model = raw.partition("#")
            if not addr.startswith(("http://", "https://")):
                raise ConfigError(f"a vLLM server is an http:// or https:// address, got {addr[:80]!r}")
            parts += [addr.rstrip("/"), model or None]
        return VllmTarget(parts[0], parts[2], parts[1], parts[3])


class VllmPanel:
    """An accordion in the Run tab: what the server is, a Run button, and the notes of the last vLLM run."""

    def __init__(self, target: VllmTarget | None) -> None:
        self.target = target
        self.run_btn: gr.Button | None = None
        with gr.Accordion("Watch a vLLM server", open=False, elem_id="sv-vllm"):
            if target is None:
                gr.Markdown(
                    "Start the app with `--vllm URL` (and `--vllm-plain URL` for a baseline without speculation) to "
                    "send this prompt to a vLLM server and watch its verify steps here; `python -m specviz serve-vllm` "
                    "starts local ones. See docs/vllm.md.",
                    elem_id="sv-vllm-off",
                )
            else:
                plain = target.plain_url or "none (no speedup is measured)"
                gr.Markdown(
                    f"Server: `{target.url}`{f' (model `{target.model}`)' if target.model else ''}; "
                    f"baseline without speculation: `{plain}`. The prompt, max new tokens, rule, temperature, top-p "
                    "and seed above are sent; vLLM runs the whole request, then it plays here step by step.",
                    elem_id="sv-vllm-about",
                )
                with gr.Row():
                    self.chat = gr.Checkbox(
                        False, label="chat template (the chat/completions endpoint)", elem_id="sv-vllm-chat"
                    )
                    self.run_btn = gr.Button("Run on vLLM", variant="secondary", elem_id="sv-vllm-run")
            self.notes = gr.HTML("", elem_id="sv-vllm-notes")

    def wire(self, controls: Controls, replay: ReplayPanel, outputs: list[Block]) -> None:
        """Connect the Run button: it reads the Run tab's controls and draws through the replay panel."""
        if self.run_btn is None:
            return
        self.controls, self.replay = controls, replay

        async def on_run(data: dict[Block, Any], request: gr.Request) -> AsyncIterator[Update]:
            async for up in self._run(data, request):
                yield up

        ev = self.run_btn.click(
            on_run, {*controls.inputs, self.chat, replay.speed}, outputs, api_name="vllm", **VLLM_EVENTS
        )
        replay.then_finish(ev, outputs)  # the finished run's full page, as for a gallery replay

    async def _run(self, data: dict[Block, Any], request: gr.Request) -> AsyncIterator[Update]:
        assert self.target is not None
        status = self.replay.rstatus
        try:
            req = self.controls.request(data)
        except ConfigError as e:
            yield {status: render.render_error(str(e))}
            return
        t = self.target
        asking = f"asking the vLLM server at {t.url} ({req.cfg.max_new_tokens} tokens)"
        yield {status: render.render_status(asking, "busy")}
        try:
            run = await asyncio.to_thread(ask, t, req, bool(data[self.chat]))
            # through the same checks as any uploaded trace, then played as one
            rec = recording(read_trace(vllm_trace_json(run)), title=source_label(run.meta))
        except ConfigError as e:
            yield {status: render.render_error(str(e)), self.notes: ""}
            return
        except Exception as e:  # noqa: BLE001 - a server that misbehaves is one message, never the page
            log.exception("the vLLM run failed")
            yield {status: render.render_error(f"the vLLM server did not answer usably: {type(e).__name__}: {e}"[:400])}
            return
        notes = render_notes(run_view(run.steps, run.summary, run.meta)) + _numbers(run.summary)
        async for up in self.replay.play(request, rec, data[self.replay.speed]):
            yield up | {self.notes: notes}


def ask(target: VllmTarget, req: RunRequest, chat: bool = False) -> VllmRun:
    """A visitor's prompt and settings on the operator's vLLM server (and its baseline server, when there is one):
    greedy is temperature 0 there. Blocking; ConfigError (VllmError) for what the server refused or lacks."""
    cfg = req.cfg
    return run_vllm(
        target.url,
        target.model,
        req.prompt,
        cfg.max_new_tokens,
        0.0 if cfg.rule == "greedy" else cfg.temperature,
        cfg.seed,
        top_p=cfg.top_p,
        chat=chat,
        baseline_url=target.plain_url,
        baseline_model=target.plain_model,
        timeout=TIMEOUT_S,
    )


def _numbers(summary: Any) -> str:
    """The run's measured headline: tokens per verify step, acceptance, and the speedup over the baseline server."""
    speed = f"{summary.speedup:.2f}x over the baseline server" if summary.speedup else "no baseline server, no speedup"
    return (
        f'<p class="sv-vllm-numbers">{summary.new_tokens} tokens in {summary.steps} verify steps: '
        f"{summary.tokens_per_step:.2f} tokens per step, acceptance {summary.acceptance_rate:.0%}; "
        f"{html.escape(speed)}.</p>"
    )
