"""A stand-in for Hugging Face's `spaces` package on a ZeroGPU Space, for tests (put its folder on PYTHONPATH): GPU()
records what it decorates and sends every call's arguments, and everything the call yields, returns or raises,
through the pickling that the real package's forked GPU worker imposes; CUDA initialised outside a decorated call
raises, as on ZeroGPU. What happened is written as JSON lines to $FAKE_SPACES_LOG."""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

__version__ = "0.51.3"  # Gradio's Spaces reloader asks for >= 0.43.0 (gradio/utils.py watchfn_spaces)

_active = 0  # decorated calls under way, in any thread (Gradio may advance a generator from several threads)
_lock = threading.Lock()


def _log(**record: Any) -> None:
    path = os.environ.get("FAKE_SPACES_LOG")
    if path:
        with _lock, open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _across(obj: Any) -> Any:
    """obj after the trip to or from a GPU worker: pickled by multiprocessing's pickler, then read back."""
    return ForkingPickler.loads(ForkingPickler.dumps(obj))


_lazy_init = torch.cuda._lazy_init


def _guarded_init(*args: Any, **kwargs: Any) -> Any:
    if _active == 0:
        _log(event="cuda_outside_gpu", stack=[f"{f.filename}:{f.lineno}" for f in inspect.stack()[1:8]])
        raise RuntimeError("CUDA must not be initialized in the main process on Spaces with Stateless GPU environment")
    return _lazy_init(*args, **kwargs)


torch.cuda._lazy_init = _guarded_init


def _enter() -> None:
    global _active
    with _lock:
        _active += 1


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1


def GPU(task: Any = None, *, duration: Any = None, **kwargs: Any) -> Any:  # noqa: N802 - the real package's name
    """spaces.GPU: with or without arguments, on plain functions and generator functions."""
    if task is None:
        return functools.partial(GPU, duration=duration, **kwargs)
    name = f"{task.__module__}.{task.__qualname__}"
    _log(event="decorated", name=name, generator=inspect.isgeneratorfunction(task))

    def seconds(args: tuple, kw: dict) -> float | None:
        return duration(*args, **kw) if callable(duration) else duration

    if inspect.isgeneratorfunction(task):

        @functools.wraps(task)
        def gen(*args: Any, **kw: Any) -> Any:
            args, kw = _across((args, kw))
            _log(event="call", name=name, duration=seconds(args, kw))
            _enter()
            try:
                for item in task(*args, **kw):
                    yield _across(item)
            except Exception as e:
                raise _across(e) from None
            finally:
                _leave()

        return gen

    @functools.wraps(task)
    def call(*args: Any, **kw: Any) -> Any:
        args, kw = _across((args, kw))
        _log(event="call", name=name, duration=seconds(args, kw))
        _enter()
        try:
            return _across(task(*args, **kw))
        except Exception as e:
            raise _across(e) from None
        finally:
            _leave()

    return call
