"""The shared model pairs: ModelManager keeps the presets the operator allows loaded side by side (each loaded once in
a background thread, with progress and friendly errors; a visitor can only pick among them, never unload one), bounds
every job with a time budget, `friendly` words errors for the page; `gpu_task` (from zerogpu.py) marks work that needs
the GPU on a ZeroGPU Space. No gradio here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from specviz.backends.loading import ModelPair, load_pair
from specviz.backends.spaces import on_zero_gpu
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.proposers import build_proposer
from specviz.ui.zerogpu import gpu_task

__all__ = ["JOB_SECONDS", "LoadState", "ModelManager", "friendly", "gpu_task", "warm"]

log = logging.getLogger("specviz.ui")
Loader = Callable[..., ModelPair]
JOB_SECONDS = 180.0  # the default time budget of one job on the models (Run, Compare, a lab measurement)


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
    """Where one preset's pair stands: state is idle | loading | ready | error; since: when its load began
    (time.monotonic(); 0 before that)."""

    state: str
    preset: str
    fraction: float = 0.0
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0


class ModelManager:
    """The model pairs all visitors share: one per allowed preset, loaded side by side (the first is the default), so
    a visitor's choice never unloads what another visitor's run uses. `lock` is held while a job uses any pair (one job
    at a time on the machine); `owners[preset]` is the last job that used that pair's KV caches; `job_seconds` is every
    job's time budget."""

    def __init__(
        self,
        preset: str,
        loader: Loader = load_pair,
        warmup: bool = True,
        allowed: Sequence[str] | None = None,
        job_seconds: float = JOB_SECONDS,
    ) -> None:
        self.loader = loader
        self.warmup = warmup
        self.allowed: tuple[str, ...] = tuple(dict.fromkeys([preset, *(allowed or ())]))
        self.job_seconds = job_seconds
        self.lock = threading.Lock()
        self.owners: dict[str, object] = {}
        self._pairs: dict[str, ModelPair] = {}
        self._states = {p: LoadState("idle", p) for p in self.allowed}
        self._cond = threading.Condition()
        self._load_one = threading.Lock()  # loads run one after another, never two at once

    @property
    def preset(self) -> str:
        """The default preset (the operator's first)."""
        return self.allowed[0]

    @property
    def pair(self) -> ModelPair | None:
        """The default preset's pair (None until loaded)."""
        return self._pairs.get(self.preset)

    def pair_for(self, preset: str) -> ModelPair | None:
        """`preset`'s pair (None until it is loaded)."""
        return self._pairs.get(preset)

    def check(self, preset: str) -> str:
        """`preset` when the operator allows it; otherwise a ConfigError that names the allowed ones (nothing changes)."""
        if preset not in self.allowed:
            raise ConfigError(
                f"preset {preset!r} is not offered here; pick one of: {', '.join(self.allowed)} "
                "(the operator chooses them with app.py --presets)"
            )
        return preset

    def status(self, preset: str | None = None) -> LoadState:
        """Where `preset` (default: the default preset) stands."""
        with self._cond:
            return self._states[preset or self.preset]

    def statuses(self) -> list[LoadState]:
        """Where every allowed preset stands, in the operator's order."""
        with self._cond:
            return [self._states[p] for p in self.allowed]

    def _set(self, preset: str, **kw: Any) -> None:
        with self._cond:
            self._states[preset] = LoadState(**{**self._states[preset].__dict__, **kw})
            self._cond.notify_all()

    def request(self, preset: str) -> LoadState:
        """Start loading an allowed `preset` unless it is loaded or loading (a failed load is tried again); returns
        its state. A preset outside the allowed list is a ConfigError and changes nothing."""
        self.check(preset)
        with self._cond:
            st = self._states[preset]
            if st.state in ("loading", "ready"):
                return st
            self._states[preset] = LoadState("loading", preset, 0.0, "waiting for another preset to finish loading")
        threading.Thread(target=self._load, args=(preset,), name=f"load-{preset}", daemon=True).start()
        return self.status(preset)

    def request_all(self) -> None:
        """Load every allowed preset, the default first (app start)."""
        for p in self.allowed:
            self.request(p)

    def _load(self, preset: str) -> None:
        """Load and warm `preset`'s pair (in its own thread, after any other load), then publish it."""
        with self._load_one:
            self._set(preset, fraction=0.0, message="loading", since=time.monotonic())
            try:
                pair = self.loader(preset, progress=lambda f, m: self._set(preset, fraction=min(f, 0.99), message=m))
                if self.warmup and not on_zero_gpu():  # on ZeroGPU the models may run only inside GPU workers
                    self._set(preset, fraction=0.99, message="warming up")
                    with self.lock:  # warming runs the models: not while a visitor's job measures on them
                        warm(pair)
            except Exception as e:  # noqa: BLE001 - a failed load is shown on the page; the app keeps running
                log.exception("loading preset %s failed", preset)
                self._set(preset, state="error", message=f"could not load preset {preset!r}: {friendly(e)}")
                return
        with self._cond:
            self._pairs[preset] = pair
            self._states[preset] = LoadState("ready", preset, 1.0, "ready", dict(pair.info))
            self._cond.notify_all()

    def wait(self, preset: str, poll: float = 0.25) -> Iterator[LoadState]:
        """Request `preset` and yield its state every `poll` seconds until it is ready or failed (then yield it last)."""
        st = self.request(preset)
        while st.state not in ("ready", "error"):
            yield st
            with self._cond:
                self._cond.wait(poll)
                st = self._states[preset]
        yield st

    def settle(self, poll: float = 0.5) -> None:
        """Block until no allowed preset is loading (each requested one is ready or failed)."""
        with self._cond:
            while any(st.state == "loading" for st in self._states.values()):
                self._cond.wait(poll)

    def close(self) -> None:
        with self.lock:
            for pair in self._pairs.values():
                pair.close()
            self._pairs.clear()


def warm(pair: ModelPair) -> None:
    """A few tokens through each model, so the first visitor's timings do not include one-off start-up costs."""
    cfg = GenConfig(gamma=2, max_new_tokens=4)
    ids = pair.codec.encode("Hello")
    for name in ("plain", "draft") if pair.draft is not None else ("plain",):
        run(pair.target, build_proposer(name, pair, cfg), ids, cfg, eos_ids=(), instrument=False).run()
