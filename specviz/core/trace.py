"""Reading a recorded trace that someone else may have written: bounded in size and shape, every field checked (the
config through GenConfig), so a hostile or broken file is one clear ConfigError and never an endless or huge job.
A trace may be gzip-compressed (the gallery's .json.gz); the size bound applies to what it decompresses to."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from specviz.core.config import MAX_NEW_TOKENS, ConfigError, GenConfig
from specviz.core.events import RunSummary, StepEvent, trace_from_json

MAX_TRACE_BYTES = 8 * 2**20  # a 4,096-token run with instrumentation is about 3 MB
MAX_PROMPT_CHARS = 200_000
GZIP_MAGIC = b"\x1f\x8b"


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


def trace_meta(
    prompt: str,
    preset: str,
    strategy: str,
    config: dict[str, Any],
    *,
    chat: bool | None = None,
    details: dict[int, dict[str, Any]] | None = None,
    plain_steps: list[StepEvent] | None = None,
    plain_summary: RunSummary | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A trace's meta record as the Run tab's download and `specviz record` write it (what read_trace and the Run
    tab's replay read back): the prompt and settings, whether the prompt went through a chat template, step-mode
    details, the plain baseline's steps and summary, and any `extra` keys (the gallery's machine, date, commit)."""
    meta: dict[str, Any] = {
        "prompt": prompt,
        "preset": preset,
        "strategy": strategy,
        "config": config,
        "details": {str(k): v for k, v in (details or {}).items()},
    }
    if chat is not None:
        meta["chat"] = chat
    if plain_steps is not None:
        meta["plain_steps"] = [s.to_dict() for s in plain_steps]
        meta["plain_summary"] = plain_summary.to_dict() if plain_summary else None
    return meta | extra


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
    more than its max_new_tokens, a prompt, and a config GenConfig accepts. greedy: the run must be greedy. Bytes
    that start with the gzip magic are decompressed first (at most MAX_TRACE_BYTES of output)."""
    if len(text) > MAX_TRACE_BYTES:
        raise ConfigError(f"the trace is {len(text) / 2**20:.1f} MB; at most {MAX_TRACE_BYTES // 2**20} MB is read")
    if isinstance(text, bytes):
        text = (gunzip(text) if text[:2] == GZIP_MAGIC else text).decode("utf-8", errors="replace")
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


def gunzip(data: bytes) -> bytes:
    """A gzip stream decompressed, refused once its output passes MAX_TRACE_BYTES (a small bomb never grows large)."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, MAX_TRACE_BYTES + 1)
    except zlib.error as e:
        raise ConfigError(f"that file is not a specviz event trace: a broken gzip stream ({e})") from None
    if len(out) > MAX_TRACE_BYTES or d.unconsumed_tail:
        raise ConfigError(f"the trace decompresses to more than {MAX_TRACE_BYTES // 2**20} MB; at most that is read")
    if not d.eof:
        raise ConfigError("that file is not a specviz event trace: the gzip stream is cut short")
    return out


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
