"""Speed of the browser app as a person sees it: `spatial-al web` on the demo, driven in Debian's Chromium.

    python docs/results/benchmarks/web_speed.py [--repeats 5] [--output web-speed.json]

Measured from the page (playwright, headless): server start to the first rendered axial view; a click on a queried
slice to the axial view showing it (its image replaced); a paint stroke's release to the view showing it; Rank
(fixed_interval, 5 slices) and sdf Propagate from the click to the page's message. Prints a table (median and worst
of ``--repeats``) and writes JSON with the configuration and versions (a benchmark, not a test: nothing is asserted).
"""

import argparse
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from playwright.sync_api import sync_playwright

from spatial_al.provenance import environment, write_json
from SpatialALWeb.launch import START_SECONDS, ServerProcess

GOALS = {"first view": 10.0, "slice jump": 0.5, "stroke round trip": 0.3, "rank": None, "sdf propagate": 1.0}
AXIAL_VIEW = "img.image-display-area"


def seconds_until(page, condition: str, argument=None, timeout: float = 60) -> float:
    """Seconds from now until the JavaScript ``condition`` (a function of ``argument``) holds in the page."""
    start = time.perf_counter()
    page.wait_for_function(condition, arg=argument, timeout=timeout * 1000, polling="raf")
    return time.perf_counter() - start


def axial_image(page) -> str:
    return page.locator(AXIAL_VIEW).first.get_attribute("src") or ""


IMAGE_CHANGED = f"(old) => (document.querySelector('{AXIAL_VIEW}').getAttribute('src') || '') !== old"


def clicked(page, testid: str) -> float:
    """Seconds from a click on the control ``testid`` to the page's message changing."""
    before = page.get_by_test_id("message").inner_text()
    start = time.perf_counter()
    page.get_by_test_id(testid).click()
    page.wait_for_function(
        "(old) => document.querySelector('[data-testid=message]').innerText !== old", arg=before, polling="raf"
    )
    return time.perf_counter() - start


def measure(repeats: int, output: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in GOALS}
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for repeat in range(repeats):
            server = ServerProcess(Path(folder) / f"run{repeat}")
            try:
                page = chromium.new_page(viewport={"width": 1400, "height": 900})
                page.goto(server.url)
                page.wait_for_function(
                    f"() => (document.querySelector('{AXIAL_VIEW}')?.getAttribute('src') || '').length > 0",
                    timeout=START_SECONDS * 1000,
                    polling="raf",
                )
                times["first view"].append(time.perf_counter() - server.startedAt)
                page.get_by_test_id("budget").locator("input").fill("5")
                times["rank"].append(clicked(page, "rank"))
                page.wait_for_timeout(500)
                rows = page.locator("tr[data-slice]")
                for row in (2, 1):  # two jumps: the first row is shown after ranking already
                    before = axial_image(page)
                    start = time.perf_counter()
                    rows.nth(row).click()
                    seconds_until(page, IMAGE_CHANGED, before)
                    times["slice jump"].append(time.perf_counter() - start)
                    page.wait_for_timeout(300)
                page.locator("button:has(i.mdi-brush)").first.click()
                box = page.locator(AXIAL_VIEW).first.bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x - 20, y, steps=4)
                page.mouse.down()
                page.mouse.move(x + 20, y, steps=10)
                page.wait_for_timeout(500)  # the feedback of the stroke is drawn; what is timed is the write
                before = axial_image(page)
                start = time.perf_counter()
                page.mouse.up()
                seconds_until(page, IMAGE_CHANGED, before)
                times["stroke round trip"].append(time.perf_counter() - start)
                page.get_by_test_id("mark-annotated").click()
                page.wait_for_timeout(500)
                times["sdf propagate"].append(clicked(page, "propagate"))
                page.close()
            finally:
                server.stop()
        chromium.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("benchmark-web.json"))
    args = parser.parse_args()
    times = measure(args.repeats, args.output)
    rows = [
        {
            "step": name,
            "median_s": round(statistics.median(values), 3),
            "worst_s": round(max(values), 3),
            "goal_s": GOALS[name],
            "runs": [round(v, 3) for v in values],
        }
        for name, values in times.items()
    ]
    print(f"{'step':<20} {'median s':>9} {'worst s':>9} {'goal s':>7}")
    for row in rows:
        goal = "-" if row["goal_s"] is None else f"{row['goal_s']:.1f}"
        print(f"{row['step']:<20} {row['median_s']:>9.3f} {row['worst_s']:>9.3f} {goal:>7}")
    record = {
        "command": f"python docs/results/benchmarks/web_speed.py --repeats {args.repeats}",
        "configuration": {"repeats": args.repeats, "data": "demo chest CT", "viewport": [1400, 900]},
        "environment": {
            **environment(),
            "trame-slicer": version("trame-slicer"),
            "playwright": version("playwright"),
            "browser": "Debian chromium, headless",
            "machine": platform.machine(),
        },
        "rows": rows,
    }
    write_json(args.output, record)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
