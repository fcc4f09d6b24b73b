"""The shared model pair: ModelManager loads a preset in a background thread (progress, friendly errors; a swap waits
for the running generation and frees the old pair), `friendly` words errors for the page and `gpu_task` marks work
that needs the GPU on a ZeroGPU Space. No gradio here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from specviz.backends.loading import ModelPair, load_pair
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.presets import model_presets
from specviz.proposers import build_proposer

log = logging.getLogger("specviz.ui")
Loader = Callable[..., ModelPair]

try:  # Hugging Face ZeroGPU: GPU work must run inside spaces.GPU; elsewhere the decorator is a no-op
    import spaces  # type: ignore[import-not-found]

    gpu_task: Callable[[Callable], Callable] = spaces.GPU(duration=120)
except Exception:  # noqa: BLE001 - any import problem means: not on a Space with ZeroGPU

    def gpu_task(fn: Callable) -> Callable:
        return fn


def friendly(e: BaseException) -> str:
    """A one-line message for the page; ConfigError messages are already written for users."""
    if isinstance(e, ConfigError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return (
        f"something went wrong ({type(e).__name__}: {first}). The app is still running: change a setting and try again."
    )


@dataclass(frozen=True)
class LoadState:
    """Where the shared model pair stands: state is idle | loading | ready | error."""

    state: str
    preset: str
    fraction: float = 0.0
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class ModelManager:
    """One loaded model pair shared by all visitors. `lock` is held while a generation uses the models, so a preset
    swap waits for it; loading happens in a background thread with progress."""

    def __init__(self, preset: str, loader: Loader = load_pair, warmup: bool = True) -> None:
        self.loader = loader
        self.warmup = warmup
        self.lock = threading.Lock()
        self.pair: ModelPair | None = None
        self.owner: object | None = None  # the last run that used the KV caches (step sessions replay if not them)
        self._cond = threading.Condition()
        self._gen = 0
        self._state = LoadState("idle", preset)

    @property
    def preset(self) -> str:
        return self._state.preset

    def status(self) -> LoadState:
        with self._cond:
            return self._state

    def _set(self, gen: int, **kw: Any) -> None:
        with self._cond:
            if gen == self._gen:
                self._state = LoadState(**{**self._state.__dict__, **kw})
                self._cond.notify_all()

    def request(self, preset: str) -> LoadState:
        """Make `preset` the loaded pair (no-op when it is loaded or loading); returns the state."""
        with self._cond:
            st = self._state
            if st.preset == preset and st.state in ("loading", "ready"):
                return st
            if preset not in model_presets():
                raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(model_presets())}")
            self._gen += 1
            gen = self._gen
            self._state = LoadState("loading", preset, 0.0, "waiting for the current run to finish")
        threading.Thread(target=self._load, args=(preset, gen), name=f"load-{preset}", daemon=True).start()
        return self.status()

    def _load(self, preset: str, gen: int) -> None:
        with self.lock:  # a running generation finishes before its models go
            old, self.pair, self.owner = self.pair, None, None
        if old is not None:
            old.close()
        self._set(gen, fraction=0.0, message="loading")
        try:
            pair = self.loader(preset, progress=lambda f, m: self._set(gen, fraction=min(f, 0.99), message=m))
            if self.warmup:
                self._set(gen, fraction=0.99, message="warming up")
                warm(pair)
        except Exception as e:  # noqa: BLE001 - a failed load is shown on the page; the app keeps running
            log.exception("loading preset %s failed", preset)
            self._set(gen, state="error", message=f"could not load preset {preset!r}: {friendly(e)}")
            return
        with self._cond:
            if gen != self._gen:  # superseded by a newer request while loading
                pair.close()
                return
            self.pair = pair
            self._state = LoadState("ready", preset, 1.0, "ready", dict(pair.info))
            self._cond.notify_all()

    def wait(self, preset: str, poll: float = 0.25) -> Iterator[LoadState]:
        """Request `preset` and yield its state every `poll` seconds until it is ready or failed (then yield it last)."""
        st = self.request(preset)
        while st.state not in ("ready", "error") or st.preset != preset:
            yield st
            with self._cond:
                self._cond.wait(poll)
                st = self._state
            if st.preset != preset:  # someone asked for another preset meanwhile: ask again
                st = self.request(preset)
        yield st

    def close(self) -> None:
        with self.lock:
            if self.pair is not None:
                self.pair.close()
            self.pair = None


def warm(pair: ModelPair) -> None:
    """A few tokens through each model, so the first visitor's timings do not include one-off start-up costs."""
    cfg = GenConfig(gamma=2, max_new_tokens=4)
    ids = pair.codec.encode("Hello")
    for name in ("plain", "draft") if pair.draft is not None else ("plain",):
        run(pair.target, build_proposer(name, pair, cfg), ids, cfg, eos_ids=(), instrument=False).run()
