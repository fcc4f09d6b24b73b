"""Generation settings with validation that names the problem, and loading of model presets and prompt suites from presets/."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
MAX_GAMMA = 32
MAX_NEW_TOKENS = 4096
RULES = ("greedy", "sample")
# relaxed acceptance families (specviz/lab/relaxed.py): each verifies against a mix of target p and draft q
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
    if prompt is None or not str(prompt).strip():
        raise ConfigError("the prompt is empty: type something for the model to continue")
    return str(prompt)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"preset file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"preset file {path.name} is not valid YAML: {e}") from e


def model_presets(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Model pairs by name, from presets/models.yaml (in file order; the first is the default)."""
    data = _load_yaml(path or PRESETS_DIR / "models.yaml")
    if not isinstance(data, dict) or not data:
        raise ConfigError("presets/models.yaml must map preset names to model pairs")
    return data


def model_preset(name: str, path: Path | None = None) -> dict[str, Any]:
    presets = model_presets(path)
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(presets)}")
    return presets[name]


def default_preset() -> str:
    return next(iter(model_presets()))


def prompt_suites(path: Path | None = None) -> dict[str, list[dict[str, str]]]:
    """Prompt suites by category: each a list of {name, prompt} from presets/prompts.yaml."""
    data = _load_yaml(path or PRESETS_DIR / "prompts.yaml")
    suites = data.get("suites") if isinstance(data, dict) else None
    if not isinstance(suites, dict):
        raise ConfigError("presets/prompts.yaml must have a 'suites' mapping")
    return suites


def suite_prompts(names: str) -> list[tuple[str, str, str]]:
    """(suite, name, prompt) for a comma-separated list of suites, or 'all'."""
    suites = prompt_suites()
    wanted = list(suites) if names in ("all", "", None) else [s.strip() for s in names.split(",")]
    out = []
    for s in wanted:
        if s not in suites:
            raise ConfigError(f"unknown prompt suite {s!r}; known suites: {', '.join(suites)}, all")
        out += [(s, p["name"], p["prompt"]) for p in suites[s]]
    return out
