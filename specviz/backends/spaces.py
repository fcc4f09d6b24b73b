"""What the Hugging Face Spaces runtime tells a process through its environment: whether it runs on a Space, on
ZeroGPU hardware, and where a disk that outlives restarts is mounted."""

from __future__ import annotations

import os
from pathlib import Path

# The legacy persistent-storage mount of a Space (https://huggingface.co/docs/hub/spaces-storage); a storage bucket
# can be mounted anywhere, so an operator who attaches one points SPECVIZ_CACHE at its mount path instead.
PERSISTENT = Path("/data")


def _true(value: str | None) -> bool:
    """The `spaces` package's reading of a boolean variable (spaces/utils.py boolean): 1, t or true, any case."""
    return value is not None and value.strip().lower() in ("1", "t", "true")


def on_space() -> bool:
    """Whether this process runs on a Space: the runtime sets SYSTEM=spaces (Gradio reads the same) and SPACE_ID."""
    return os.environ.get("SYSTEM") == "spaces" or bool(os.environ.get("SPACE_ID"))


def on_zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space (SPACES_ZERO_GPU, what the `spaces` package itself reads): CUDA exists only
    inside functions decorated with spaces.GPU, each call in a forked worker process."""
    return _true(os.environ.get("SPACES_ZERO_GPU"))


def persistent_root(root: Path = PERSISTENT) -> Path | None:
    """`root` when it is a folder this process may write (a Space's persistent storage), else None."""
    try:
        return root if root.is_dir() and os.access(root, os.W_OK | os.X_OK) else None
    except OSError:
        return None
