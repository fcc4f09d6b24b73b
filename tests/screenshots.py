"""Takes README screenshots of the real app: `python tests/screenshots.py [--preset NAME] [--out assets]` starts
app.py (default: the embedded pair), runs the first code prompt and saves full-page PNGs. Not a test: it needs the
real models and minutes of CPU."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, _free_port, set_number, wait_status  # noqa: E402


def start_app(preset: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="qwen-coder-1.5b")
    ap.add_argument("--out", default="assets")
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tabs", default="run", help="comma-separated tabs to shoot: run")
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
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        (out / "screenshots-app.log").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
