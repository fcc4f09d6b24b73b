"""The warm start's background reader: a preset's cached weights read (and checked) in a thread while the main thread
imports transformers and builds the tokenizer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from specviz.backends.weights import read_cached


class CacheReader:
    """Reads the cached weights of a preset's embedded models in a background thread, in order, while the main thread
    imports transformers, builds tokenizers and packs the model before: a warm start then waits mostly on the disk.
    Each path is a cache folder (its float32 safetensors) or a packed-weights file; None (not cached yet) is skipped.
    Every byte is checked against the checksum written with it while it is read: a damaged file raises CorruptCache.
    take() hands each state dict over and keeps no reference, so packing can free the float32 weights as it goes."""

    def __init__(self, paths: Sequence[Path | None], read: Callable[[Path], Any] = read_cached) -> None:
        """read: what a path becomes (by default its weights, checked; the GGUF path passes its block reader)."""
        self.paths = [p for p in paths if p is not None]
        self._read = read
        self._pending = list(self.paths)  # what take() has still to hand over (the thread reads self.paths)
        self._out: queue.Queue[tuple[Path, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specviz-weights", daemon=True)
        if self.paths:
            self._thread.start()

    def _run(self) -> None:
        for path in self.paths:
            if self._stop.is_set():
                return
            try:
                self._out.put((path, self._read(path)))
            except Exception as e:  # handed to take(), which raises it in the loading thread
                self._out.put((path, e))

    def reading(self, path: Path) -> bool:
        return path in self._pending

    def take(self, path: Path) -> dict[str, torch.Tensor] | Any | None:
        """The path's weights (waiting for them), or None when this reader is not reading it."""
        if path not in self._pending:
            return None
        self._pending.remove(path)  # a second model of the same path gets its own, second read
        got, state = self._out.get()
        if got != path:  # models are taken in the order they were listed
            raise RuntimeError(f"weights of {got} arrived where {path} was expected")
        if isinstance(state, Exception):
            raise state
        return state

    def stop(self) -> None:
        self._stop.set()
