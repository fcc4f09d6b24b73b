"""The generation controls the tabs build: Controls for Run and Compare (read into a RunRequest) and LabControls, the
Theory lab's shared prompt and settings (read into a GenConfig). Each group's `inputs` is the set a handler gets."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
from gradio.blocks import Block

from specviz.core.config import MAX_GAMMA, ConfigError, GenConfig, check_prompt, whole
from specviz.core.presets import model_presets
from specviz.proposers import STRATEGIES
from specviz.ui.common import example_picker, example_prompts
from specviz.ui.session import RunRequest, make_request

MAX_NEW_TOKENS_UI = 2000  # the tiny models hold 2048 positions; larger presets accept more via the CLI
RULE_CHOICES = [("greedy", "greedy"), ("speculative sampling", "sample")]


class _Group:
    """A dataclass of components: `inputs` is the set of them (Gradio then hands the handler one dict keyed by
    component) and read() maps that dict back to field names."""

    @property
    def inputs(self) -> set[Block]:
        return set(self._components().values())

    def read(self, data: dict[Block, Any]) -> dict[str, Any]:
        return {name: data[c] for name, c in self._components().items()}

    def _components(self) -> dict[str, Block]:
        return {f.name: c for f in fields(self) if (c := getattr(self, f.name)) is not None}


@dataclass
class Controls(_Group):
    """The generation controls of the Run or Compare tab; field names are make_request's parameters, so adding a
    control is adding a field (and building it in build_controls)."""

    prompt: gr.Textbox
    preset: gr.Dropdown
    strategy: gr.Dropdown | None  # None on the Compare tab, which picks several
    gamma: gr.Slider
    rule: gr.Radio
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Number
    max_new_tokens: gr.Slider
    seed: gr.Number

    def request(self, data: dict[Block, Any], **override: Any) -> RunRequest:
        """The validated request from a handler's input dict; ConfigError names the first bad control."""
        return make_request(**{**self.read(data), **override})


def build_controls(prefix: str, preset: str, with_strategy: bool = True) -> Controls:
    """Prompt, examples, preset, strategy, gamma, rule, temperature, top-p, top-k, max new tokens, seed."""
    examples = example_prompts()
    prompt = gr.Textbox(
        label="Prompt",
        value=examples[0][1] if examples else "",
        lines=4,
        max_lines=14,
        elem_id=f"{prefix}-prompt",
        info="Instruct presets apply their chat template; the tiny-random preset continues the text.",
    )
    example_picker(prompt, elem_id=f"{prefix}-examples")
    presets = model_presets()
    with gr.Row():
        preset_dd = gr.Dropdown(
            choices=[(f"{name}", name) for name in presets],
            value=preset,
            label="Model pair (preset)",
            elem_id=f"{prefix}-preset",
            info=presets.get(preset, {}).get("description", ""),
        )
        strategy = (
            gr.Dropdown(choices=list(STRATEGIES), value=STRATEGIES[0], label="Strategy", elem_id=f"{prefix}-strategy")
            if with_strategy
            else None
        )
    gamma = gr.Slider(1, min(16, MAX_GAMMA), value=4, step=1, label="gamma (draft length)", elem_id=f"{prefix}-gamma")
    rule = gr.Radio(RULE_CHOICES, value="greedy", label="Verification rule", elem_id=f"{prefix}-rule")
    with gr.Row():
        temperature = gr.Slider(
            0, 2, value=1.0, step=0.05, label="temperature", info="sampling rule only", elem_id=f"{prefix}-temperature"
        )
        top_p = gr.Slider(0.05, 1, value=1.0, step=0.01, label="top-p", info="1 = off", elem_id=f"{prefix}-top-p")
    with gr.Row():
        top_k = gr.Number(value=0, precision=0, minimum=0, label="top-k (0 = off)", elem_id=f"{prefix}-top-k")
        seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}-seed")
    max_new = gr.Slider(1, MAX_NEW_TOKENS_UI, value=128, step=1, label="max new tokens", elem_id=f"{prefix}-max-new")
    return Controls(prompt, preset_dd, strategy, gamma, rule, temperature, top_p, top_k, max_new, seed)


@dataclass
class LabControls(_Group):
    """The prompt and settings the Theory lab's measured parts share."""

    prompt: gr.Textbox
    gamma: gr.Slider
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number

    def text(self, data: dict[Block, Any]) -> str:
        return check_prompt(data[self.prompt])

    def config(self, data: dict[Block, Any], rule: str = "sample") -> GenConfig:
        """The GenConfig of a lab run (temperature only counts for the sampling rule); ConfigError names a bad field."""
        temperature = data[self.temperature]
        if temperature is None:
            raise ConfigError("temperature needs a value")
        return GenConfig(
            gamma=whole("gamma", data[self.gamma]),
            rule=rule,
            temperature=float(temperature) if rule == "sample" else 1.0,
            max_new_tokens=whole("max new tokens", data[self.max_new_tokens]),
            seed=whole("seed", data[self.seed]),
        ).validated()


def build_lab_controls() -> LabControls:
    """The lab's prompt, examples, gamma, max new tokens, temperature and seed (inside a closed accordion)."""
    with gr.Accordion("Prompt and settings for parts 1 to 3 (they run on the loaded pair)", open=False):
        examples = example_prompts()
        prompt = gr.Textbox(label="Prompt", value=examples[0][1] if examples else "", lines=3, elem_id="lab-prompt")
        example_picker(prompt)
        with gr.Row():
            gamma = gr.Slider(1, 16, value=4, step=1, label="gamma", elem_id="lab-gamma")
            max_new = gr.Slider(8, 512, value=48, step=1, label="max new tokens", elem_id="lab-max-new")
        with gr.Row():
            temperature = gr.Slider(
                0.05, 2, value=1.0, step=0.05, label="temperature (parts 1, 2)", elem_id="lab-temperature"
            )
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="lab-seed")
    return LabControls(prompt, gamma, max_new, temperature, seed)
