"""Screenshot one run section of an emocircuits HTML report in headless Chromium (how ``docs/report.png`` is made).

Usage: ``python scripts/report_screenshot.py REPORT.html OUT.png [--section N] [--width W] [--height H]``.
``--section`` counts the page's run sections from 1 (0 = the top of the page, with the runs table).
``docs/report.png``: ``emocircuits report runs/rq1_find runs/rq2_mask runs/rq3_sweep`` over the RQ1–RQ3
runs of the README, section 2 (``neurons mask``). Needs Debian's ``chromium`` and ``chromium-driver`` and
the ``selenium`` package (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Render REPORT.html and write the screenshot; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--section", type=int, default=2, help="run section to scroll to (0 = top of the page)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1700)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report} does not exist; write it with `emocircuits report RUN_DIR ... -o {args.report}`.",
              file=sys.stderr)
        return 2

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={args.width},{args.height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=options)
    try:
        driver.get(args.report.resolve().as_uri())
        time.sleep(4)  # plotly draws after load
        sections = driver.find_elements(By.CSS_SELECTOR, "section")  # [runs table, run 1, run 2, ...]
        if not 0 <= args.section < len(sections):
            print(f"--section {args.section} is out of range: this report has run sections 1–{len(sections) - 1} "
                  "(0 = the top of the page).", file=sys.stderr)
            return 2
        y = int(sections[args.section].location["y"]) - 10 if args.section else 0
        driver.execute_script("window.scrollTo(0, arguments[0]);", y)
        time.sleep(1)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
