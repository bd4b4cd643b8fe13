"""What a participant sees in local mode, in a real browser: the login, the one workshop kernel,
notebooks 00 and 02 run to the end without a pink box, a plot, TensorBoard listing 02's run,
and no request leaving the machine. The tests run in order on one logged-in page."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from labkit import screenshot

pytestmark = pytest.mark.browser

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


def test_login_needs_the_token(browser, workshop):
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        page.goto(f"{workshop.base}/lab")
        assert "/login" in page.url
        page.wait_for_selector("#password_input")
        assert page.locator(".jp-LabShell").count() == 0  # no lab without the token
        page.fill("#password_input", "0" * len(workshop.token))
        page.click("#login_submit")
        page.wait_for_load_state()
        assert "/login" in page.url and page.locator(".jp-LabShell").count() == 0
        page.fill("#password_input", workshop.token)
        page.click("#login_submit")
        page.wait_for_selector(".jp-LabShell")
    finally:
        stranger.close()


def test_the_launcher_offers_the_workshop_kernel_only(lab, workshop, request):
    lab.goto(f"{workshop.base}/lab?reset")  # a fresh workspace: the launcher
    lab.wait_for_selector(".jp-LauncherCard")
    notebook_cards = lab.locator('.jp-LauncherCard[data-category="Notebook"]')
    notebook_cards.first.wait_for()
    assert notebook_cards.evaluate_all("cards => cards.map(c => c.getAttribute('title'))") == [KERNEL]
    assert lab.locator(".jp-Notification-Toast").count() == 0  # no "get notified about news?" question
    print(screenshot(lab, request, workshop.shots / "launcher.png"))


def run_all(lab, workshop, name: str, timeout_s: int) -> None:
    lab.goto(f"{workshop.base}/lab/tree/{name}?reset")  # only this notebook open
    lab.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    status = lab.locator("#jp-main-statusbar")
    status.get_by_text(KERNEL).first.wait_for()  # the notebook opened with the workshop kernel
    status.get_by_text(re.compile(r"Idle")).first.wait_for(timeout=120_000)
    lab.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    lab.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()
    lab.wait_for_function(RUN_ALL_OVER, timeout=timeout_s * 1000, polling=1000)
    prompts = lab.evaluate(f"() => {PROMPTS}.map(p => p.textContent.trim())")
    if not all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
        errors = lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"{name}: Run All stopped early; prompts {prompts}; outputs: {errors[-3:]}")


def finished_cleanly(lab) -> None:
    boxes = lab.locator(STDERR_BOX)
    assert boxes.count() == 0, boxes.all_inner_texts()[:3]
    images = lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img")
    assert images.count() >= 1
    images.first.scroll_into_view_if_needed()
    assert images.first.is_visible()
    assert images.first.evaluate("img => img.naturalWidth") > 100  # a plot, decoded and drawn


def test_notebook_00_runs_to_the_end_without_a_pink_box(lab, workshop, request):
    run_all(lab, workshop, "00-framework-basics.ipynb", 600)
    finished_cleanly(lab)
    print(screenshot(lab, request, workshop.shots / "00-finished.png"))


def test_notebook_02_runs_in_quick_mode_without_a_pink_box(lab, workshop, request):
    run_all(lab, workshop, "02-mnist-cnn.ipynb", 900)
    finished_cleanly(lab)
    print(screenshot(lab, request, workshop.shots / "02-finished.png"))


def test_tensorboard_lists_the_run_of_notebook_02(lab, workshop, request):
    runs = workshop.repo / "notebooks" / "logs" / "02-mnist-cnn"
    assert runs.is_dir() and any(runs.iterdir()), "notebook 02 wrote no TensorBoard log"
    lab.goto(workshop.tensorboard)
    # TensorBoard re-reads its log folder every few seconds; the run shows in its run selector
    lab.get_by_text(re.compile(r"02-mnist-cnn/")).first.wait_for(timeout=120_000)
    print(screenshot(lab, request, workshop.shots / "tensorboard.png"))


def test_no_request_left_the_machine(lab, workshop):
    lab.goto(f"{workshop.base}/lab")
    lab.wait_for_selector(".jp-LabShell")
    lab.wait_for_timeout(3000)  # what the lab fetches after it is up (news, update checks) included
    assert len(workshop.requests) > 20
    outside = sorted({url for url in workshop.requests
                      if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                      and urlsplit(url).hostname not in LOCAL_HOSTS})
    assert outside == []
