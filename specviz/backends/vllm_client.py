"""A vLLM server (OpenAI-compatible) as a source of speculative runs: one streamed completion with its per-request
spec-decode metrics, the server's Prometheus counters read around it, and specviz's StepEvents, RunSummary and trace
meta from them (marked source "vllm"; no p, q or rejected guesses: vLLM reports none). Standard library only."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from specviz.backends.vllm_steps import (
    Layout,
    SpecMetrics,
    Step,
    layout,
    parse_spec_metrics,
    position_rates,
    run_summary,
    step_events,
    token_pieces,
)
from specviz.core.config import MAX_GAMMA, MAX_NEW_TOKENS, ConfigError, GenConfig
from specviz.core.events import RunSummary, StepEvent, trace_to_json
from specviz.core.metrics import with_plain
from specviz.core.trace import trace_meta

SOURCE = "vllm"
TESTED_VERSION = "0.32.0"  # the version whose response shapes this module was written and tested against
SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")
COUNTERS_NOTE = "server-wide counters read before and after this run: other requests served meanwhile are counted too"
NOT_REPORTED = {
    "p": "vLLM does not return the target's probability of each drafted token",
    "q": "vLLM does not return the proposer's probabilities (an n-gram proposer has none)",
    "rejected": "vLLM reports how many drafted tokens each step accepted, not which guess it refused",
    "draft_ms/verify_ms": "vLLM does not time a step's drafting and verifying apart; elapsed_ms is when a step's last "
    "token reached specviz",
}


class VllmError(ConfigError):
    """A vLLM server that cannot be reached, refuses a request, or answers without what specviz needs."""


@dataclass
class Completion:
    """One streamed completion as it arrived: ids, each token decoded alone, the text, and when each token came."""

    prompt_ids: list[int]
    output_ids: list[int]
    strings: list[str]  # each output token decoded alone (the logprobs' tokens)
    text: str
    arrivals_ms: list[float]  # per output token: ms from sending the request to the chunk that carried it
    wall_s: float
    finish_reason: str | None
    chunks: int
    metrics: dict[str, Any] | None  # the response's `metrics` record, as sent
    usage: dict[str, Any] | None = None

    @property
    def first_ms(self) -> float:
        return self.arrivals_ms[0] if self.arrivals_ms else 0.0


@dataclass
class SpecCounters:
    """vLLM's `vllm:spec_decode_*` Prometheus counters (summed over engines), at one moment or as a difference."""

    num_drafts: float = 0.0
    num_draft_tokens: float = 0.0
    num_accepted_tokens: float = 0.0
    accepted_per_pos: list[float] = field(default_factory=list)

    def minus(self, before: SpecCounters) -> SpecCounters:
        width = max(len(self.accepted_per_pos), len(before.accepted_per_pos))
        pad = lambda v: v + [0.0] * (width - len(v))  # noqa: E731
        return SpecCounters(
            self.num_drafts - before.num_drafts,
            self.num_draft_tokens - before.num_draft_tokens,
            self.num_accepted_tokens - before.num_accepted_tokens,
            [a - b for a, b in zip(pad(self.accepted_per_pos), pad(before.accepted_per_pos))],
        )

    def per_position(self) -> list[float | None]:
        """Acceptance by draft position as vLLM defines it: accepted at position j / drafts."""
        return [a / self.num_drafts if self.num_drafts else None for a in self.accepted_per_pos]


class VllmRun(NamedTuple):
    """What run_vllm returns: the steps, the summary (speedup set when a baseline ran) and the trace meta."""

    steps: list[StepEvent]
    summary: RunSummary
    meta: dict[str, Any]


# ---------------------------------------------------------------- parsing what the server sends


def request_body(
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    top_p: float = 1.0,
    chat: bool = False,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """The streamed request: token ids back (vLLM's return_token_ids), each token's text (logprobs 0), and the final
    usage chunk, which is where vLLM puts `metrics` in a stream."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "n": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "ignore_eos": ignore_eos,
    }
    if chat:
        body |= {"messages": [{"role": "user", "content": prompt}], "logprobs": True, "top_logprobs": 0}
    else:
        body |= {"prompt": prompt, "logprobs": 0}
    return body


def parse_stream(events: Iterable[tuple[float, str]], chat: bool = False, wall_s: float | None = None) -> Completion:
    """A Completion from a stream's `data:` payloads, each with its arrival in ms (completions or chat completions
    shape of vLLM 0.32.0); VllmError on an error in the stream, n > 1, or a stream without token ids."""
    prompt_ids: list[int] = []
    ids: list[int] = []
    strings: list[str] = []
    arrivals: list[float] = []
    text, finish, metrics, usage, chunks, last = [], None, None, None, 0, 0.0
    for at, payload in events:
        last = at
        try:
            doc = json.loads(payload)
        except ValueError:
            raise VllmError(f"the server sent a stream chunk that is not JSON: {payload[:80]!r}") from None
        if not isinstance(doc, dict):
            raise VllmError("the server sent a stream chunk that is not a record")
        if doc.get("error") or doc.get("object") == "error":
            err = doc.get("error") if isinstance(doc.get("error"), dict) else doc
            raise VllmError(f"the server stopped the run: {str(err.get('message', err))[:300]}")
        if isinstance(doc.get("metrics"), dict):
            metrics = doc["metrics"]
        if isinstance(doc.get("usage"), dict):
            usage = doc["usage"]
        prompt_ids = doc.get("prompt_token_ids") or prompt_ids  # a chat stream's first chunk carries them here
        for choice in doc.get("choices") or []:
            if choice.get("index", 0) != 0:
                raise VllmError("the response has more than one sequence (n > 1): specviz shows one run at a time")
            prompt_ids = choice.get("prompt_token_ids") or prompt_ids
            new = choice.get("token_ids")
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if new is None and piece:
                raise VllmError(
                    "the server sent text without token ids: it ignores return_token_ids (vLLM before 0.10.2?); "
                    f"specviz was tested with vLLM {TESTED_VERSION}"
                )
            new = list(new or [])
            chunks += bool(new)
            ids += new
            arrivals += [at] * len(new)
            text.append(piece or "")
            strings += _token_strings(choice.get("logprobs"), chat, len(new))
            finish = choice.get("finish_reason") or finish
    if not ids:
        raise VllmError("the server's stream held no tokens")
    return Completion(
        prompt_ids, ids, strings, "".join(text), arrivals, wall_s if wall_s is not None else last / 1e3, finish,
        chunks, metrics, usage,
    )  # fmt: skip


def _token_strings(logprobs: Any, chat: bool, n: int) -> list[str]:
    """Each new token's text as the logprobs give it ("" where absent: token_pieces then places the text)."""
    if not isinstance(logprobs, dict):
        return [""] * n
    if chat:
        got = [e.get("token", "") if isinstance(e, dict) else "" for e in logprobs.get("content") or []]
    else:
        got = [t if isinstance(t, str) else "" for t in logprobs.get("tokens") or []]
    return (got + [""] * n)[:n]


LINE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition: metric name -> [(labels, value)], comments and unreadable lines skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if not m or line.startswith("#"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((dict(LABEL.findall(m.group(2) or "")), value))
    return out


def spec_counters(text: str, model: str | None = None) -> SpecCounters | None:
    """The spec-decode counters for `model` (all models when None or unlabelled); None when the server has none
    (speculation off)."""
    samples = parse_prometheus(text)

    def series(name: str) -> list[tuple[dict[str, str], float]]:
        rows = samples.get(f"vllm:spec_decode_{name}_total") or samples.get(f"vllm:spec_decode_{name}") or []
        return [(lab, v) for lab, v in rows if model is None or lab.get("model_name", model) == model]

    if not any(series(n) for n in SPEC_COUNTERS):
        return None
    c = SpecCounters(*(sum(v for _, v in series(n)) for n in SPEC_COUNTERS))
    per: dict[int, float] = {}
    for lab, v in series("num_accepted_tokens_per_pos"):
        if lab.get("position", "").isdigit():
            per[int(lab["position"])] = per.get(int(lab["position"]), 0.0) + v
    c.accepted_per_pos = [per.get(j, 0.0) for j in range(max(per) + 1)] if per else []
    return c


# ---------------------------------------------------------------- talking to the server


class VllmServer:
    """An OpenAI-compatible vLLM server at `url` (http://host:port, with or without /v1). api_key: for a server
    started with --api-key (default: $VLLM_API_KEY, the variable vLLM's own server reads)."""

    def __init__(self, url: str, timeout: float = 600.0, api_key: str | None = None) -> None:
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^\s/]+", url):
            raise VllmError(f"a vLLM server URL looks like http://127.0.0.1:8000, got {url[:80]!r}")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("VLLM_API_KEY")

    def _open(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            raise VllmError(f"the vLLM server at {self.url} refused {path} (HTTP {e.code}): {_message(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise VllmError(
                f"cannot reach a vLLM server at {self.url} ({reason}): check the URL, or start one with "
                "`python -m specviz serve-vllm`"
            ) from None

    def get_json(self, path: str) -> Any:
        with self._open(path, timeout=30) as r:
            return json.loads(r.read())

    def version(self) -> str:
        v = self.get_json("/version")
        return str(v.get("version", "unknown")) if isinstance(v, dict) else "unknown"

    def models(self) -> list[dict[str, Any]]:
        doc = self.get_json("/v1/models")
        return [m for m in doc.get("data", []) if isinstance(m, dict)] if isinstance(doc, dict) else []

    def model_info(self, model: str | None) -> dict[str, Any]:
        """The served model's record (`model` None: the only one served); VllmError naming what is served."""
        models = self.models()
        names = [m.get("id") for m in models]
        if model is None and len(models) == 1:
            return models[0]
        found = next((m for m in models if m.get("id") == model), None)
        if found is None:
            raise VllmError(
                f"the vLLM server at {self.url} serves {', '.join(map(str, names)) or 'no model'}, not {model!r}"
            )
        return found

    def metrics_text(self) -> str | None:
        """GET /metrics, or None when the server does not expose it."""
        try:
            with self._open("/metrics", timeout=30) as r:
                return r.read().decode("utf-8", errors="replace")
        except VllmError:
            return None

    def stream(self, body: dict[str, Any], chat: bool) -> tuple[Iterator[tuple[float, str]], Callable[[], float]]:
        """The `data:` payloads of a streamed completion with their arrival (ms since sending), and a clock."""
        t0 = time.perf_counter()
        resp = self._open("/v1/chat/completions" if chat else "/v1/completions", body)

        def events() -> Iterator[tuple[float, str]]:
            with resp:
                for raw in resp:
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    yield (time.perf_counter() - t0) * 1e3, payload

        return events(), lambda: time.perf_counter() - t0

    def complete(self, body: dict[str, Any], chat: bool = False) -> Completion:
        events, clock = self.stream(body, chat)
        try:
            done = parse_stream(events, chat)
        except (TimeoutError, OSError) as e:
            raise VllmError(f"the vLLM server at {self.url} stopped answering mid-run ({e})") from None
        done.wall_s = clock()
        return done


def _message(e: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(e.read())
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except Exception:
        return str(e.reason)[:300]


# ---------------------------------------------------------------- a run through specviz


def spec_of(done: Completion, url: str, model: str) -> SpecMetrics:
    """The completion's speculative-decoding metrics, or one VllmError saying why there are none."""
    raw = (done.metrics or {}).get("speculative_decoding")
    if raw is None:
        raise VllmError(
            f"the vLLM server at {url} (model {model!r}) sent no metrics.speculative_decoding: speculation is off on "
            "it, or it was started without --per-request-spec-decode-metrics, or the request asked for n > 1. Point "
            "specviz at a server started with --speculative-config and --per-request-spec-decode-metrics detailed "
            "(specviz serve-vllm starts one)"
        )
    return parse_spec_metrics(raw)


def plain_steps(done: Completion) -> list[StepEvent]:
    """A run without speculation: one token per step (the first from the prompt's pass)."""
    lay = Layout([Step(i, 1, 0, 0, "prefill" if i == 0 else "plain") for i in range(len(done.output_ids))], "plain")
    pieces, _ = token_pieces(done.strings, done.text)
    return step_events(lay, done.output_ids, pieces, done.arrivals_ms, 1, _stop(done))


def _stop(done: Completion) -> str:
    return {"length": "max_new_tokens", "stop": "eos", "abort": "stopped"}.get(
        done.finish_reason or "", "max_new_tokens"
    )


def _name(value: str) -> str:
    """A served model's name as a trace's preset name (letters, digits, - _ . +)."""
    return re.sub(r"[^\w.+-]", "_", value)[:64] or "vllm"


def run_vllm(
    url: str,
    model: str | None,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    *,
    top_p: float = 1.0,
    chat: bool = False,
    ignore_eos: bool = False,
    baseline_url: str | None = None,
    baseline_model: str | None = None,
    method: str | None = None,
    ngram: tuple[int, int] | None = None,
    timeout: float = 600.0,
    counters: bool = True,
    api_key: str | None = None,
) -> VllmRun:
    """One prompt on a vLLM server with speculation, through specviz: the tokens split into verify steps, the summary
    and the trace meta (source "vllm", the server's version and arrays, the /metrics counters around the run, what is
    not reported). baseline_url / baseline_model: the configuration without speculation (a second server, or another
    served name at the same URL) is run on the same prompt after it, and the summary's speedup is measured from the
    two. method / ngram: the server's proposer and n-gram sizes, when known (they place steps without a draft).
    counters: read /metrics around the run. api_key: for servers started with --api-key (default $VLLM_API_KEY)."""
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise VllmError(f"max_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_tokens}")
    server = VllmServer(url, timeout, api_key)
    version = server.version()
    info = server.model_info(model)
    model = str(info.get("id"))
    body = request_body(model, prompt, max_tokens, temperature, seed, top_p, chat, ignore_eos)
    before = spec_counters(server.metrics_text() or "", model) if counters else None
    done = server.complete(body, chat)
    after = spec_counters(server.metrics_text() or "", model) if counters else None
    spec = spec_of(done, server.url, model)
    greedy = temperature == 0
    lay = layout(done.prompt_ids, done.output_ids, spec, method, ngram, info.get("max_model_len"), greedy)
    pieces, fixed = token_pieces(done.strings, done.text)
    stop = _stop(done)
    k = spec.num_spec_tokens
    steps = step_events(lay, done.output_ids, pieces, done.arrivals_ms, k, stop)
    name = f"vllm-{method or ('ngram' if lay.ngram else 'spec')}"
    summary = run_summary(steps, lay, name, "greedy" if greedy else "sample", k, done.wall_s, done.first_ms, stop,
                          done.output_ids, done.text)  # fmt: skip
    plain, plain_summary, base_meta = None, None, None
    if baseline_url or baseline_model:
        base = VllmServer(baseline_url or url, timeout, api_key)
        base_info = base.model_info(baseline_model)
        base_body = request_body(
            str(base_info.get("id")), prompt, max_tokens, temperature, seed, top_p, chat, ignore_eos
        )
        base_done = base.complete(base_body, chat)
        if (base_done.metrics or {}).get("speculative_decoding") is not None:
            raise VllmError(
                f"the baseline {base.url} ({base_info.get('id')}) speculates too: give one without speculation"
            )
        plain = plain_steps(base_done)
        plain_summary = run_summary(plain, Layout([], "plain"), "plain", summary.rule, 1, base_done.wall_s,
                                    base_done.first_ms, _stop(base_done), base_done.output_ids, base_done.text)  # fmt: skip
        summary = with_plain(summary, plain_summary)
        base_meta = {"url": base.url, "model": base_info.get("id"), "version": base.version(),
                     "server_metrics": _timing(base_done.metrics)}  # fmt: skip
    cfg = GenConfig(
        gamma=min(max(k, 1), MAX_GAMMA),
        rule=summary.rule,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_tokens,
        seed=seed,
        options={"method": method or ("ngram" if lay.ngram else None), "num_speculative_tokens": k},
    )
    delta = after.minus(before) if after is not None and before is not None else None
    vllm = {
        "version": version,
        "tested_version": TESTED_VERSION,
        "url": server.url,
        "model": model,
        "endpoint": "chat/completions" if chat else "completions",
        "speculative_decoding": spec.raw,
        "placement": lay.how,
        "ngram": list(lay.ngram) if lay.ngram else None,
        "text_placed": fixed,
        "chunks": done.chunks,
        "first_token_ms": round(done.first_ms, 2),
        "server_metrics": _timing(done.metrics),
        "position_rates": position_rates(lay),
        # per StepEvent, as the server counted them (a last step cut by max_tokens emits fewer than it accepted)
        "step_accepted": [s.accepted for s in lay.steps],
        "step_drafted": [s.drafted for s in lay.steps],
        "counters": {
            "before": asdict(before),
            "after": asdict(after),
            "delta": asdict(delta),
            "per_position": delta.per_position(),
            "note": COUNTERS_NOTE,
        }
        if delta
        else None,  # fmt: skip
        "baseline": base_meta,
        "not_reported": NOT_REPORTED,
    }
    meta = trace_meta(
        prompt, _name(model), name, cfg.to_dict(), chat=chat, plain_steps=plain, plain_summary=plain_summary,
        source=SOURCE, vllm=vllm,
    )  # fmt: skip
    return VllmRun(steps, summary, meta)


def _timing(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The server's own timings of the request (with --enable-per-request-metrics), numbers only."""
    keys = ("time_to_first_token_ms", "generation_time_ms", "queue_time_ms", "mean_itl_ms", "tokens_per_second")
    return {k: metrics[k] for k in keys if isinstance((metrics or {}).get(k), int | float)} if metrics else {}


def vllm_trace_json(run: VllmRun) -> str:
    """The run as specviz's event trace (the Run tab's download format), source-marked in its meta."""
    return trace_to_json(run.steps, run.summary, run.meta)


def warm_up(url: str, model: str | None, chat: bool = False, timeout: float = 600.0) -> None:
    """One short request, so that a timed run does not pay a fresh server's first-request costs."""
    server = VllmServer(url, timeout)
    name = str(server.model_info(model).get("id"))
    server.complete(request_body(name, "Hello", 4, chat=chat), chat)
