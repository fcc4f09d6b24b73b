"""Generation settings (GenConfig) with validation that names the problem, and the error type the user can fix."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

MAX_GAMMA = 32
MAX_NEW_TOKENS = 4096
RULES = ("greedy", "sample")
# relaxed acceptance families (specviz/core/relaxed.py): each verifies against a mix of target p and draft q
RELAX_FAMILIES = ("linear", "power", "geometric")


class ConfigError(ValueError):
    """A setting or input the user can fix; its message names the problem."""


@dataclass(frozen=True)
class GenConfig:
    """How to generate. rule 'greedy' keeps a guess while it equals the target's argmax;
    'sample' is speculative sampling (Leviathan et al. 2023), lossless for the processed distribution."""

    gamma: int = 4
    rule: str = "greedy"
    temperature: float = 1.0  # used by rule 'sample'; greedy shows p and q at temperature 1
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_new_tokens: int = 64
    seed: int = 0
    # the quality/speed knob (rule 'sample' only): 0 = lossless speculative sampling; 1 = accept every guess
    relax: float = 0.0
    relax_family: str = "linear"
    options: dict[str, Any] = field(default_factory=dict)  # strategy-specific knobs (n-gram sizes, layers, ...)

    def validated(self) -> GenConfig:
        """Return self, or raise ConfigError naming the first bad setting."""
        _check_int("gamma", self.gamma, 1, MAX_GAMMA)
        if self.rule not in RULES:
            raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not isinstance(self.temperature, int | float) or math.isnan(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 100:
            raise ConfigError(f"temperature must be at most 100, got {self.temperature}")
        if self.rule == "sample" and self.temperature == 0:
            raise ConfigError(
                "temperature 0 means greedy decoding: use rule 'greedy', or a temperature > 0 for sampling"
            )
        _check_int("top_k", self.top_k, 0, 10**7)
        if not isinstance(self.top_p, int | float) or not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        relax = self.relax
        if isinstance(relax, bool) or not isinstance(relax, int | float) or math.isnan(relax) or not 0 <= relax <= 1:
            raise ConfigError(f"relax must be a number from 0 (lossless) to 1 (accept every guess), got {relax!r}")
        if self.relax_family not in RELAX_FAMILIES:
            raise ConfigError(f"relax_family must be one of {', '.join(RELAX_FAMILIES)}, got {self.relax_family!r}")
        if relax > 0 and self.rule != "sample":
            raise ConfigError(
                "relax applies to rule 'sample' (speculative sampling) only: greedy keeps a guess exactly when it "
                "equals the target's top choice, so there is no acceptance probability to relax"
            )
        return self

    def with_(self, **changes: Any) -> GenConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value}")
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")


def check_prompt(prompt: str | None) -> str:
    """The prompt as text, or a ConfigError: empty, or holding what is not text (a lone surrogate, which no tokenizer
    can encode)."""
    if prompt is None or not str(prompt).strip():
        raise ConfigError("the prompt is empty: type something for the model to continue")
    text = str(prompt)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(
            f"the prompt holds a character that is not text (a lone surrogate, U+{ord(text[e.start]):04X}, at "
            f"position {e.start}): paste it again or remove that character"
        ) from None
    return text


def parse_numbers(text: str | None, name: str, kind: type = float, lo: float = -math.inf, hi: float = math.inf) -> list:
    """'1, 2, 4' (commas, semicolons or spaces) -> the sorted distinct numbers; ConfigError names the field and the
    problem (empty, not a number, out of lo..hi)."""
    parts = [x for x in str(text or "").replace(";", ",").replace(" ", ",").split(",") if x]
    if not parts:
        raise ConfigError(f"{name} is empty: give comma-separated numbers")
    out = []
    for x in parts:
        try:
            v = kind(float(x)) if kind is int and float(x).is_integer() else kind(x)
        except ValueError:
            raise ConfigError(f"{name}: {x!r} is not a {'whole number' if kind is int else 'number'}") from None
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: {x} is outside {lo:g}..{hi:g}")
        out.append(v)
    return sorted(set(out))


def whole(name: str, v: Any) -> Any:
    """A number field's value as an int when it is whole (UI numbers arrive as floats); anything else is returned
    for GenConfig.validated() to name; an empty field is a ConfigError."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if v is None:
        raise ConfigError(f"{name} is empty: enter a number")
    return v
