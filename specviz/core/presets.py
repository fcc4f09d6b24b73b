"""Model presets and prompt suites, read from the package's presets/ folder (YAML), with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from specviz.core.config import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # specviz/: presets/ and assets/ ship inside it
PRESETS_DIR = PACKAGE_DIR / "presets"
ASSETS_DIR = PACKAGE_DIR / "assets"
TRACES_DIR = PRESETS_DIR / "traces"  # the gallery of recorded runs (`specviz record` writes it, the Run tab replays it)


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


def long_suites(path: Path | None = None) -> dict[str, list[dict[str, str]]]:
    """The long-context suites, from presets/long_prompts.yaml: each a list of {name, prompt, context}, where context
    names a file under presets/texts/ that takes the prompt's {context}. Asked for by name only (not in 'all')."""
    path = path or PRESETS_DIR / "long_prompts.yaml"
    data = _load_yaml(path)
    suites = data.get("suites") if isinstance(data, dict) else None
    if not isinstance(suites, dict):
        raise ConfigError(f"presets/{path.name} must have a 'suites' mapping")
    return suites


def _with_context(item: dict[str, str], texts: Path) -> str:
    """A long prompt's text: its {context} replaced by the file it names."""
    try:
        context = (texts / item["context"]).read_text(encoding="utf-8")
    except (KeyError, OSError) as e:
        raise ConfigError(f"long prompt {item.get('name')!r}: its context file is missing ({e})") from e
    return item["prompt"].replace("{context}", context)


def suite_prompts(names: str) -> list[tuple[str, str, str]]:
    """(suite, name, prompt) for a comma-separated list of suites, or 'all' (the short suites; a long-context suite
    only by its name)."""
    suites, long = prompt_suites(), long_suites()
    wanted = list(suites) if names in ("all", "", None) else [s.strip() for s in names.split(",")]
    out = []
    for s in wanted:
        if s in suites:
            out += [(s, p["name"], p["prompt"]) for p in suites[s]]
        elif s in long:
            out += [(s, p["name"], _with_context(p, PRESETS_DIR / "texts")) for p in long[s]]
        else:
            raise ConfigError(f"unknown prompt suite {s!r}; known suites: {', '.join([*suites, *long])}, all")
    return out
