"""A Space that deploys as it is: the README front matter against the Spaces config reference, what a Space installs
(runtime only; Debian packages for the kernel build), where the cache goes, the status bar's loading view and CPU kernel
fallback line, the ZeroGPU contract with a fake `spaces` package (which handlers are decorated, nothing on CUDA at
import or outside them, everything they take and yield survives the worker's pickling, no CUDA graphs or compile),
and `python app.py` started as the Spaces runtime starts it, driven in chromium."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import ARTIFACTS, ROOT, free_port, open_page, serve, set_number, set_prompt, wait_status

from specviz.backends import cache, loading, spaces
from specviz.ui import models
from specviz.ui.models import LoadState, ModelManager
from specviz.ui.page import kernel_note, model_status_html, preset_status_html

FAKE_SPACES = ROOT / "tests" / "fake_spaces"
# https://huggingface.co/docs/hub/spaces-config-reference: the thumbnail colours, and the hardware flavours
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
FLAVOURS = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
            "a10g-largex2", "a10g-largex4", "a100-large", "zero-a10g"}  # fmt: skip
TEST_TOOLS = {"pytest", "ruff", "playwright", "scipy", "setuptools", "spaces"}
# Gradio on a Space (SYSTEM=spaces) with a queue logs this from garbage-collected event loops of its own, with a
# six-line app too (gr.Blocks, one queued click, launch): not ours, so not counted as a traceback of the app
GRADIO_LOOP_NOISE = re.compile(
    r"Exception ignored in: <function BaseEventLoop.__del__.*?ValueError: Invalid file descriptor: -1\n", re.S
)


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pkg, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not pinned with =="
            out[pkg.lower()] = version
    return out


# ---------------------------------------------------------------- configuration


def test_front_matter_holds_what_the_spaces_config_reference_asks_for():
    fm = front_matter()
    import gradio

    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py" and (ROOT / fm["app_file"]).is_file()
    assert fm["sdk_version"] == gradio.__version__ == pins("requirements.txt")["gradio"]
    # a string, as YAML would read 3.10 as the number 3.1; and the version our pins need (pyproject agrees)
    assert isinstance(fm["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", fm["python_version"])
    minor = int(fm["python_version"].split(".")[1])
    requires = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires and minor >= int(requires.group(1)) >= 11
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert fm["python_version"] == running, f"the Space should run the Python the pins were installed on ({running})"
    assert fm["colorFrom"] in COLOURS and fm["colorTo"] in COLOURS
    assert isinstance(fm["title"], str) and fm["title"] and isinstance(fm["emoji"], str) and len(fm["emoji"]) <= 2
    assert isinstance(fm["short_description"], str) and 0 < len(fm["short_description"]) <= 60  # the Hub's limit
    assert fm.get("suggested_hardware", "cpu-basic") in FLAVOURS
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", m) for m in fm.get("models", []))
    # retired (persistent storage) or of no use here (the models come from PyPI, not the Hub)
    assert "suggested_storage" not in fm and "preload_from_hub" not in fm


def test_the_space_installs_the_runtime_only_and_the_test_command_adds_the_tools():
    runtime, tests = pins("requirements.txt"), pins("requirements-test.txt")
    assert not TEST_TOOLS & set(runtime), f"test tools in what a Space installs: {TEST_TOOLS & set(runtime)}"
    assert set(tests) >= TEST_TOOLS
    assert "-r requirements.txt" in (ROOT / "requirements-test.txt").read_text().splitlines()
    assert "pip install -q -r requirements-test.txt" in (ROOT / "tests" / "run.sh").read_text()
    assert "ninja" in runtime  # torch's C++ extension build runs it on the Space


def test_packages_txt_asks_debian_for_the_kernel_compiler():
    lines = (ROOT / "packages.txt").read_text().splitlines()
    # each line goes to apt-get install as it is: no comments, no blanks, Debian package names only
    assert lines and all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", ln) for ln in lines), lines
    assert "g++" in lines
    if Path("/usr/bin/apt-cache").exists():
        for name in lines:
            ok = subprocess.run(["apt-cache", "show", name], capture_output=True).returncode == 0
            assert ok, f"apt-cache knows no package {name!r}"


# ---------------------------------------------------------------- the cache


def test_the_cache_goes_where_a_space_keeps_it(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(cache, "persistent_root", lambda: spaces.persistent_root(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("SPECVIZ_CACHE", "SYSTEM", "SPACE_ID"):
        monkeypatch.delenv(var, raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "specviz"  # off a Space a /data folder is not ours
    monkeypatch.setenv("SYSTEM", "spaces")
    assert cache.cache_dir() == data / "specviz-cache"  # persistent storage: a restart starts warm
    monkeypatch.setenv("SPECVIZ_CACHE", str(tmp_path / "bucket"))  # e.g. a storage bucket's mount path
    assert cache.cache_dir() == tmp_path / "bucket"
    monkeypatch.delenv("SPECVIZ_CACHE")
    monkeypatch.setattr(cache, "persistent_root", lambda: None)  # a Space without persistent storage
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "specviz"


def test_persistent_root_is_a_writable_folder_or_none(tmp_path):
    assert spaces.persistent_root(tmp_path) == tmp_path
    assert spaces.persistent_root(tmp_path / "absent") is None
    (tmp_path / "file").write_text("x")
    assert spaces.persistent_root(tmp_path / "file") is None


def test_an_unwritable_home_gets_a_temporary_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(tmp_path / "home")))
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    monkeypatch.setenv("HOME", str(home))
    for var in ("SPECVIZ_CACHE", "SYSTEM", "SPACE_ID"):
        monkeypatch.delenv(var, raising=False)
    try:
        got = cache.cache_dir()
    finally:
        home.chmod(0o700)
    assert got.parent == Path(__import__("tempfile").gettempdir()) and got.name.startswith("specviz-cache")


# ---------------------------------------------------------------- the status bar


def test_the_loading_view_shows_progress_elapsed_time_and_what_works_meanwhile():
    st = LoadState("loading", "qwen-coder-1.5b", 0.42, "target: dequantising GGUF (once)", since=100.0)
    out = preset_status_html(st, now=137.4)
    assert 'aria-valuenow="42"' in out and "qwen-coder-1.5b (42%, 37 s): target: dequantising GGUF" in out
    assert "page works while they load" in out and "builds the model cache" in out  # the embedded pair's first start
    assert "model cache" not in preset_status_html(LoadState("loading", "tiny-random", 0.1, "starting", since=1.0))

    class Two:
        def statuses(self):
            return [st, LoadState("loading", "tiny-random", 0.0, "waiting", since=0.0)]

    both = model_status_html(Two())  # type: ignore[arg-type]
    assert both.count("page works while they load") == 1 and both.count("sv-busy") == 2


def test_kernel_note_names_the_fallback_only_when_the_kernel_is_not_used():
    assert kernel_note({"device": "cpu", "linear": "specviz packed kernel"}) is None
    assert kernel_note({"device": "cpu", "linear": "specviz packed kernel (from the packed cache)"}) is None
    assert kernel_note({"device": "cuda", "linear": "static KV cache + CUDA graphs"}) is None
    note = kernel_note({"device": "cpu", "linear": "mkldnn (kernel build failed: Ninja is required)"})
    assert note and "oneDNN" in note and "build failed: Ninja is required" in note and "packages.txt" in note
    ready = LoadState("ready", "tiny-random", 1.0, "ready", {"device": "cpu", "dtype": "float32", "linear": "mkldnn"})
    assert "sv-warn" in preset_status_html(ready) and "slower fallback" in preset_status_html(ready)


def test_with_the_kernel_off_the_status_bar_says_the_slow_fallback_runs():
    """SPECVIZ_KERNEL=0 (in a fresh process: the kernel's state is kept per process) on the tiny pair."""
    code = (
        "from specviz.ui.models import ModelManager\n"
        "from specviz.ui.page import model_status_html\n"
        "m = ModelManager('tiny-random', warmup=False); m.request_all(); m.settle()\n"
        "print(model_status_html(m))\n"
    )
    env = {**os.environ, "SPECVIZ_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "models ready: tiny-random" in out.stdout
    assert "sv-warn" in out.stdout and "not our CPU kernel: off (SPECVIZ_KERNEL=0)" in out.stdout


# ---------------------------------------------------------------- ZeroGPU


def model_handlers() -> set[str]:
    """module.Class.method of every page method that runs the models (calls stream_run, run_on_pair or builds a
    StepSession): the handlers the ZeroGPU contract says must be decorated, and no others."""
    found = set()
    for path in sorted((ROOT / "specviz" / "ui").glob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            for fn in [n for n in cls.body if isinstance(n, ast.FunctionDef)]:
                calls = {getattr(c.func, "id", getattr(c.func, "attr", None)) for c in ast.walk(fn) if isinstance(c, ast.Call)}
                if calls & {"stream_run", "run_on_pair", "StepSession"}:
                    found.add(f"specviz.ui.{path.stem}.{cls.name}.{fn.name}")
    return found


def test_every_model_handler_is_marked_for_the_gpu_and_nothing_else():
    from specviz.ui import page  # noqa: F401 - imports every tab, so every decorator has run
    from specviz.ui.zerogpu import GPU_TASKS

    assert set(GPU_TASKS) == model_handlers(), "mark exactly the handlers that run the models (replays need no GPU)"
    assert len(GPU_TASKS) == len(set(GPU_TASKS))


IMPORT_CHECK = """
import json, pkgutil, importlib, sys
import spaces  # the fake: from here on, CUDA initialised outside a decorated call raises
import torch
import app
import specviz
for m in pkgutil.walk_packages(specviz.__path__, "specviz."):
    if ".bench" in m.name or m.name.endswith("__main__"):
        continue  # the benches may ask for CUDA on purpose; the Space never imports them
    importlib.import_module(m.name)
from specviz.ui.models import ModelManager
from specviz.ui.page import build_app
from specviz.ui.zerogpu import GPU_TASKS, expose
manager = ModelManager("tiny-random")
demo = build_app(manager)
expose(demo, duration=42, gate=manager.settle)
print(json.dumps({"tasks": GPU_TASKS, "cuda": torch.cuda.is_initialized()}))
"""


def test_importing_the_app_on_zero_gpu_decorates_the_handlers_and_touches_no_cuda(tmp_path):
    log = tmp_path / "spaces.jsonl"
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "FAKE_SPACES_LOG": str(log), "PYTHONPATH": str(FAKE_SPACES)}
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [e for e in events if e["event"] == "cuda_outside_gpu"], events
    assert result["cuda"] is False
    decorated = {e["name"] for e in events if e["event"] == "decorated"}
    assert decorated == set(result["tasks"]) == model_handlers()
    assert all(e["generator"] for e in events if e["event"] == "decorated")  # each streams its updates


def test_on_zero_gpu_the_job_budget_defaults_to_a_minute_and_flags_come_from_specviz_args(monkeypatch):
    import app

    assert app.parse_args(["--preset", "tiny-random"]).job_seconds == 180
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert app.parse_args(["--preset", "tiny-random"]).job_seconds == 60
    assert app.parse_args(["--preset", "tiny-random", "--job-seconds", "20"]).job_seconds == 20
    monkeypatch.setenv("SPECVIZ_ARGS", "--presets 'tiny-random' --keep-exports 7")
    assert app.env_args() == ["--presets", "tiny-random", "--keep-exports", "7"]
    monkeypatch.setenv("SPECVIZ_ARGS", "--presets 'tiny")
    with pytest.raises(SystemExit) as e:
        app.env_args()
    assert e.value.code == 2


def test_on_zero_gpu_loading_skips_graphs_compile_warmup_and_cuda_calls(monkeypatch):
    import torch

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(loading, "pick_device", lambda _d=None: torch.device("cuda"))
    monkeypatch.setattr(loading._Placement, "finish", lambda self, model, role, folder=None: model)

    def never(*_a, **_k):
        raise AssertionError("CUDA graphs, torch.compile or a CUDA call on ZeroGPU outside a GPU worker")

    monkeypatch.setattr(loading, "_gpu_fast_path", never)
    pair = loading.load_pair("tiny-random")
    assert pair.device.type == "cuda" and "ZeroGPU" in pair.info["linear"]
    assert not hasattr(pair.target, "warm")  # a plain LM: nothing to capture
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as the spaces package patches it
    monkeypatch.setattr(torch.cuda, "empty_cache", never)
    pair.close()
    monkeypatch.setattr(models, "warm", never)  # warming runs the models: not in ZeroGPU's main process
    manager = ModelManager("tiny-random", loader=lambda preset, progress: pair)
    manager.request_all()
    manager.settle()
    assert manager.status().state == "ready", manager.status().message


@pytest.mark.slow  # serves the app in a subprocess
@pytest.mark.browser
def test_a_run_on_zero_gpu_crosses_the_gpu_worker_boundary(browser, tmp_path):
    """The app with the fake `spaces` (SPACES_ZERO_GPU=true): a Run and a Step in chromium go through the decorated
    handlers, whose arguments and every update travel pickled, and finish as they do elsewhere."""
    log = tmp_path / "spaces.jsonl"
    env = {"SPACES_ZERO_GPU": "true", "FAKE_SPACES_LOG": str(log), "PYTHONPATH": str(FAKE_SPACES)}
    with serve(env=env, log_name="app-zerogpu.log") as url:  # the job budget is ZeroGPU's default
        page = open_page(browser, url)
        set_prompt(page, "def add(a, b):\n    return a + b\n")
        set_number(page, "sv-max-new", 24)
        page.click("#sv-run")
        status = wait_status(page, r"^\W*ok\W+done")
        assert "identical to plain" in status
        assert page.locator("#sv-stream .sv-accepted").count() > 0
        page.click("#sv-step")
        page.wait_for_selector("#sv-step-panel .sv-steppanel[data-step='1']")
        page.screenshot(path=str(ARTIFACTS / "zerogpu-run.png"), full_page=True)
        page.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [e for e in events if e["event"] == "cuda_outside_gpu"], events
    calls = [e for e in events if e["event"] == "call"]
    assert {c["name"].rsplit(".", 1)[1] for c in calls} >= {"_run", "_step"}
    assert all(c["duration"] == 90 for c in calls)  # ZeroGPU's job budget (60 s) plus 30 s of worker start-up


# ---------------------------------------------------------------- the Space's start-up


@pytest.mark.slow  # a fresh start compiles the CPU kernel (about a minute on 2 cores)
@pytest.mark.browser
def test_the_app_starts_as_on_a_space_and_serves_a_run(browser, tmp_path):
    """`python app.py` as the Spaces runtime starts it: no flags (the operator's flags in $SPECVIZ_ARGS, a Space
    variable), a fresh home and so a fresh cache, the runtime's variables, listening on 0.0.0.0 on the port it is
    given. The page is up at once with the loading view; the pair loads; a Run finishes."""
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    env = {
        **keep,
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        # https://huggingface.co/docs/hub/spaces-overview#helper-environment-variables, and what Gradio reads
        "SYSTEM": "spaces",
        "SPACE_ID": "specviz/specviz",
        "SPACE_AUTHOR_NAME": "specviz",
        "SPACE_REPO_NAME": "specviz",
        "SPACE_TITLE": "specviz",
        "SPACE_HOST": "specviz-specviz.hf.space",
        "CPU_CORES": "2",
        "MEMORY": "16Gi",
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_NUM_PORTS": "1",
        "SPECVIZ_ARGS": "--preset tiny-random --threads 1",
    }
    log = ARTIFACTS / "app-space.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:  # up within seconds: the pair loads after the server is
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"app.py did not answer within 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url + "/?__theme=light")
        page.wait_for_selector("#sv-run", timeout=60_000)
        page.wait_for_function(  # the page's first poll replaces the line it was built with
            "() => /loading tiny-random|models ready/.test(document.querySelector('#sv-model-status').innerText)",
            polling=200,
            timeout=60_000,
        )
        loading_text = page.locator("#sv-model-status").inner_text()
        page.screenshot(path=str(ARTIFACTS / "space-loading.png"))
        if "models ready" not in loading_text:  # (a machine that builds the kernel fast may be done already)
            assert re.search(r"loading tiny-random \(\d+%, \d+ s\): starting", loading_text), loading_text
            assert "page works while they load" in loading_text
        page.wait_for_selector("#sv-model-status .sv-ok", timeout=300_000)
        ready = page.locator("#sv-model-status").inner_text()
        assert "models ready: tiny-random (cpu, float32" in ready
        assert "slower fallback" not in ready, f"the kernel did not build on the fresh start: {ready}"
        set_prompt(page, "def add(a, b):\n    return a + b\n")
        page.click("#sv-run")
        assert "identical to plain" in wait_status(page, r"^\W*ok\W+done", timeout=120)
        page.screenshot(path=str(ARTIFACTS / "space-run.png"), full_page=True)
        page.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    # the fresh cache and the kernel build went to the new home, the one place it may write
    assert (home / ".cache" / "specviz" / "torch_extensions" / "specviz").is_dir()
    text = GRADIO_LOOP_NOISE.sub("", log.read_text())
    assert "Traceback" not in text, f"the app logged a traceback:\n{text[-3000:]}"
