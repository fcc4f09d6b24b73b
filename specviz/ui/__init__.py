"""The visualizer, the top layer (it may import every other specviz layer; none imports it). Its modules, lowest first:

- Drawing, plain functions of events (no torch, no gradio): render.py (token stream, legend, status lines, KPIs, theory
  card, Compare outputs), step_panel.py (step-mode captions and panel), tables.py (summary, per-step and Compare
  tables), figures.py (the Plotly-dict base) with charts.py (Run and Compare charts), lab_charts.py (playground, batch,
  relaxed) and plan_charts.py (costs, planner, replay); lab.py holds the Theory lab's texts, captions and helpers.
- Running the engine for visitors (no gradio): models.py (ModelManager: the offered pairs side by side, the job
  budget), worker.py (the one worker thread runner and its typed Message), session.py (RunRequest, RunState,
  stream_run), step_mode.py (StepSession), visitors.py (per-visitor Stop flag and step session), live.py (the token
  stream's append-only delta and the browser script that appends it), exports.py (the bounded folder of downloads).
- The Gradio page: common.py (the helpers every tab shares), controls.py (control groups read from a handler's input
  dict), run_tab.py, compare_tab.py, lab_tab.py with lab_playground.py, lab_sweeps.py and lab_planner.py, and page.py
  (build_app, launch_kwargs), which the root app.py launches.

Handlers receive one dict keyed by component and return {component: value}; ui modules import no underscore names
from one another and form no import cycle."""
