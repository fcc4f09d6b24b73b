"""Reading a recorded trace that someone else may have written: bounded in size and shape, every field checked (the
config through GenConfig), so a hostile or broken file is one clear ConfigError and never an endless or huge job."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from specviz.core.config import MAX_NEW_TOKENS, ConfigError, GenConfig
from specviz.core.events import RunSummary, StepEvent, trace_from_json

MAX_TRACE_BYTES = 8 * 2**20  # a 4,096-token run with instrumentation is about 3 MB
MAX_PROMPT_CHARS = 200_000


@dataclass(frozen=True)
class Trace:
    """A checked trace: its steps, its finished run's summary, what it was run with, and its meta as written."""

    steps: list[StepEvent]
    summary: RunSummary
    config: GenConfig
    prompt: str
    meta: dict[str, Any]

    def check_vocab(self, vocab_size: int) -> None:
        """The output ids all lie in the loaded model's vocabulary."""
        bad = [i for i in self.summary.output_ids if not 0 <= i < vocab_size][:1]
        if bad:
            raise ConfigError(f"the trace's output id {bad[0]} is outside this model's vocabulary 0..{vocab_size - 1}")


def read_trace_file(path: str | Path, vocab_size: int | None = None, greedy: bool = False) -> Trace:
    """read_trace() on a file, whose size is checked before it is read."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_TRACE_BYTES:
            raise ConfigError(f"the trace is {size / 2**20:.1f} MB; at most {MAX_TRACE_BYTES // 2**20} MB is read")
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"could not read the trace {str(path)!r}: {e.strerror or e}") from None
    return read_trace(data, vocab_size, greedy)


def read_trace(text: str | bytes, vocab_size: int | None = None, greedy: bool = False) -> Trace:
    """A finished run's trace (the Run tab's download, `specviz generate --json`), checked: at most MAX_TRACE_BYTES,
    a JSON object with a summary whose output ids are whole numbers in the vocabulary (when vocab_size is given), no
    more than its max_new_tokens, a prompt, and a config GenConfig accepts. greedy: the run must be greedy."""
    if len(text) > MAX_TRACE_BYTES:
        raise ConfigError(f"the trace is {len(text) / 2**20:.1f} MB; at most {MAX_TRACE_BYTES // 2**20} MB is read")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ConfigError("that file is not a specviz event trace: it is nested too deeply") from None
    except ValueError as e:
        raise ConfigError(f"that file is not a specviz event trace: not JSON ({str(e).split(':')[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise ConfigError("that file is not a specviz event trace: no list of steps")
    meta, summary = doc.get("meta"), doc.get("summary")
    if not isinstance(meta, dict):
        raise ConfigError("the trace has no meta record (its prompt and settings)")
    if not isinstance(summary, dict):
        raise ConfigError("the trace has no finished run (its summary is missing): download it after the run ends")
    config = _config(meta.get("config"))
    if isinstance(meta.get("config"), dict) and "max_new_tokens" not in meta["config"]:  # an older trace
        config = config.with_(max_new_tokens=min(MAX_NEW_TOKENS, max(1, len(summary.get("output_ids") or []))))
    prompt = meta.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the trace does not record its prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(f"the trace's prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are read")
    ids = summary.get("output_ids")
    if not isinstance(ids, list) or not ids:
        raise ConfigError("the trace's summary has no output ids")
    if len(ids) > config.max_new_tokens:
        raise ConfigError(f"the trace holds {len(ids)} output ids, more than its max_new_tokens {config.max_new_tokens}")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**31][:1]
    if bad:
        raise ConfigError(f"the trace's output ids must be token ids (whole numbers from 0); found {bad[0]!r}")
    if len(doc["steps"]) > MAX_NEW_TOKENS:
        raise ConfigError(f"the trace has {len(doc['steps'])} steps; a run has at most {MAX_NEW_TOKENS}")
    if greedy and config.rule != "greedy":
        raise ConfigError(
            "replay needs a greedy run: under sampling the accepted lengths depend on the random draws, not only on "
            "where the draft agrees"
        )
    try:
        steps, run, _ = trace_from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"that file is not a specviz event trace ({type(e).__name__}: {e})"[:300]) from None
    assert run is not None
    trace = Trace(steps, run, config, prompt, meta)
    if vocab_size is not None:
        trace.check_vocab(vocab_size)
    return trace


def _config(raw: Any) -> GenConfig:
    """The trace's settings through GenConfig's own checks (unknown keys are ignored, as an older trace may have
    them); non-finite numbers are refused before they reach it."""
    if raw is None:
        return GenConfig().validated()
    if not isinstance(raw, dict):
        raise ConfigError("the trace's config is not a mapping of settings")
    known = {f.name for f in fields(GenConfig)}
    kw = {k: v for k, v in raw.items() if k in known}
    for k, v in kw.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"the trace's config has {k} = {v}: a setting must be a finite number")
    if not isinstance(kw.get("options", {}), dict):
        raise ConfigError("the trace's config options are not a mapping")
    try:
        return GenConfig(**kw).validated()
    except ConfigError as e:
        raise ConfigError(f"the trace's config: {e}") from None
    except TypeError as e:
        raise ConfigError(f"the trace's config is malformed ({e})") from None
