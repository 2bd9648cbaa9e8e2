"""report.html of the shared tiny run in headless Chromium (Debian's `chromium`, driven by
Playwright): no console errors, no request beyond the file itself and its data URIs, the metrics
table and every plot visible, and the code table's filter works. The screenshot is kept in
test-artifacts/ (or $QBR_TEST_ARTIFACTS)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from qbr_dist import pipeline
from qbr_dist.inspect.html_report import REPORT

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
QUIET = ["--no-sandbox",  # tests run as root here, where Chromium's sandbox will not start
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-domain-reliability", "--no-first-run", "--no-default-browser-check"]
ARTIFACTS = Path(os.environ.get("QBR_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def visible_rows(page) -> list[str]:
    return page.locator("#codes tbody tr:visible").all_inner_texts()


def test_the_html_report_renders_and_its_code_filter_works(tokenized_run):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian package 'chromium' missing: `make test` installs it"
    report = pipeline.run_dir(tokenized_run.cfg) / REPORT
    ARTIFACTS.mkdir(exist_ok=True)
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=QUIET)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())

            assert page.locator("#results table").first.is_visible()
            assert "qbert4rec" in page.locator("#results table").first.inner_text()
            images = page.locator("img")
            assert images.count() >= 3
            for i in range(images.count()):
                assert images.nth(i).is_visible()
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), f"image {i} is broken"
            assert page.locator("#recommendations table").count() == 3

            everything = visible_rows(page)
            word = page.locator("#codes tbody tr").first.locator("td").nth(2).inner_text().split()[0]
            page.fill("#code-filter", word)
            kept = visible_rows(page)
            assert kept and all(word in row.lower() for row in kept), (word, kept)
            page.fill("#code-filter", "no such word anywhere")
            assert visible_rows(page) == []
            page.fill("#code-filter", "")
            assert visible_rows(page) == everything
            page.screenshot(path=str(ARTIFACTS / "report-html.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
