"""The participant's first hour in the VM, in a real browser through the forwarded port: the
same checks the browser tier runs on local mode (tests/browser/labkit.py). Notebook 00 runs in
quick mode (a copy with quick = True, written through the contents API) with Run All, as a
participant runs it, and ends with its results, a plot and no stderr box."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "browser"))
from labkit import (chromium, finished_cleanly, launcher_offers_the_workshop_kernel_only,  # noqa: E402
                    login_needs_the_token, requests_leaving, run_all, screenshot)
from workers import SHARED_BUILD  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.browser, pytest.mark.xdist_group(SHARED_BUILD)]
QUICK_COPY = "00-framework-basics-quick.ipynb"
VM_REQUESTS: list[str] = []  # what the module's page asked for, in order


@pytest.fixture(scope="module")
def vm_browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def vm_lab(vm_browser, built_vm):
    """One page logged in with the token; every request it makes goes to VM_REQUESTS."""
    context = vm_browser.new_context(viewport={"width": 1400, "height": 900})
    VM_REQUESTS.clear()
    context.on("request", lambda request: VM_REQUESTS.append(request.url))
    page = context.new_page()
    page.set_default_timeout(180_000)  # the VM's server runs under software emulation
    page.goto(f"{built_vm.jupyter_url}/lab?token={built_vm.token}")
    page.wait_for_selector(".jp-LabShell")
    yield page
    context.close()


def test_vm_login_needs_the_token(vm_browser, built_vm):
    login_needs_the_token(vm_browser, built_vm.jupyter_url, built_vm.token)


def test_vm_launcher_offers_the_workshop_kernel_only(vm_lab, built_vm, request, tmp_path_factory):
    launcher_offers_the_workshop_kernel_only(vm_lab, built_vm.jupyter_url)
    print(screenshot(vm_lab, request, tmp_path_factory.mktemp("vm-screens") / "vm-launcher.png"))


def test_vm_notebook_00_runs_in_quick_mode_to_the_end(vm_lab, built_vm, request, tmp_path_factory):
    auth = {"Authorization": f"token {built_vm.token}"}
    base = f"{built_vm.jupyter_url}/api/contents"
    held = requests.get(f"{base}/00-framework-basics.ipynb", headers=auth, timeout=60)
    assert held.status_code == 200, held.text
    notebook = held.json()["content"]
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "quick = False" in parameters["source"]
    parameters["source"] = parameters["source"].replace("quick = False", "quick = True")
    saved = requests.put(f"{base}/{QUICK_COPY}", headers=auth, timeout=60,
                         data=json.dumps({"type": "notebook", "format": "json", "content": notebook}))
    assert saved.status_code in (200, 201), saved.text
    try:
        run_all(vm_lab, built_vm.jupyter_url, QUICK_COPY, 1200)
        text = finished_cleanly(vm_lab)
        print(screenshot(vm_lab, request, tmp_path_factory.mktemp("vm-screens") / "vm-00-finished.png"))
    finally:
        requests.delete(f"{base}/{QUICK_COPY}", headers=auth, timeout=60)
    assert "f(2) = 11.0" in text and "symbolic gradient at 2: 7.0" in text, text[-2000:]


def test_vm_lab_made_no_request_outside(vm_lab, built_vm):
    assert len(VM_REQUESTS) > 20
    assert requests_leaving(VM_REQUESTS) == []
