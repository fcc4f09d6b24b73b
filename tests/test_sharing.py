"""Safe to share: the real app (python app.py, tiny-random, on loopback) driven by visitors through gradio_client. A
visitor cannot switch or run a preset the operator did not offer, and their attempt leaves another visitor's run alone;
30 visitors at once each get their own whole result; hostile trace uploads each get one clear message while another
visitor's run takes its normal time; the job budget stops an over-long job and the next one runs; the downloads
folder stays within its bound; app.py's flag mistakes are one line and exit status 2."""

from __future__ import annotations

import html
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from helpers import ROOT, serve, step, tok

from specviz.ui.exports import ExportStore
from specviz.ui.live import LiveStream, parse_mark

JOB_SECONDS = 15  # the app's job budget here: a 2,000-token layer-skip run passes it, every other job here does not
KEEP_EXPORTS = 3
STATUS, STREAM, TEXT, SUMMARY, TRACE = 0, 2, 4, 13, 14  # positions in /run's outputs (view_api order)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The app's Gradio cache ($GRADIO_TEMP_DIR), where its downloads folder lives."""
    return tmp_path_factory.mktemp("gradio-cache")


@pytest.fixture(scope="module")
def app(cache) -> Iterator[str]:
    """The app on loopback with a short job budget and a small downloads bound."""
    args = ["--job-seconds", str(JOB_SECONDS), "--keep-exports", str(KEEP_EXPORTS)]
    with serve(args, env={"GRADIO_TEMP_DIR": str(cache)}, log_name="app-sharing.log") as url:
        yield url


def client(url: str) -> Client:
    """A visitor; files are left on the server (their URLs are in the results), as most visitors never download."""
    return Client(url, verbose=False, download_files=False)


def fetch(file: dict) -> bytes:
    """A result's file (a DownloadButton update holds it as its value), downloaded through its URL like a visitor's
    browser does."""
    file = file.get("value", file)
    with urllib.request.urlopen(file["url"], timeout=30) as r:
        return r.read()


def run_args(prompt: str = "def add(a, b):\n", preset: str = "tiny-random", max_new: int = 12, **kw: Any) -> list:
    """/run's inputs in its API order: prompt, preset, strategy, gamma, rule, temperature, top-p, top-k, seed, max."""
    return [
        prompt,
        preset,
        kw.get("strategy", "draft"),
        kw.get("gamma", 4),
        "greedy",
        1.0,
        1.0,
        0,
        kw.get("seed", 0),
        max_new,
    ]


def status_of(result: tuple) -> str:
    """The status line of a /run result, as text."""
    return html.unescape(result[STATUS])


def unchanged(value: Any) -> bool:
    """An output the handler left as it was (Gradio sends an empty update for it)."""
    return isinstance(value, dict) and value.get("__type__") == "update"


def model_status(url: str) -> str:
    """The shared models' status line, as a new visitor sees it."""
    return html.unescape(client(url).predict(api_name="/tick")[0])


@pytest.mark.slow  # serves the app in a subprocess
def test_a_visitor_cannot_switch_or_run_a_preset_not_offered(app):
    """/switch and /run with another preset are refused in one message; the pair and a running run are untouched."""
    other = client(app).submit(*run_args(max_new=200), api_name="/run")
    deadline = time.time() + 60
    while other.status().code.name not in ("PROCESSING", "FINISHED") and time.time() < deadline:
        time.sleep(0.1)  # the other visitor's run is under way
    visitor = client(app)
    refusal = "preset 'qwen-coder-7b-hub' is not offered here; pick one of: tiny-random"
    switched = visitor.predict("qwen-coder-7b-hub", api_name="/switch")
    assert refusal in html.unescape(switched[0]) and "sv-error" in switched[0]
    ran = visitor.predict(*run_args(preset="qwen-coder-7b-hub"), api_name="/run")
    assert refusal in status_of(ran) and unchanged(ran[STREAM])  # refused before anything ran
    assert "models ready: tiny-random" in model_status(app)  # nothing unloaded, nothing loading
    result = other.result(timeout=180)
    assert re.search(r"done: \d+ tokens", status_of(result)), status_of(result)
    # an offered preset is fine and changes nothing for anyone
    assert "models ready: tiny-random" in html.unescape(visitor.predict("tiny-random", api_name="/switch")[0])
    # numbers out of range sent past the page (which clamps them, with a note) are refused, naming the field
    bad = visitor.predict(*run_args(gamma=0), api_name="/run")
    assert "gamma (draft length) must be between 1 and 16, got 0" in status_of(bad)
    bad = visitor.predict(*run_args(max_new=99999), api_name="/run")
    assert "max new tokens must be between 1 and 2000, got 99999" in status_of(bad)
    assert "qwen-coder-7b" not in (ROOT / "tests" / "artifacts" / "app-sharing.log").read_text()  # never loaded


@pytest.mark.slow  # serves the app in a subprocess
def test_thirty_visitors_at_once_each_get_their_own_result(app):
    """30 threads, one gradio_client visitor each, all at once: 30 whole results, each of its own prompt."""

    def visit(i: int) -> tuple[int, tuple]:
        """Visitor i's run of their own prompt and seed."""
        return i, client(app).predict(*run_args(f"visitor {i} asks:", max_new=6, seed=i), api_name="/run")

    t0 = time.time()
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(visit, i) for i in range(30)]
        results = [f.result(timeout=400) for f in futures]  # an exception here is an error: there must be none
    assert time.time() - t0 < 400
    texts = {}
    for i, result in results:
        status = status_of(result)
        assert re.search(r"done: \d+ tokens", status), (i, status)
        assert result[TEXT] and result[SUMMARY]["data"], i
        texts[i] = result[TEXT]
    assert len(set(texts.values())) > 20  # different prompts and seeds: different outputs
    alone = client(app)
    for i in (0, 13, 29):  # each got the output of their own prompt: the same as that prompt run alone
        assert alone.predict(*run_args(f"visitor {i} asks:", max_new=6, seed=i), api_name="/run")[TEXT] == texts[i]


def trace_variants(base: dict, folder: Path) -> dict[str, tuple[Path, str | None]]:
    """Hostile uploads built from a real trace, each with the message it must get."""
    out: dict[str, tuple[Path, str | None]] = {}

    def put(name: str, doc: Any, expect: str | None, raw: str | None = None) -> None:
        """Write one variant (doc as JSON, or raw text) and note the message it must get."""
        path = folder / f"{name}.json"
        path.write_text(raw if raw is not None else json.dumps(doc), encoding="utf-8")
        out[name] = (path, expect)

    gamma = json.loads(json.dumps(base))
    gamma["meta"]["config"]["gamma"] = -1
    put("gamma", gamma, "gamma must be between 1")
    many = json.loads(json.dumps(base))
    many["summary"]["output_ids"] = [5] * 20_000
    put("many_ids", many, "holds 20000 output ids")
    put("big", None, "at most 8 MB is read", raw=json.dumps(base) + " " * (9 * 2**20))
    put("nested", None, "nested too deeply", raw="[" * 200_000 + "]" * 200_000)
    nested_ids = json.loads(json.dumps(base))
    nested_ids["summary"]["output_ids"] = [[1, 2], [3]]
    put("nested_ids", nested_ids, "output ids must be token ids")
    nan = json.dumps(base).replace('"top_p": 1.0', '"top_p": NaN')
    assert "NaN" in nan
    put("nan_top_p", None, "top_p = nan", raw=nan)
    # a fuzz of random shapes where a field was: each gets a clear message, or (if still a sound trace) a replay
    rng = random.Random(0)
    fields = [("meta",), ("meta", "config"), ("meta", "config", "gamma"), ("meta", "config", "top_k"),
              ("meta", "prompt"), ("summary",), ("summary", "output_ids"), ("steps",)]  # fmt: skip
    shapes = [None, -1, 0, 2.5, "x", [], {}, [None], {"a": [1]}, True, 2**70]
    for i in range(12):
        doc = json.loads(json.dumps(base))
        *parents, last = rng.choice(fields)
        node = doc
        for key in parents:
            node = node[key]
        node[last] = rng.choice(shapes)
        put(f"fuzz_{i}", doc, None)
    return out


@pytest.mark.slow  # serves the app in a subprocess
def test_hostile_uploads_get_clear_messages_and_never_hold_up_a_run(app, tmp_path):
    """Six hostile traces and twelve fuzzed shapes uploaded to the lab's replay while another visitor runs: six clear messages, and the run
    takes about its normal time."""
    runner = client(app)
    first = runner.predict(*run_args(max_new=64), api_name="/run")
    t0 = time.time()
    runner.predict(*run_args(max_new=64), api_name="/run")
    normal = time.time() - t0
    base = json.loads(fetch(first[TRACE]))
    variants = trace_variants(base, tmp_path)
    replies: dict[str, str] = {}

    def upload_all() -> None:
        """The hostile visitor: every variant in turn."""
        uploader = client(app)
        for name, (path, _) in variants.items():
            replies[name] = html.unescape(uploader.predict(3, 0.5, handle_file(str(path)), api_name="/lab_replay")[0])

    hostile = threading.Thread(target=upload_all)
    hostile.start()
    t0 = time.time()
    second = runner.predict(*run_args(max_new=64), api_name="/run")
    during = time.time() - t0
    hostile.join(timeout=180)
    assert not hostile.is_alive()
    assert re.search(r"done: 64 tokens", status_of(second)), status_of(second)
    print(f"\na 64-token run: {normal:.2f} s alone, {during:.2f} s beside {len(variants)} hostile uploads")
    assert during < 2 * normal + 5, f"a run took {during:.1f} s beside hostile uploads, {normal:.1f} s alone"
    for name, (_, expect) in variants.items():
        print(f"{name}: {re.sub('<[^>]+>', ' ', replies[name]).strip()}")
        assert "Traceback" not in replies[name]
        if expect is None:  # a fuzzed shape: a clear message, or a replay when the edit left a sound trace
            assert "sv-error" in replies[name] or "replayed" in replies[name], (name, replies[name])
        else:
            assert expect in replies[name] and "sv-error" in replies[name], (name, replies[name])


@pytest.mark.slow  # serves the app in a subprocess
def test_the_job_budget_stops_an_over_long_job_and_the_next_one_runs(app):
    """A run far past the budget is stopped with the budget message; the visitor queued behind it then runs."""
    long_job = client(app).submit(
        *run_args(max_new=2000, strategy="layerskip", gamma=16), api_name="/run"
    )  # about a minute of engine time on the tiny pair, far past the budget
    time.sleep(1.0)
    t0 = time.time()
    nxt = client(app).predict(*run_args(max_new=8), api_name="/run")  # queued behind it
    waited = time.time() - t0
    status = status_of(long_job.result(timeout=120))
    assert f"time budget of {JOB_SECONDS} s" in status and "stopped after" in status, status
    assert re.search(r"done: \d+ tokens", status_of(nxt)), status_of(nxt)
    print(f"\nover budget: {re.sub('<[^>]+>', ' ', status).strip()}; the next visitor waited {waited:.1f} s")
    assert waited < JOB_SECONDS + 30, f"the next visitor waited {waited:.0f} s"


@pytest.mark.slow  # serves the app in a subprocess
def test_downloads_stay_within_their_bound(app, cache):
    """More runs than --keep-exports leave exactly that many run folders, and no copies elsewhere in the cache."""
    c = client(app)
    results = [c.predict(*run_args(f"run {i}", max_new=6), api_name="/run") for i in range(KEEP_EXPORTS + 3)]
    assert b"run 5" in fetch(results[-1][TRACE])  # the newest downloads are served
    runs = sorted((cache / "specviz-exports").iterdir())
    assert len(runs) == KEEP_EXPORTS, runs
    assert all(len(list(r.iterdir())) == 2 for r in runs)
    # Gradio serves them from where they are: no second copy elsewhere in its cache
    assert [p for p in cache.rglob("specviz-trace-*.json") if "specviz-exports" not in p.parts] == []


@pytest.mark.slow  # serves the app in a subprocess
def test_flag_mistakes_are_one_line_and_exit_2_before_any_model_loads():
    """A bad or busy port, unknown presets and a bad budget: one line on stderr, exit status 2, nothing loaded."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = {
        ("--port", "99999"): "--port must be between 1 and 65535, got 99999",
        ("--port", str(port)): f"port {port} on 127.0.0.1 is in use",
        ("--presets", "tiny-random,nope"): "unknown preset 'nope' in --presets",
        ("--preset", "tiny-random", "--presets", "qwen-coder-7b-hub"): "--preset tiny-random is not among --presets",
        ("--job-seconds", "0"): "--job-seconds must be between 1 and 86400",
    }
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    try:
        for args, expect in cases.items():
            cmd = [sys.executable, "app.py", "--host", "127.0.0.1", *args]
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], (args, r.returncode, r.stderr)
            assert "Traceback" not in r.stderr and "loading" not in r.stdout + r.stderr
    finally:
        busy.close()


def test_live_deltas_hold_only_new_steps():
    """The delta the page appends carries only the steps after the last one sent, whatever the stream's length."""
    steps = [
        step(i, [tok("ab"[i % 2], "accepted", 0), tok("x", "bonus", 1, q=None)], 2 * i, 2 * i + 2) for i in range(50)
    ]
    live = LiveStream("greedy")
    first = live.update(steps[:10], "p<rompt")
    assert parse_mark(first) == (live.run_id, 0) and "p&lt;rompt" in first and first.count('class="sv-step') == 10
    again = live.update(steps[:10], "p<rompt")
    assert again == first  # nothing new: the same value, so the browser does nothing
    later = live.update(steps, "p<rompt")
    assert parse_mark(later) == (live.run_id, 10) and later.count('class="sv-step') == 40 and "rompt" not in later
    # a fresh run has a fresh mark, so the page starts an empty container for it
    assert parse_mark(LiveStream("greedy").update(steps[:1], ""))[0] != live.run_id


def test_the_export_store_keeps_the_newest_runs_within_count_and_size(tmp_path):
    """Pruning keeps the newest runs, at most `keep` of them and within `max_mb`."""
    store = ExportStore(tmp_path / "exports", keep=4, max_mb=0.05)  # 50 KB
    for i in range(10):
        folder = store.new_folder()
        (folder / "trace.json").write_bytes(b"x" * 20_000)
        (folder / "steps.csv").write_text(str(i))
        store.prune()
        assert len(store.runs()) <= 4 and store.size() <= 50 * 1024 or len(store.runs()) == 1
    kept = store.runs()
    assert [r.joinpath("steps.csv").read_text() for r in kept] == ["8", "9"]  # by size: two 20 KB runs fit in 50 KB
