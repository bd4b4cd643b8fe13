"""The browser tier: a real local-mode JupyterLab (and TensorBoard) driven in headless Chromium.

One session: a copy of the repository set up offline from the wheelhouse (uv, as a participant
with uv would), generated MNIST at its real place, `local/run-jupyter.bash` and
`local/run-tensorboard.bash` on free ports, one Chromium whose every request is logged.
Screenshots go to the session's output folder (printed, and kept by pytest's tmp retention).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from freeports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "notebooks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_assets  # noqa: E402
from labkit import CHROMIUM, SCREENSHOTS, chromium  # noqa: E402
from test_local_mode import NO_NETWORK, clean_env, copy_repo  # noqa: E402  (local mode's own setup, shared)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    shots = config.stash.get(SCREENSHOTS, [])
    if shots:
        terminalreporter.write_sep("-", "browser tier screenshots")
        for path in shots:
            terminalreporter.write_line(str(path))


def set_quick(notebook: Path) -> None:
    """quick = True in the notebook's parameters cell (the copy's), as the notebook tier runs it."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert "quick = False" in source
    cell["source"] = source.replace("quick = False", "quick = True")
    notebook.write_text(json.dumps(nb, indent=1))


@dataclass
class Workshop:
    repo: Path
    lab_url: str  # with the token, as run-jupyter.bash prints it
    base: str
    token: str
    tensorboard: str
    shots: Path
    requests: list[str] = field(default_factory=list)


def _wait_for_line(log: Path, pattern: str, process: subprocess.Popen, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        assert process.poll() is None, f"{log.name} exited:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in {log}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def workshop(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Workshop]:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (bin/install-test-deps installs Debian's chromium)")
    root = tmp_path_factory.mktemp("browser")
    repo = copy_repo(root / "repo")
    env = clean_env(**NO_NETWORK)
    setup = subprocess.run(["bash", str(repo / "local" / "setup.bash"), "--offline", str(wheelhouse)], cwd="/",
                           env=env, capture_output=True, text=True, timeout=1800)
    assert setup.returncode == 0, setup.stderr[-3000:]
    python = repo / "env" / "bin" / "python"
    fake_assets.generate_asset("mnist.npz", repo / "env" / "keras" / "datasets" / "mnist.npz", python, size=3000)
    for name in ("00-framework-basics.ipynb", "02-mnist-cnn.ipynb"):
        set_quick(repo / "notebooks" / name)

    # the lab's workspace and user settings of this session only (not ~/.jupyter/lab's)
    env.update(JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(root / "user-settings"))
    jupyter_port, tensorboard_port = free_ports(2)
    started = []
    logs = {}
    for script, port in (("run-jupyter.bash", jupyter_port), ("run-tensorboard.bash", tensorboard_port)):
        logs[script] = root / f"{script}.log"
        with logs[script].open("w") as out:
            started.append(subprocess.Popen(["bash", str(repo / "local" / script), "--port", str(port)], cwd="/",
                                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        match = _wait_for_line(logs["run-jupyter.bash"], r"(http://127\.0\.0\.1:\d+)/lab\?token=([0-9a-f]+)\n",
                               started[0], 180)
        _wait_for_line(logs["run-tensorboard.bash"], rf"127\.0\.0\.1:{tensorboard_port}", started[1], 60)
        shots = root / "screenshots"
        shots.mkdir()
        yield Workshop(repo=repo, lab_url=match.group(0).strip(), base=match.group(1), token=match.group(2),
                       tensorboard=f"http://127.0.0.1:{tensorboard_port}/", shots=shots)
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The environment is 2 GB and CI's disk is shared: only the logs and screenshots stay.
        shutil.rmtree(repo / "env", ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def lab(browser, workshop: Workshop):
    """One logged-in page (the session cookie from the login form), every request recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.on("request", lambda request: workshop.requests.append(request.url))
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(workshop.lab_url)  # the URL run-jupyter.bash printed: the token logs this browser in
    page.wait_for_selector(".jp-LabShell")
    yield page
    context.close()
