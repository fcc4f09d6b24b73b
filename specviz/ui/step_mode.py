"""Classroom step mode: a StepSession advances a visitor's generation by exactly one verification step per press,
replaying the seeded run first when someone else used the shared models' KV caches in between. No gradio here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError
from specviz.core.engine import SpecRun, run
from specviz.core.events import RunSummary, StepEvent
from specviz.proposers import build_proposer
from specviz.ui.models import ModelManager
from specviz.ui.session import RunRequest, RunState, Track

DETAIL_TOP = 10  # tokens shown in the step-mode p/q chart


class StepSession:
    """A visitor's generation in step mode: advance() runs exactly one more verification step. The shared models'
    KV caches may have been used by someone else in between; then the run is replayed (same seed, same events) up to
    where it was before going on."""

    def __init__(self, manager: ModelManager, req: RunRequest) -> None:
        self.manager, self.req = manager, req
        self.steps: list[StepEvent] = []
        self.details: dict[int, dict[str, Any]] = {}
        self.finished = False
        self.summary: RunSummary | None = None
        self.chat = False
        self._it: Iterator[StepEvent] | None = None
        self._run: SpecRun | None = None

    def _start(self, pair: ModelPair) -> None:
        cfg = self.req.cfg
        proposer = build_proposer(self.req.strategy, pair, cfg)
        ids = pair.codec.encode(self.req.prompt)
        self.chat = pair.codec.chat
        self._run = run(
            pair.target, proposer, ids, cfg, eos_ids=pair.codec.eos_ids, piece=pair.codec.piece, detail_top=DETAIL_TOP
        )
        self._it = iter(self._run)
        deadline = time.monotonic() + self.manager.job_seconds  # a replay holds the models too: same budget as a job
        for old in self.steps:  # replay to where we were; seeded, so the events repeat
            ev = next(self._it)
            if [t.id for t in ev.tokens] != [t.id for t in old.tokens]:
                raise ConfigError("the replayed run diverged from the one shown: press Step to start over")
            if time.monotonic() > deadline:
                self._it = None
                raise ConfigError(
                    f"replaying your step-by-step run passed the {self.manager.job_seconds:g} s budget of one job: "
                    "press Step to start over"
                )
        self.manager.owners[self.req.preset] = self

    def advance(self) -> StepEvent | None:
        """One more verification step (None when the run is over)."""
        if self.finished:
            return None
        with self.manager.lock:
            pair = self.manager.pair_for(self.manager.check(self.req.preset))
            if pair is None:
                raise ConfigError(f"the models of preset {self.req.preset!r} are not loaded yet: try again")
            if self._it is None or self.manager.owners.get(self.req.preset) is not self:
                self._start(pair)
            assert self._it is not None
            try:
                ev = next(self._it)
            except StopIteration:
                ev = None
            if ev is not None:
                detail = getattr(ev, "detail", None)  # the engine's top-N p, q and residual where the target spoke
                if detail is not None:
                    self.details[ev.step] = detail
                self.steps.append(ev)
            if ev is None or ev.finished:
                for _ in self._it:  # let the engine build its summary
                    pass
                self.finished = True
                assert self._run is not None
                self.summary = self._run.summary
                if self.summary is not None:
                    self.summary.text = pair.codec.decode(self.summary.output_ids)
            return ev

    def state(self) -> RunState:
        tr = Track(self.req.strategy, self.req.strategy, list(self.steps), self.summary)
        last = self.steps[-1] if self.steps else None
        if self.finished:
            msg = f"step mode finished: {last.total_tokens if last else 0} tokens in {len(self.steps)} steps"
        else:
            msg = f"step mode: step {len(self.steps)} shown; press Step for the next"
        return RunState(
            "done" if self.finished else "step",
            msg,
            self.req,
            [tr],
            prompt_shown="" if self.chat else self.req.prompt,
            chat=self.chat,
            details=dict(self.details),
            current=last.step if last else None,
        )
