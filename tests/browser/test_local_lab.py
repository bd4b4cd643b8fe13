"""What a participant sees in local mode, in a real browser: the login, the one workshop kernel,
notebooks 00 and 02 run to the end without a pink box, a plot, TensorBoard listing 02's run,
and no request leaving the machine. The tests run in order on one logged-in page."""

from __future__ import annotations

import re

import pytest

from labkit import (finished_cleanly, launcher_offers_the_workshop_kernel_only, login_needs_the_token,
                    requests_leaving, run_all, screenshot)

pytestmark = pytest.mark.browser


def test_login_needs_the_token(browser, workshop):
    login_needs_the_token(browser, workshop.base, workshop.token)


def test_the_launcher_offers_the_workshop_kernel_only(lab, workshop, request):
    launcher_offers_the_workshop_kernel_only(lab, workshop.base)
    print(screenshot(lab, request, workshop.shots / "launcher.png"))


def test_notebook_00_runs_to_the_end_without_a_pink_box(lab, workshop, request):
    run_all(lab, workshop.base, "00-framework-basics.ipynb", 600)
    finished_cleanly(lab)
    print(screenshot(lab, request, workshop.shots / "00-finished.png"))


def test_notebook_02_runs_in_quick_mode_without_a_pink_box(lab, workshop, request):
    run_all(lab, workshop.base, "02-mnist-cnn.ipynb", 900)
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
    assert requests_leaving(workshop.requests) == []
