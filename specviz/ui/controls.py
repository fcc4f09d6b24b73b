"""The generation controls the tabs build: Controls for Run and Compare (read into a RunRequest) and LabControls, the
Theory lab's shared prompt and settings (read into a GenConfig). Each group's `inputs` is the set a handler gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import gradio as gr
from gradio.blocks import Block

from specviz.core.config import MAX_GAMMA, ConfigError, GenConfig, check_prompt, whole
from specviz.core.presets import model_presets
from specviz.proposers import STRATEGIES
from specviz.ui.common import example_picker, example_prompts
from specviz.ui.session import RunRequest, make_request

MAX_NEW_TOKENS_UI = 2000  # the tiny models hold 2048 positions; larger presets accept more via the CLI
RULE_CHOICES = [("greedy", "greedy"), ("speculative sampling", "sample")]


@dataclass(frozen=True)
class Refused:
    """A number that Gradio would refuse with an exception (out of the field's range, or no number at all: only a
    caller past the page can send one, as the page clamps): handed to the handler, which names the field."""

    message: str


def _refused(label: Any, payload: Any, lo: float, hi: float) -> Refused:
    """The message for a number field's refused value."""
    if not isinstance(payload, int | float) or isinstance(payload, bool):
        return Refused(f"{label} must be a number, got {str(payload)[:40]!r}")
    if hi == float("inf"):
        return Refused(f"{label} must be at least {lo:g}, got {payload:g}")
    return Refused(f"{label} must be between {lo:g} and {hi:g}, got {payload:g}")


N = TypeVar("N", gr.Slider, gr.Number)


def checked(component: N) -> N:
    """`component` with its refused values (out of range, or no number) handed to the handler as a Refused, which the
    handler names, instead of Gradio's error and a server traceback for a visitor's mistake. (A wrapped method on the
    instance: a subclass would make Gradio write a .pyi stub beside this file.)"""
    plain = component.preprocess
    lo = component.minimum if component.minimum is not None else float("-inf")
    hi = component.maximum if component.maximum is not None else float("inf")

    def preprocess(payload: Any) -> Any:
        """Gradio's preprocess, a refusal turned into a Refused."""
        try:
            return plain(payload)
        except Exception:  # noqa: BLE001 - out of range, or not a number
            return _refused(component.label, payload, lo, hi)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def slider(*args: Any, **kw: Any) -> gr.Slider:
    """A checked gr.Slider."""
    return checked(gr.Slider(*args, **kw))


def number(*args: Any, **kw: Any) -> gr.Number:
    """A checked gr.Number."""
    return checked(gr.Number(*args, **kw))


class _Group:
    """A dataclass of components: `inputs` is the set of them (Gradio then hands the handler one dict keyed by
    component) and read() maps that dict back to field names."""

    @property
    def inputs(self) -> set[Block]:
        return set(self._components().values())

    def read(self, data: dict[Block, Any]) -> dict[str, Any]:
        """Field name -> value; a Refused number is a ConfigError naming its field."""
        values = {name: data[c] for name, c in self._components().items()}
        for v in values.values():
            if isinstance(v, Refused):
                raise ConfigError(v.message)
        return values

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


def build_controls(
    prefix: str, preset: str, with_strategy: bool = True, presets: Sequence[str] | None = None
) -> Controls:
    """Prompt, examples, preset (a choice among `presets`, the ones the operator allows; default: only `preset`),
    strategy, gamma, rule, temperature, top-p, top-k, max new tokens, seed."""
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
    known = model_presets()
    offered = list(presets or [preset])
    with gr.Row():
        preset_dd = gr.Dropdown(
            choices=[(name, name) for name in offered],
            value=preset,
            label="Model pair (preset)",
            elem_id=f"{prefix}-preset",
            info=known.get(preset, {}).get("description", ""),
            interactive=len(offered) > 1,  # one offered pair: shown, nothing to pick
            # a value not offered reaches the handler, which refuses it with one message (Gradio's own refusal would
            # log a traceback for every such call)
            allow_custom_value=True,
        )
        strategy = (
            gr.Dropdown(choices=list(STRATEGIES), value=STRATEGIES[0], label="Strategy", elem_id=f"{prefix}-strategy")
            if with_strategy
            else None
        )
    gamma = slider(1, min(16, MAX_GAMMA), value=4, step=1, label="gamma (draft length)", elem_id=f"{prefix}-gamma")
    rule = gr.Radio(RULE_CHOICES, value="greedy", label="Verification rule", elem_id=f"{prefix}-rule")
    with gr.Row():
        temperature = slider(
            0, 2, value=1.0, step=0.05, label="temperature", info="sampling rule only", elem_id=f"{prefix}-temperature"
        )
        top_p = slider(0.05, 1, value=1.0, step=0.01, label="top-p", info="1 = off", elem_id=f"{prefix}-top-p")
    with gr.Row():
        top_k = number(value=0, precision=0, minimum=0, label="top-k (0 = off)", elem_id=f"{prefix}-top-k")
        seed = number(value=0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}-seed")
    max_new = slider(1, MAX_NEW_TOKENS_UI, value=128, step=1, label="max new tokens", elem_id=f"{prefix}-max-new")
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
        self.read(data)
        return check_prompt(data[self.prompt])

    def config(self, data: dict[Block, Any], rule: str = "sample") -> GenConfig:
        """The GenConfig of a lab run (temperature only counts for the sampling rule); ConfigError names a bad field."""
        self.read(data)  # a Refused number is named first
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
            gamma = slider(1, 16, value=4, step=1, label="gamma", elem_id="lab-gamma")
            max_new = slider(8, 512, value=48, step=1, label="max new tokens", elem_id="lab-max-new")
        with gr.Row():
            temperature = slider(
                0.05, 2, value=1.0, step=0.05, label="temperature (parts 1, 2)", elem_id="lab-temperature"
            )
            seed = number(value=0, precision=0, minimum=0, label="seed", elem_id="lab-seed")
    return LabControls(prompt, gamma, max_new, temperature, seed)
