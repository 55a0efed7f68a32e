"""The report renders in headless Chromium: every image loads and the key sections are there.

Needs Debian's chromium + chromium-driver (installed by make setup); skipped with the reason otherwise.
"""

import shutil

import pytest

from fixture_run import make_run
from tunelab.report import write_report
from tunelab.rundir import RunDir


def _driver():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed (make setup installs them where apt-get is allowed)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1200,2000"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


@pytest.mark.slow
def test_report_html_in_headless_chromium(tmp_path):
    run = RunDir(make_run(tmp_path / "run"))
    html = write_report(run)
    driver = _driver()
    try:
        driver.get(html.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) == 4
        assert all(complete and width > 0 for complete, width, _ in images), images
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        for section in ("Overview", "Key metrics", "Learning curves", "Observations from training logs",
                        "Insights from model analysis", "What worked / what to watch", "Definitions"):
            assert section in headings
        driver.set_window_size(390, 844)  # a phone: the page must not overflow sideways
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        driver.set_window_size(1200, 2000)
        shot = run.path / "report_files" / "screenshot.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
