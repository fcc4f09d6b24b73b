"""The Run tab's downloads in a bounded folder of our own: every finished run's event trace (JSON) and per-step table
(CSV) go into a fresh subfolder, and the oldest subfolders go once there are more than `keep` or they hold more than
`max_mb` together. No gradio here."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from specviz.core.events import trace_to_json
from specviz.core.trace import trace_meta
from specviz.ui import tables
from specviz.ui.session import RunState

log = logging.getLogger("specviz.ui")
KEEP_RUNS = 40  # newest runs whose downloads stay (a visitor who has not clicked yet still finds theirs)
MAX_MB = 400.0  # ... and at most this much disk for all of them (a 2,000-token run writes about 11 MB)
PREFIX = "run-"


def default_root() -> Path:
    """Inside Gradio's cache folder ($GRADIO_TEMP_DIR, else <temp>/gradio), so Gradio serves the files without copying
    them and its delete_cache sweep also ages them out."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or (Path(tempfile.gettempdir()) / "gradio").resolve()
    return Path(cache) / "specviz-exports"


class ExportStore:
    """A folder of per-run subfolders, pruned to the newest `keep` and at most `max_mb` after every write."""

    def __init__(self, root: Path | str | None = None, keep: int = KEEP_RUNS, max_mb: float = MAX_MB) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.keep, self.max_bytes = max(1, keep), max(0.0, max_mb) * 2**20
        self._lock = threading.Lock()
        self._n = itertools.count()

    def runs(self) -> list[Path]:
        """The run subfolders, oldest first (their names sort by creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def size(self) -> int:
        """Bytes held by all run subfolders."""
        return sum(f.stat().st_size for d in self.runs() for f in d.iterdir() if f.is_file())

    def new_folder(self) -> Path:
        """A fresh, empty run subfolder."""
        with self._lock:  # name = time + counter: unique and in creation order, even for two runs in one tick
            folder = self.root / f"{PREFIX}{time.time_ns():020d}-{next(self._n):06d}"
            folder.mkdir(parents=True)
            return folder

    def prune(self) -> None:
        """Delete the oldest run subfolders beyond `keep`, then while all of them exceed `max_bytes` (the newest run
        always stays)."""
        with self._lock:
            runs = self.runs()
            sizes = {d: sum(f.stat().st_size for f in d.iterdir() if f.is_file()) for d in runs}
            total = sum(sizes.values())
            for i, d in enumerate(runs[:-1]):
                if len(runs) - i <= self.keep and total <= self.max_bytes:
                    break
                total -= sizes[d]
                shutil.rmtree(d, ignore_errors=True)

    def write(self, state: RunState) -> tuple[str | None, str | None]:
        """The full event trace (JSON) and the per-step table (CSV) of a finished run, in a fresh subfolder; then the
        store is pruned. (None, None) when the run has no steps."""
        spec, base = state.spec, state.baseline
        if spec is None or not spec.steps:
            return None, None
        folder = self.new_folder()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        req = state.request
        meta = trace_meta(
            req.prompt if req else "",
            req.preset if req else "",
            req.strategy if req else "",
            req.cfg.to_dict() if req else {},
            chat=state.chat,
            details=state.details,
            plain_steps=base.steps if base is not None else None,
            plain_summary=base.summary if base is not None else None,
        )
        trace = folder / f"specviz-trace-{stamp}.json"
        trace.write_text(trace_to_json(spec.steps, spec.summary, meta), encoding="utf-8")
        table = folder / f"specviz-steps-{stamp}.csv"
        tables.steps_table(spec.steps).to_csv(table, index=False)
        try:
            self.prune()
        except OSError:  # another process pruning the same folder; the next write tries again
            log.warning("could not prune %s", self.root, exc_info=True)
        return str(trace), str(table)
