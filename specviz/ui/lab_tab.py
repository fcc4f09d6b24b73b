"""The Theory lab tab: its introduction, the shared settings and four sub-tabs (the model-free toy playground, then
batch drafts, the quality/speed knob and the cost/gamma planner, measured on the loaded pair through the model queue
that Run and Compare use)."""

from __future__ import annotations

import gradio as gr

from specviz.ui.controls import build_lab_controls
from specviz.ui.lab import INTRO
from specviz.ui.lab_planner import PlannerPart
from specviz.ui.lab_playground import Playground
from specviz.ui.lab_sweeps import BatchPart, RelaxPart
from specviz.ui.models import ModelManager
from specviz.ui.visitors import Visitors


class LabTab:
    """The Theory lab's layout; each part holds its own components and handlers."""

    def __init__(self, manager: ModelManager, visitors: Visitors) -> None:
        gr.Markdown(INTRO, elem_id="lab-intro", elem_classes=["sv-lab-intro"])
        self.settings = build_lab_controls()
        with gr.Tabs():
            with gr.Tab("Toy playground (no model)", id="lab-playground", elem_id="lab-tab-playground"):
                self.playground = Playground()
            with gr.Tab("1. Batch drafts", id="lab-batch", elem_id="lab-tab-batch"):
                self.batch = BatchPart(manager, visitors, self.settings)
            with gr.Tab("2. Quality/speed knob", id="lab-relax", elem_id="lab-tab-relax"):
                self.relax = RelaxPart(manager, visitors, self.settings)
            with gr.Tab("3. Costs and gamma planner", id="lab-plan", elem_id="lab-tab-plan"):
                self.planner = PlannerPart(manager, visitors, self.settings)

    def wire(self) -> None:
        for part in (self.playground, self.batch, self.relax, self.planner):
            part.wire()
