"""Takes README screenshots of the real app: `python tests/screenshots.py [--preset NAME] [--tabs run,lab]` starts
app.py (default: the embedded pair), runs the first code prompt (Run tab) and every Theory lab part, and saves PNGs
under docs/img/ (--out to change). Not a test: it needs the real models and many minutes of CPU."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]  # helpers, specviz
from helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, set_number, wait_status  # noqa: E402


def start_app(preset: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "app.py", "--preset", preset, "--port", str(port), "--threads", str(threads)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("app.py did not answer within 120 s")


LAB_PARTS = (  # (sub-tab label, run button, status box): the playground needs no button
    ("1. Batch drafts", "#lab-batch-run", "#lab-batch-status"),
    ("2. Quality/speed knob", "#lab-relax-run", "#lab-relax-status"),
    ("3. Costs and gamma planner", "#lab-plan-run", "#lab-plan-status"),
)


def lab_shots(page, out: Path, max_new: int) -> None:
    """Run every Theory lab part on the loaded pair; stitch the four panels into <out>/screenshot-theory-lab.png."""
    from PIL import Image

    page.set_default_timeout(60_000)
    page.get_by_role("tab", name="Theory lab").click()
    print("lab: tab open", flush=True)
    if max_new != 48:  # the lab's default; the field sits in a closed accordion
        page.get_by_text("Prompt and settings for parts 1 to 3").click()
        set_number(page, "lab-max-new", max_new)
    print("lab: settings", flush=True)
    shots = []
    page.get_by_role("tab", name="Toy playground (no model)").click()
    page.locator("#lab-pg-case label", has_text="q has zeros").click()
    page.wait_for_timeout(1500)
    shots.append(out / "lab-0.png")
    page.locator("#lab-tab-playground").screenshot(path=str(shots[-1]))
    print("lab: playground", flush=True)
    for i, (label, button, status) in enumerate(LAB_PARTS, 1):
        page.get_by_role("tab", name=label).click()
        print("lab:", label, flush=True)
        page.click(button)
        print(label, "->", wait_status(page, r"^\W*ok\W+done", selector=status, timeout=1800))
        page.wait_for_timeout(1500)
        shots.append(out / f"lab-{i}.png")
        page.locator(f"#lab-tab-{('batch', 'relax', 'plan')[i - 1]}").screenshot(path=str(shots[-1]))
    images = [Image.open(p) for p in shots]
    width = max(im.width for im in images)
    sheet = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    sheet.save(out / "screenshot-theory-lab.png", optimize=True)
    for p in shots:
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="qwen-coder-1.5b")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tabs", default="run,lab", help="comma-separated tabs to shoot: run, lab")
    ap.add_argument("--lab-max-new", type=int, default=48, help="max new tokens of the lab's runs")
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start_app(args.preset, args.threads, out / "screenshots-app.log")
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url + "/?__theme=light")
            page.wait_for_selector("#sv-model-status .sv-ok", timeout=900_000)
            tabs = args.tabs.split(",")
            if "run" in tabs:
                set_number(page, "sv-max-new", args.max_new)
                set_number(page, "sv-gamma", args.gamma)
                page.click("#sv-run")  # the default prompt is the first code example
                print(wait_status(page, r"^\W*ok\W+done", timeout=1200))
                page.wait_for_timeout(1500)  # let Plotly finish its last redraw
                page.locator("#sv-stream .sv-rejected").first.hover()
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "screenshot-embedded-code.png"), full_page=True)
            if "lab" in tabs:
                lab_shots(page, out, args.lab_max_new)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        (out / "screenshots-app.log").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
