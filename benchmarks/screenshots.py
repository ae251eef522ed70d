"""Screenshots of the dashboard's main pages for the README: seeded real runs, served on loopback, Chromium.

    .venv/bin/python benchmarks/screenshots.py [--out docs/screenshots]

Needs Debian's ``chromium`` (/usr/bin/chromium) and Playwright for Python. The database is a temporary SQLite
file seeded by tests/dashboard_support.py (real reports from the engine); nothing outside loopback is contacted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dashboard_support import launch_chromium, make_app, seed, serve, sign_in  # noqa: E402

LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _shot(page: object, path: Path, *, selector: str | None = None, full: bool = False) -> None:
    page.wait_for_load_state("networkidle")  # type: ignore[attr-defined]
    if selector:
        page.locator(selector).screenshot(path=str(path))  # type: ignore[attr-defined]
    else:
        page.screenshot(path=str(path), full_page=full)  # type: ignore[attr-defined]
    print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp))
        started = time.perf_counter()
        seeded = seed(app)
        print(f"seeded {len(seeded.runs)} runs in {time.perf_counter() - started:.1f} s")
        with serve(app) as base, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                laptop = browser.new_page(viewport=LAPTOP)
                sign_in(laptop, base, seeded.token)
                _shot(laptop, args.out / "runs.png")
                laptop.goto(f"{base}/runs/{seeded.run('swish-bug').id}")
                _shot(laptop, args.out / "run-failed.png")
                laptop.goto(f"{base}/runs/{seeded.run('sigmoid').id}")
                _shot(laptop, args.out / "gradient-flow.png", selector="#gradient-flow")
                laptop.goto(f"{base}/runs/{seeded.run('mlp-3').id}")
                _shot(laptop, args.out / "memory.png", selector="#memory")
                _shot(laptop, args.out / "batch-scaling.png", selector="#batch-scaling")
                laptop.goto(f"{base}/runs/{seeded.run('cnn-1').id}")
                _shot(laptop, args.out / "checkpointing.png", selector="#checkpointing")
                laptop.goto(f"{base}/models/mlp")
                _shot(laptop, args.out / "model-history.png")
                laptop.goto(f"{base}/compare?a={seeded.run('swish-ok').id}&b={seeded.run('swish-bug').id}")
                _shot(laptop, args.out / "compare.png")
                phone = browser.new_page(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True)
                sign_in(phone, base, seeded.token)
                _shot(phone, args.out / "phone-runs.png")
                phone.goto(f"{base}/runs/{seeded.run('swish-bug').id}")
                _shot(phone, args.out / "phone-run.png")
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
