"""The Gradio page: the header, the shared models' status and each visitor's choice among the offered presets, the Run,
Compare and Theory lab tabs, and what launch() needs (theme, stylesheet, the page script: tooltips and notes on
clamped numbers, upload size limit)."""

from __future__ import annotations

import re
import time
from typing import Any

import gradio as gr

from specviz.core.config import ConfigError
from specviz.core.presets import ASSETS_DIR, model_presets
from specviz.ui import render
from specviz.ui.common import Update
from specviz.ui.compare_tab import CompareTab
from specviz.ui.exports import ExportStore
from specviz.ui.lab_tab import LabTab
from specviz.ui.models import LoadState, ModelManager
from specviz.ui.run_tab import RunTab
from specviz.ui.visitors import Visitors
from specviz.ui.vllm_panel import VllmTarget

HEADER = """<div class="sv-header"><h1>specviz <span>see speculative decoding happen</span></h1>
<p>A small <b>draft</b> model guesses a few tokens; the big <b>target</b> model checks all of them in one pass and
keeps the ones it agrees with. Every token below is labelled by what happened to it; hover for p (target), q (draft)
and the verdict.</p></div>"""


LOADING_NOTE = "The page works while they load: look around, pick settings; a Run or Step waits for the models."
CACHE_NOTE = "A first start on a machine builds the model cache (about 2 minutes on 2 CPU cores); later starts take 15 s."


def loading_note(presets: list[str]) -> str:
    """What works while `presets` load, and, for the embedded pair, how long a first and a later start take."""
    embedded = any(model_presets().get(p, {}).get("target", {}).get("source") == "embedded" for p in presets)
    return render.render_status(f"{LOADING_NOTE} {CACHE_NOTE}" if embedded else LOADING_NOTE, "info")


def kernel_note(info: dict[str, Any]) -> str | None:
    """On CPU, why the target does not run our packed kernel and what runs instead (None when it does, or off CPU)."""
    if info.get("device") != "cpu":
        return None
    linear = str(info.get("linear") or "plain torch linear layers")
    if linear.startswith("specviz packed kernel"):
        return None
    found = re.search(r"\(kernel (.+)\)$", linear)
    why = found.group(1) if found else "not used"
    path = (linear[: found.start()].strip() if found else linear).replace("mkldnn", "oneDNN")
    hint = " It is built with g++ (on a Space, packages.txt installs it)." if why.startswith("build failed") else ""
    return f"slower fallback: the models run on {path}, not our CPU kernel: {why}.{hint}"


def preset_status_html(st: LoadState, now: float | None = None, note: bool = True) -> str:
    """One preset's status: ready (device, dtype, load time; a warning line when the CPU kernel fell back), loading
    with progress, elapsed time and (note) what the page offers meanwhile, or the error."""
    if st.state == "ready":
        info = st.info
        bits = [f"{info.get('device', '?')}", f"{info.get('dtype', '?')}"]
        if "load_s" in info:
            bits.append(f"loaded in {info['load_s']} s")
        line = render.render_status(f"models ready: {st.preset} ({', '.join(bits)})", "ok")
        fallback = kernel_note(info)
        return line + (render.render_status(fallback, "warn") if fallback else "")
    if st.state == "error":
        return render.render_status(st.message, "error")
    if st.state == "loading":
        took = f", {max(0.0, (now or time.monotonic()) - st.since):.0f} s" if st.since else ""
        line = render.render_status(f"loading {st.preset} ({st.fraction:.0%}{took}): {st.message}", "busy", st.fraction)
        return line + (loading_note([st.preset]) if note else "")
    return render.render_status(f"{st.preset}: not loaded yet", "info")


def model_status_html(manager: ModelManager) -> str:
    """A status line for each preset the operator offers, then (while any loads) what works meanwhile, once."""
    now, states = time.monotonic(), manager.statuses()
    lines = "".join(preset_status_html(st, now, note=False) for st in states)
    loading = [st.preset for st in states if st.state == "loading"]
    return lines + (loading_note(loading) if loading else "")


def build_app(
    manager: ModelManager,
    visitors: Visitors | None = None,
    exports: ExportStore | None = None,
    vllm: VllmTarget | None = None,
) -> gr.Blocks:
    """The Blocks app; call launch(**launch_kwargs()) on it. `exports`: where the Run tab's downloads go (default: a
    bounded folder inside Gradio's cache). `vllm`: the operator's vLLM servers (app.py --vllm), or None."""
    visitors = visitors or Visitors()
    with gr.Blocks(title="specviz: see speculative decoding", delete_cache=(1800, 7200)) as demo:
        gr.HTML(HEADER)
        model_status = gr.HTML(model_status_html(manager), elem_id="sv-model-status")
        timer = gr.Timer(0.5, active=True)
        with gr.Tabs():
            with gr.Tab("Run", id="run", elem_id="sv-tab-run"):
                run_tab = RunTab(manager, visitors, exports, vllm)
            with gr.Tab("Compare", id="compare", elem_id="sv-tab-compare"):
                cmp_tab = CompareTab(manager, visitors, vllm)
            with gr.Tab("Theory lab", id="lab", elem_id="sv-tab-lab"):
                lab_tab = LabTab(manager, visitors)
        for tab in (run_tab, cmp_tab, lab_tab):
            tab.wire()
        dropdowns = [run_tab.c.preset, cmp_tab.c.preset]

        def tick() -> Update:
            # the timer polls only while a pair is still loading
            loading = any(st.state in ("idle", "loading") for st in manager.statuses())
            return {model_status: model_status_html(manager), timer: gr.Timer(active=loading)}

        def switch(preset: str) -> Update:
            """A visitor picks one of the offered pairs for their own runs (all of them stay loaded, so nobody else's
            run changes); both tabs' dropdowns follow. A preset not offered is refused with one message."""
            try:
                manager.request(preset)  # already loaded: nothing happens; offered but failed before: tried again
            except ConfigError as e:
                return {model_status: render.render_error(str(e))}
            info = model_presets().get(preset, {}).get("description", "")
            same = {dd: gr.Dropdown(value=preset, info=info) for dd in dropdowns}
            return {model_status: model_status_html(manager), timer: gr.Timer(active=True), **same}

        timer.tick(tick, None, [model_status, timer], queue=False, show_progress="hidden")
        demo.load(tick, None, [model_status, timer], queue=False, show_progress="hidden")
        for dd in dropdowns:
            dd.input(switch, dd, [model_status, timer, *dropdowns], queue=False, show_progress="hidden")

        def unload(request: gr.Request) -> None:
            visitors.drop(request.session_hash if request else None)

        demo.unload(unload)
    return demo


TOOLTIP_JS = """
() => {
  if (window.__svTip) return;
  const tip = document.createElement('div');
  tip.id = 'sv-tooltip';
  tip.setAttribute('role', 'tooltip');
  document.body.appendChild(tip);
  window.__svTip = tip;
  let current = null;
  const hide = () => { tip.style.display = 'none'; current = null; };
  const show = (el) => {
    current = el;
    tip.textContent = el.getAttribute('data-tip');
    tip.style.display = 'block';
    const r = el.getBoundingClientRect(), t = tip.getBoundingClientRect();
    let top = r.bottom + 6, left = Math.min(r.left, window.innerWidth - t.width - 8);
    if (top + t.height > window.innerHeight - 4) top = r.top - t.height - 6;
    tip.style.top = Math.max(4, top) + 'px';
    tip.style.left = Math.max(4, left) + 'px';
  };
  document.addEventListener('mouseover', (e) => {
    const el = e.target.closest ? e.target.closest('[data-tip]') : null;
    if (el) { if (el !== current) show(el); } else if (current) hide();
  });
  document.addEventListener('focusin', (e) => {
    const el = e.target.closest ? e.target.closest('[data-tip]') : null;
    if (el) show(el);
  });
  // keep the tip on its token while the page scrolls; drop it when a redraw replaced that token
  document.addEventListener('scroll', () => { if (current && current.isConnected) show(current); else hide(); }, true);
  setInterval(() => { if (current && !current.isConnected) hide(); }, 400);
  // Gradio clamps a number typed outside a slider's range when the field loses focus: say so beside the field (this
  // runs in the capture phase, before the slider's own handler, so the typed value is still there to read)
  const note = (block, text) => {
    let n = block.querySelector(':scope > .sv-clamp-note');
    if (!text) { if (n) n.remove(); return; }
    if (!n) {
      n = document.createElement('div');
      n.className = 'sv-clamp-note';
      n.setAttribute('role', 'status');
      block.appendChild(n);
    }
    n.textContent = text;
  };
  document.addEventListener('blur', (e) => {
    const el = e.target;
    if (!el || el.tagName !== 'INPUT' || el.type !== 'number') return;
    const block = el.closest('.block');
    if (!block || !block.querySelector('input[type=range]')) return;
    const v = parseFloat(el.value), lo = parseFloat(el.min), hi = parseFloat(el.max);
    const info = block.querySelector('[data-testid=block-info]');
    const label = ((info && info.textContent) || 'this field').trim();
    if (!isNaN(v) && !isNaN(lo) && v < lo) note(block, `${label}: ${v} is below the minimum, so ${lo} is used`);
    else if (!isNaN(v) && !isNaN(hi) && v > hi) note(block, `${label}: ${v} is above the maximum, so ${hi} is used`);
    else note(block, '');
  }, true);
  // dragging the slider itself always lands in range: the note goes
  document.addEventListener('input', (e) => {
    const el = e.target;
    if (el && el.type === 'range') { const b = el.closest('.block'); if (b) note(b, ''); }
  }, true);
}
"""


MAX_UPLOAD = "10mb"  # a trace the lab reads is at most 8 MB (core/trace.py); a bigger upload is refused by Gradio


def launch_kwargs() -> dict[str, Any]:
    """Theme, stylesheet, the page script and the upload limit (Gradio 6 takes these in launch())."""
    css = (ASSETS_DIR / "style.css").read_text(encoding="utf-8")
    theme = gr.themes.Soft(primary_hue="blue", neutral_hue="slate")
    # run_history off: Gradio 6 would copy every update of every run into the browser's localStorage (work that
    # grows with the stream on each update, and visitors' prompts kept in a shared tool's origin)
    return {"theme": theme, "css": css, "js": TOOLTIP_JS, "max_file_size": MAX_UPLOAD, "run_history": False}
