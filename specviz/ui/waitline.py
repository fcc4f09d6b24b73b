"""The Run tab's queue for live runs: first come, first served, one run on the models at a time, each waiting run told
its place and an estimated wait from the tokens per second that recent runs measured and the max new tokens of the
runs ahead of it. No gradio here."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

RECENT = 8  # runs per preset whose measured speed the estimate averages


@dataclass
class Ticket:
    """One live run in the line: its preset, its max new tokens, and when it got its turn (None while it waits)."""

    id: int
    preset: str
    max_new_tokens: int
    started: float | None = None


@dataclass(frozen=True)
class Place:
    """Where a waiting run stands: `ahead` runs before it (the first holds the turn), `waiting` runs behind that
    first one (itself included), so `ahead` is its place among them; and the estimated seconds until its turn (None
    before any run was measured)."""

    ahead: int
    waiting: int
    eta_s: float | None
    tokens_per_s: float | None

    def text(self) -> str:
        """The status line a waiting visitor reads."""
        pos = f"queue: {self.ahead}/{self.waiting}"
        runs = f"{self.ahead} live run{'s' if self.ahead != 1 else ''} ahead of yours"
        if self.eta_s is None:
            return f"{pos}: {runs}; the wait is estimated once a run here has finished"
        return (
            f"{pos}: {runs}, estimated wait about {max(1, round(self.eta_s))} s (from the {self.tokens_per_s:.1f} "
            "tokens/s recent runs measured and the max new tokens of the runs ahead, each with its plain baseline)"
        )


@dataclass
class WaitLine:
    """Live runs in order of arrival; the first holds the turn until it leaves. `measured` keeps each preset's recent
    (tokens, seconds) of whole runs (speculative plus baseline)."""

    _line: list[Ticket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=itertools.count)
    measured: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)

    def join(self, preset: str, max_new_tokens: int) -> Ticket:
        """A new ticket at the end of the line."""
        with self._lock:
            t = Ticket(next(self._ids), preset, max_new_tokens)
            self._line.append(t)
            return t

    def leave(self, ticket: Ticket) -> None:
        """The run is over (or went away): the next one gets the turn."""
        with self._lock:
            if ticket in self._line:
                self._line.remove(ticket)

    def turn(self, ticket: Ticket, now: float | None = None) -> bool:
        """True once `ticket` is first; the first call that finds it so starts its clock."""
        with self._lock:
            first = bool(self._line) and self._line[0] is ticket
            if first and ticket.started is None:
                ticket.started = time.monotonic() if now is None else now
            return first

    def __len__(self) -> int:
        with self._lock:
            return len(self._line)

    def record(self, preset: str, tokens: int, seconds: float) -> None:
        """A finished run's tokens (speculative run and baseline together) and the seconds they took."""
        if tokens > 0 and seconds > 0:
            self.measured.setdefault(preset, deque(maxlen=RECENT)).append((tokens, seconds))

    def rate(self, preset: str) -> float | None:
        """Tokens per second of `preset`'s recent runs (None before one finished)."""
        runs = list(self.measured.get(preset, ()))
        secs = sum(s for _, s in runs)
        return sum(n for n, _ in runs) / secs if secs > 0 else None

    def cost(self, t: Ticket) -> float | None:
        """The estimated seconds a run takes: its run and its plain baseline, max_new_tokens each, at its preset's
        measured rate."""
        rate = self.rate(t.preset)
        return 2 * t.max_new_tokens / rate if rate else None

    def place(self, ticket: Ticket, now: float | None = None) -> Place:
        """Where `ticket` stands; the running run counts what it has left of its estimate."""
        now = time.monotonic() if now is None else now
        with self._lock:
            line = list(self._line)
        i = line.index(ticket) if ticket in line else 0
        ahead = line[:i]
        eta: float | None = 0.0
        for t in ahead:
            c = self.cost(t)
            if c is None:
                eta = None
                break
            eta += max(0.0, c - (now - t.started)) if t.started is not None else c
        return Place(i, max(0, len(line) - 1), eta, self.rate(ticket.preset))
