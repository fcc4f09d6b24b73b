"""The one worker-thread runner of the UI: a job runs on one of the shared model pairs in a daemon thread that holds the
models' lock, within the manager's time budget, and reports to the page's handler through typed messages on a queue.
No gradio here."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError
from specviz.core.events import RunSummary, StepEvent
from specviz.ui.models import ModelManager

Kind = Literal["started", "progress", "event", "summary", "result", "error", "waiting"]


@dataclass(frozen=True)
class Message:
    """One report from the worker. started: value is the pair the job got; progress: value is a line of text;
    event / summary: a StepEvent / RunSummary of run number `run` in the job's plan; result: the job's return value;
    error: the exception it raised. Exactly one result or error comes, last. waiting: made up by messages() for a
    consumer that asked to hear while the job has not got the models yet."""

    kind: Kind
    value: Any = None
    run: int = 0
    fraction: float | None = None  # progress: how far along, when known

    @property
    def last(self) -> bool:
        return self.kind in ("result", "error")


def budget_message(seconds: float) -> str:
    """What a visitor reads when their job ran out of time."""
    return (
        f"this job reached its time budget of {seconds:g} s (the operator sets it with app.py --job-seconds), so the "
        "models are free for the next visitor"
    )


class Worker:
    """Runs job(pair, worker) in its own thread with the models' lock held (one job at a time uses the models) on
    `preset`'s pair (default: the manager's default); the job reports through progress(), event() and summary() and
    checks should_stop(), which also turns true once the job has held the models for manager.job_seconds."""

    def __init__(
        self,
        manager: ModelManager,
        job: Callable[[ModelPair, Worker], Any],
        stop: threading.Event,
        name: str = "specviz-worker",
        preset: str | None = None,
    ) -> None:
        self.manager, self.job, self.stop = manager, job, stop
        self.preset = preset or manager.preset
        self.deadline = float("inf")  # set when the job gets the models
        self.over_budget = False
        self._q: queue.Queue[Message] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    # -- called by the job, in the worker thread

    def should_stop(self) -> bool:
        if not self.over_budget and time.monotonic() > self.deadline:
            self.over_budget = True  # the budget is spent: stop like Stop does, and say why
            self.stop.set()
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
                pair = self.manager.pair_for(self.preset)
                if pair is None:
                    raise ConfigError(f"the models of preset {self.preset!r} are not loaded yet: try again")
                self.deadline = time.monotonic() + self.manager.job_seconds
                self.manager.owners[self.preset] = self  # the KV caches are this job's now: step mode replays first
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

    def messages(self, waiting: float | None = None) -> Iterator[Message]:
        """Each message as it comes, up to the last; a consumer that goes away early stops the job at its next check.
        waiting: also a 'waiting' message every that many seconds until the job has the models."""
        ended = started = False
        try:
            while not ended:
                try:
                    m = self._q.get(timeout=waiting if waiting and not started else None)
                except queue.Empty:
                    yield Message("waiting")
                    continue
                started = True
                ended = m.last
                yield m
        finally:
            if not ended:
                self.stop.set()
