"""The report opened in a real browser: Debian's Chromium, headless, driven by Selenium.

Asserts that the page logs no console error, that every expected plotly figure and CircuitsVis view
rendered (drawn SVG / DOM content, not just an empty div), and that no request left ``file:``/``data:``
/``blob:`` (the report must open offline). Two pages: runs of single commands, and the report the demo
(``emocircuits demo``, here on the tiny model) writes into its run directory, whose three sections (one
per paper) must each render with their reading and every figure. Saves screenshots to the test's temporary directory, and to
``$EMOCIRCUITS_SCREENSHOT`` when that is set (``docs/report.png`` comes from real runs instead:
``scripts/report_screenshot.py``).

Without Chromium, chromedriver or Selenium the test is skipped and says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from test_report import make_fake_runs

from emocircuits.viz import write_report

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("EMOCIRCUITS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EMOCIRCUITS_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:", "devtools:")


def _skip_without_browser() -> None:
    missing = []
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    if not (Path(CHROMEDRIVER).exists() or shutil.which("chromedriver")):
        missing.append(f"chromedriver ({CHROMEDRIVER}; apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        pytest.skip("browser test needs " + ", ".join(missing) + "; it did not run")


def _browser_or_skip():
    _skip_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for flag in FLAGS + ["--window-size=1400,1800", "--hide-scrollbars"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"))
    return webdriver.Chrome(service=service, options=options)


_RENDER_STATE = """
const plots = [...document.querySelectorAll('.js-plotly-plot')];
const drawn = plots.filter(p => p.querySelector('svg.main-svg') && p._fullLayout);
const roots = [...document.querySelectorAll('.ec-circuitsvis')];
const filled = roots.filter(r => r.children.length > 0 && r.innerText.trim().length > 0);
return {plots: plots.length, drawn: drawn.length, roots: roots.length, filled: filled.length,
        components: roots.map(r => r.dataset.component),
        resources: [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
                   .map(e => e.name)};
"""


def _open_and_check(driver, report: Path, figures: int, views: int, shots: list[Path]) -> dict:
    driver.get(report.resolve().as_uri())
    deadline = time.monotonic() + 90
    state = driver.execute_script(_RENDER_STATE)
    while time.monotonic() < deadline and not (state["drawn"] == figures and state["filled"] == views):
        time.sleep(0.5)
        state = driver.execute_script(_RENDER_STATE)
    time.sleep(0.5)
    for shot in shots:
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
    return state


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def test_report_renders_offline_in_chromium(tmp_path, real_runs):
    """The real tiny-model run (find + mask + token views) and a sweep: every figure draws, nothing errs."""
    demo, sweep = real_runs
    out = tmp_path / "report.html"
    report = write_report([demo, sweep], out, progress=False)
    # what the run directories support: Fig. 1, 14, 2, Δ-grid, 15 from the demo; Fig. 3 and 4 from the sweep
    assert report.n_figures == 7, [(i.title) for r in report.runs for i in r.items]
    assert report.n_token_views == 3
    driver = _browser_or_skip()
    try:
        shots = [tmp_path / "report.png"]
        if os.environ.get("EMOCIRCUITS_SCREENSHOT"):
            shots.append(Path(os.environ["EMOCIRCUITS_SCREENSHOT"]))
        state = _open_and_check(driver, out, 7, 3, shots)
        console = driver.get_log("browser")
        requests = _requests(driver)
    finally:
        driver.quit()
    print(f"\nrendered {state['drawn']}/{state['plots']} plotly figures, {state['filled']}/{state['roots']} "
          f"circuitsvis views; requests: {sorted({u[:60] for u in requests})}; screenshot {shots[-1]}")
    errors = [e for e in console if e["level"] == "SEVERE"]
    assert errors == [], errors
    assert state["plots"] == 7 and state["drawn"] == 7, state
    assert state["roots"] == 3 and state["filled"] == 3, state
    assert sorted(state["components"]) == ["AttentionHeads", "ColoredTokens", "TopkSamples"]
    off = [u for u in requests + state["resources"] if not u.startswith(LOCAL_SCHEMES)]
    assert off == [], f"the report made network requests: {off}"
    assert requests, "the performance log recorded no request at all (not even the file itself)"
    assert (tmp_path / "report.png").stat().st_size > 10_000


_SECTIONS = """
const drawn = p => p.querySelector('svg.main-svg') && p._fullLayout;
const filled = r => r.children.length > 0 && r.innerText.trim().length > 0;
return [...document.querySelectorAll('section.ec-part')].map(s => {
  const plots = [...s.querySelectorAll('.js-plotly-plot')], views = [...s.querySelectorAll('.ec-circuitsvis')];
  const reading = s.querySelector('p.ec-reading');
  return {key: s.dataset.section, title: s.querySelector('h2').innerText, plots: plots.length,
          drawn: plots.filter(drawn).length, views: views.length, filled: views.filter(filled).length,
          reading: reading ? reading.innerText.trim().length : 0, headlines: s.querySelectorAll('ul.ec-headlines li').length};
});
"""


def test_demo_report_renders_every_section_offline(tmp_path, tour_run):
    """The demo's own report.html: every section (neurons, circuits, inference) renders its reading and all its
    figures, the page logs no console error and makes no network request."""
    from emocircuits.viz.report import build_report

    report_file = tour_run / "report.html"
    built = build_report(tour_run, progress=False)
    run = built.runs[0]
    want = {s.key: (sum(i.kind == "figure" for i in run.items[s.start:s.end]),
                    sum(i.kind == "token_view" for i in run.items[s.start:s.end])) for s in run.sections}
    assert list(want) == ["neurons", "circuits", "inference"] and all(f > 0 for f, _ in want.values()), want
    driver = _browser_or_skip()
    try:
        shots = [tmp_path / "demo_report.png"]
        state = _open_and_check(driver, report_file, built.n_figures, built.n_token_views, shots)
        sections = driver.execute_script(_SECTIONS)
        console = driver.get_log("browser")
        requests = _requests(driver)
    finally:
        driver.quit()
    print(f"\ndemo report: {[(s['key'], s['drawn'], s['filled']) for s in sections]}; screenshot {shots[0]}")
    assert [e for e in console if e["level"] == "SEVERE"] == [], console
    assert state["drawn"] == state["plots"] == built.n_figures, state
    assert state["filled"] == state["roots"] == built.n_token_views, state
    assert [s["key"] for s in sections] == list(want)
    for s in sections:
        figures, views = want[s["key"]]
        assert (s["plots"], s["drawn"], s["views"], s["filled"]) == (figures, figures, views, views), s
        assert s["reading"] > 200 and s["headlines"] >= 1, s
    off = [u for u in requests + state["resources"] if not u.startswith(LOCAL_SCHEMES)]
    assert off == [], f"the demo report made network requests: {off}"
    assert requests, "the performance log recorded no request at all (not even the file itself)"


def test_browser_catches_a_broken_page(tmp_path):
    """The checks can fail: a page with a JS error, a remote script and a missing figure is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><div class='js-plotly-plot'></div><script>undefinedFunction()</script>"
                   "<script src='http://127.0.0.1:9/x.js'></script></body></html>")
    driver = _browser_or_skip()
    try:
        driver.get(bad.resolve().as_uri())
        state = driver.execute_script(_RENDER_STATE)
        console = driver.get_log("browser")
        requests = _requests(driver)
    finally:
        driver.quit()
    assert any(e["level"] == "SEVERE" and "undefinedFunction" in e["message"] for e in console), console
    assert state["plots"] == 1 and state["drawn"] == 0
    assert any(u.startswith("http://127.0.0.1:9") for u in requests)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    from test_report import make_real_demo_run

    _skip_without_browser()  # before spending time on the model run
    root = tmp_path_factory.mktemp("browser_runs")
    demo = make_real_demo_run(root / "demo")
    sweep = make_fake_runs(root / "fake")["sweep"]
    return demo, sweep


@pytest.fixture(scope="module")
def tour_run(tmp_path_factory, tiny_llama):
    """The demo on the tiny model (minimal sizes), as `emocircuits demo` writes it."""
    import torch
    from test_tour import make_tour_run

    _skip_without_browser()  # before spending time on the model run
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("browser_tour") / "demo"
    make_tour_run(out, tiny_llama)
    return out
