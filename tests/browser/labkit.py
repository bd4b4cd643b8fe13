"""What the browser tier checks in any JupyterLab a participant opens (local mode, the VM's
forwarded port): shared by tests/browser and the VM tier, so each target runs the same checks.
Screenshots are listed at the end of the run (tests/browser/conftest's terminal summary)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SCREENSHOTS = pytest.StashKey[list[Path]]()
CHROMIUM = Path(os.environ.get("WORKSHOP_CHROMIUM", "/usr/bin/chromium"))
KERNEL = "Python 3 (workshop)"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
PROMPTS = "[...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]"
# Run All is over: no cell waits or runs ("[*]"), and the last one that ran has a number. A cell
# that fails stops Run All, which the test then sees as cells left without a number.
RUN_ALL_OVER = f"""() => {{
    const prompts = {PROMPTS}.map(p => p.textContent);
    return prompts.some(t => /\\[\\d+\\]/.test(t)) && !prompts.some(t => t.includes('*'));
}}"""
STDERR_BOX = '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def screenshot(page, request: pytest.FixtureRequest, path: Path) -> Path:
    """Save what the participant's screen shows now."""
    page.screenshot(path=str(path))
    request.config.stash.setdefault(SCREENSHOTS, []).append(path)
    return path


@contextmanager
def chromium() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (its own browser download is not reachable)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (bin/install-test-deps installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the CI machine runs the tests as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def login_needs_the_token(browser, base: str, token: str) -> None:
    """A browser without the token sees the login form, not the lab; a wrong token is refused;
    the right one opens the lab."""
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        page.goto(f"{base}/lab")
        assert "/login" in page.url
        page.wait_for_selector("#password_input")
        assert page.locator(".jp-LabShell").count() == 0  # no lab without the token
        page.fill("#password_input", "0" * len(token))
        page.click("#login_submit")
        page.wait_for_load_state()
        assert "/login" in page.url and page.locator(".jp-LabShell").count() == 0
        page.fill("#password_input", token)
        page.click("#login_submit")
        page.wait_for_selector(".jp-LabShell")
    finally:
        stranger.close()


def launcher_offers_the_workshop_kernel_only(lab, base: str) -> None:
    lab.goto(f"{base}/lab?reset")  # a fresh workspace: the launcher
    lab.wait_for_selector(".jp-LauncherCard")
    notebook_cards = lab.locator('.jp-LauncherCard[data-category="Notebook"]')
    notebook_cards.first.wait_for()
    assert notebook_cards.evaluate_all("cards => cards.map(c => c.getAttribute('title'))") == [KERNEL]
    assert lab.locator(".jp-Notification-Toast").count() == 0  # no "get notified about news?" question


def run_all(lab, base: str, name: str, timeout_s: int) -> None:
    """Open `name` alone, check it has the workshop kernel, Run All, and wait until every cell ran."""
    lab.goto(f"{base}/lab/tree/{name}?reset")  # only this notebook open
    lab.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    status = lab.locator("#jp-main-statusbar")
    status.get_by_text(KERNEL).first.wait_for()  # the notebook opened with the workshop kernel
    status.get_by_text(re.compile(r"Idle")).first.wait_for(timeout=timeout_s * 1000)
    lab.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    lab.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()
    lab.wait_for_function(RUN_ALL_OVER, timeout=timeout_s * 1000, polling=1000)
    prompts = lab.evaluate(f"() => {PROMPTS}.map(p => p.textContent.trim())")
    if not all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
        errors = lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"{name}: Run All stopped early; prompts {prompts}; outputs: {errors[-3:]}")


def finished_cleanly(lab) -> str:
    """No stderr box and at least one plot drawn; returns the notebook's output text."""
    boxes = lab.locator(STDERR_BOX)
    assert boxes.count() == 0, boxes.all_inner_texts()[:3]
    images = lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img")
    assert images.count() >= 1
    images.first.scroll_into_view_if_needed()
    assert images.first.is_visible()
    assert images.first.evaluate("img => img.naturalWidth") > 100  # a plot, decoded and drawn
    # textContent, not innerText: off-screen cells (content-visibility) have text but no layout
    return "\n".join(lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_text_contents())


def requests_leaving(urls: list[str]) -> list[str]:
    """The requests a page made to anything but this machine (news, fonts, CDNs)."""
    return sorted({url for url in urls
                   if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                   and urlsplit(url).hostname not in LOCAL_HOSTS})
