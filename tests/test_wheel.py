"""The wheel installs and runs: built from a copy of the source tree, installed into a fresh venv with --no-deps on top
of this interpreter's site-packages, its `specviz` console script generates from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # builds and installs a package: half a minute


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:  # what a clean clone holds, not this checkout's caches and build outputs
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("specviz-*.whl")
    return whl


def test_wheel_holds_every_subpackage_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "specviz").rglob("__init__.py")}
    assert packages - names == set()
    data = [
        "specviz/presets/models.yaml",
        "specviz/presets/prompts.yaml",
        "specviz/presets/train_prompts.yaml",
        "specviz/presets/shapes/qwen2.5-coder-1.5b.json",
        "specviz/assets/style.css",
        "specviz/assets/medusa-tiny-random.safetensors",
        "specviz/backends/kernels/packed_linear.cpp",
        "specviz/backends/kernels/quant_linear.cpp",
        "specviz/backends/kernels/quant_kernel.h",
        "specviz/backends/kernels/quant_common.h",
    ]
    assert [d for d in data if d not in names] == []
    assert not [n for n in names if n.startswith("tests/")]


def test_installed_wheel_generates_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the kernel stays off: building it from another source path would make the next build here start over
    env = {**os.environ, "SPECVIZ_KERNEL": "0", "SPECVIZ_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = subprocess.run(
        [py, "-c", "import specviz; print(specviz.__file__)"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    # medusa reads the preset's shipped heads from the installed package's assets
    for strategy in ("draft", "medusa"):
        run = subprocess.run(
            [venv / "bin" / "specviz", "generate", "--preset", "tiny-random", "--strategy", strategy,
             "--max-new-tokens", "8", "--color", "never"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert "8 tokens in" in run.stderr, run.stderr[-2000:]
