"""The page's ZeroGPU contract: `gpu_task` marks every handler that runs the models. On a ZeroGPU Space (and only
there) it wraps them in `spaces.GPU`, which runs each call in a forked worker process holding the GPU: arguments and
yielded updates cross the process boundary pickled, so the page's own objects (the tabs, the rendered components)
cross by reference, looked up on the other side in tables filled before any worker was forked. Elsewhere `gpu_task`
returns the handler unchanged and records it, so a test can check which handlers are marked."""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from specviz.backends.spaces import on_zero_gpu

log = logging.getLogger("specviz.ui")

GPU_TASKS: list[str] = []  # module.qualname of every handler marked with gpu_task, in import order
DEFAULT_DURATION = 120.0  # seconds of GPU a call may hold until `expose` sets it from the job budget

_instances: dict[int, Any] = {}  # id -> object of a class with a marked method, from its construction on
_blocks: dict[int, Any] = {}  # Gradio component id -> rendered component (expose)
_settings: dict[str, Any] = {"duration": DEFAULT_DURATION, "gate": None}


def _duration(*_args: Any, **_kwargs: Any) -> float:
    """spaces.GPU's dynamic duration (called with the handler's arguments): the operator's job budget plus start-up."""
    return float(_settings["duration"])


def gpu_task(fn: Callable) -> Any:
    """Mark `fn`, a method that runs the models, as GPU work (see the module docstring)."""
    GPU_TASKS.append(f"{fn.__module__}.{fn.__qualname__}")
    if not on_zero_gpu():
        return fn
    import spaces  # type: ignore[import-not-found]  # installed on every Gradio Space; patches torch on ZeroGPU

    return _OnGpu(fn, spaces.GPU(duration=_duration)(fn))


class _OnGpu:
    """A marked method on ZeroGPU: the class that owns it pickles its instances by reference, and every call first
    waits for the model loads to settle (a worker forked earlier would never see the pair)."""

    def __init__(self, fn: Callable, on_gpu: Callable) -> None:
        self.fn, self.on_gpu = fn, on_gpu
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner: type, name: str) -> None:
        by_reference(owner)

    def __get__(self, inst: Any, owner: type | None = None) -> Any:
        if inst is None:
            return self
        return types.MethodType(self.__call__, inst)

    def __call__(self, inst: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _settings["gate"]
        if gate is not None:
            gate()
        return self.on_gpu(inst, *args, **kwargs)


def by_reference(owner: type) -> None:
    """Instances of `owner` cross to a GPU worker as a reference to the same object there (which exists in the worker
    because it was built before the worker was forked): each is recorded as it is constructed."""
    if getattr(owner, "_zerogpu_by_reference", False):
        return
    init = owner.__init__

    @functools.wraps(init)
    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _instances[id(self)] = self

    owner.__init__ = recorded  # type: ignore[misc]
    owner._zerogpu_by_reference = True  # type: ignore[attr-defined]
    ForkingPickler.register(owner, _reduce_instance)


def _reduce_instance(obj: Any) -> tuple[Callable, tuple[int]]:
    if _instances.get(id(obj)) is not obj:
        raise TypeError(f"{type(obj).__qualname__} built after the page was: a GPU worker cannot see it")
    return _instance, (id(obj),)


def _instance(key: int) -> Any:
    try:
        return _instances[key]
    except KeyError:
        raise RuntimeError("this GPU worker was forked before the object it was sent was built") from None


def _reduce_block(obj: Any) -> Any:
    """A rendered component by reference; a new one (say gr.Timer(active=False), an update) by value."""
    if _blocks.get(getattr(obj, "_id", None)) is obj:
        return _block, (obj._id,)
    return obj.__reduce_ex__(4)


def _block(key: int) -> Any:
    return _blocks[key]


def expose(demo: Any, duration: float | None = None, gate: Callable[[], None] | None = None) -> None:
    """Before launch: let the rendered components of `demo` cross to GPU workers by reference, give every GPU call
    `duration` seconds, and have each wait on `gate` (the model loads) first. Nothing to do off ZeroGPU."""
    if not on_zero_gpu():
        return
    _blocks.update(demo.blocks)
    for kind in {type(b) for b in demo.blocks.values()}:
        ForkingPickler.register(kind, _reduce_block)
    if duration is not None:
        _settings["duration"] = duration
    _settings["gate"] = gate
    log.info("ZeroGPU: %d handlers run in GPU workers, %.0f s each at most", len(GPU_TASKS), _settings["duration"])
