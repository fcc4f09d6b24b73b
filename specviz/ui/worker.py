"""The one worker-thread runner of the UI: a job runs on the shared model pair in a daemon thread that holds the models'
lock, and reports to the page's handler through typed messages on a queue. No gradio here."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError
from specviz.core.events import RunSummary, StepEvent
from specviz.ui.models import ModelManager

Kind = Literal["started", "progress", "event", "summary", "result", "error"]


@dataclass(frozen=True)
class Message:
    """One report from the worker. started: value is the pair the job got; progress: value is a line of text;
    event / summary: a StepEvent / RunSummary of run number `run` in the job's plan; result: the job's return value;
    error: the exception it raised. Exactly one result or error comes, last."""

    kind: Kind
    value: Any = None
    run: int = 0
    fraction: float | None = None  # progress: how far along, when known

    @property
    def last(self) -> bool:
        return self.kind in ("result", "error")


class Worker:
    """Runs job(pair, worker) in its own thread with the models' lock held (so a preset swap waits for it and one job
    at a time uses the models); the job reports through progress(), event() and summary() and checks should_stop()."""

    def __init__(
        self,
        manager: ModelManager,
        job: Callable[[ModelPair, Worker], Any],
        stop: threading.Event,
        name: str = "specviz-worker",
    ) -> None:
        self.manager, self.job, self.stop = manager, job, stop
        self._q: queue.Queue[Message] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    # -- called by the job, in the worker thread

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def progress(self, text: str, fraction: float | None = None) -> None:
        self._q.put(Message("progress", text, fraction=fraction))

    def event(self, run: int, ev: StepEvent) -> None:
        self._q.put(Message("event", ev, run))

    def summary(self, run: int, s: RunSummary) -> None:
        self._q.put(Message("summary", s, run))

    def _work(self) -> None:
        try:
            with self.manager.lock:
                pair = self.manager.pair
                if pair is None:
                    raise ConfigError("the models are not loaded (a preset switch may be under way): try again")
                self.manager.owner = self  # the KV caches are this job's now: a step-mode session replays first
                self._q.put(Message("started", pair))
                result = self.job(pair, self)
            self._q.put(Message("result", result))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which shows it (never a traceback)
            self._q.put(Message("error", e))

    # -- called by the consumer

    def drain(self, timeout: float) -> list[Message]:
        """Every waiting message, waiting up to `timeout` seconds for the first ([] when none came)."""
        try:
            msgs = [self._q.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                msgs.append(self._q.get_nowait())
            except queue.Empty:
                return msgs

    def messages(self) -> Iterator[Message]:
        """Each message as it comes, up to the last; a consumer that goes away early stops the job at its next check."""
        ended = False
        try:
            while not ended:
                m = self._q.get()
                ended = m.last
                yield m
        finally:
            if not ended:
                self.stop.set()
