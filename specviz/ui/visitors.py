"""Per-visitor server state, kept apart by Gradio session id: each visitor's Stop flag, step-mode session and replay
player. No gradio here."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from specviz.ui.replay import Player
from specviz.ui.step_mode import StepSession


@dataclass
class Visitor:
    """Per-visitor server state: the Stop flag, a step-mode session and the replay player."""

    stop: threading.Event = field(default_factory=threading.Event)
    step: StepSession | None = None
    replay: Player = field(default_factory=Player)


class Visitors:
    """Visitor state by Gradio session id, oldest dropped beyond `capacity`."""

    def __init__(self, capacity: int = 500) -> None:
        self._d: OrderedDict[str, Visitor] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def get(self, sid: str | None) -> Visitor:
        sid = sid or "anonymous"
        with self._lock:
            v = self._d.pop(sid, None) or Visitor()
            self._d[sid] = v
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
            return v

    def of(self, request: Any) -> Visitor:
        """The visitor behind a Gradio request (None or a request without a session share one anonymous visitor)."""
        return self.get(getattr(request, "session_hash", None))

    def fresh_stop(self, request: Any) -> threading.Event:
        """The visitor's Stop flag, cleared for a new run."""
        stop = self.of(request).stop
        stop.clear()
        return stop

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._d.pop(sid or "anonymous", None)
