"""Local mode end to end: setup.bash into a copy of the repository from the wheelhouse with no
network, JupyterLab and TensorBoard started by their scripts, a notebook run through the
server's own kernel, and a clean stop on SIGINT."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import websocket

from freeports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.local

# Any attempt to reach an index goes to a closed port and fails at once.
NO_NETWORK = {
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
    **{name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
}


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without pip/uv settings of this machine, uv on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "KERAS_", "JUPYTER_")) and k != "PYTHONPATH"}
    # the tool venv goes last: it only adds uv (a test extra), never its own Python
    env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}"
    env.update(extra)
    return env


def copy_repo(dest: Path) -> Path:
    """The tracked (and new, not ignored) files of the checkout, as a fresh clone would have."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run_setup(repo: Path, *args: str, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    # run from an unrelated directory: the scripts must find the repository themselves
    return subprocess.run(["bash", str(repo / "local" / "setup.bash"), *args], cwd="/", env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Path]:
    """A copy of the repository set up with pip (the participants' usual installer) offline."""
    repo = copy_repo(tmp_path_factory.mktemp("local-mode") / "repo")
    result = run_setup(repo, "--offline", str(wheelhouse), env=clean_env(WORKSHOP_INSTALLER="pip", **NO_NETWORK))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield repo
    # 2 GB, and CI's disk is shared with the VM tier that comes later
    shutil.rmtree(repo / "env", ignore_errors=True)


def port_is_free(port: int) -> bool:
    """Nothing listens, and a new server could bind it (as Jupyter does: SO_REUSEADDR, so the
    TIME_WAIT left by the test's own connections does not count)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Server:
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def _start(script: Path, *args: str) -> Server:
        log = tmp_path / f"{script.stem}-{len(started)}.log"
        with log.open("w") as out:
            # own session: the SIGINT the test sends reaches only this server, as a Ctrl-C would
            process = subprocess.Popen(["bash", str(script), *args], cwd="/", env=clean_env(**NO_NETWORK),
                                       stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        server = Server(process, log)
        started.append(server)
        return server

    yield _start
    for server in started:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def wait_http(url: str, timeout: float = 120, **kwargs) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=5, **kwargs)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def execute(base_ws: str, kernel_id: str, token: str, code: str, timeout: float = 180) -> tuple[str, list[dict]]:
    """Run `code` on the server's kernel over its websocket; return (stdout, error messages)."""
    ws = websocket.create_connection(f"{base_ws}/api/kernels/{kernel_id}/channels?token={token}", timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        stdout, errors = "", []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream" and message["content"]["name"] == "stdout":
                stdout += message["content"]["text"]
            elif kind == "error":
                errors.append(message["content"])
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return stdout, errors
        raise AssertionError(f"kernel gave no result in {timeout} s; output so far: {stdout!r}")
    finally:
        ws.close()


def test_setup_installed_the_lock_and_the_kernel(local_repo: Path):
    python = local_repo / "env" / "bin" / "python"
    spec = json.loads((local_repo / "env" / "share" / "jupyter" / "kernels" / "workshop" / "kernel.json").read_text())
    assert spec["env"] == {"KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(local_repo / "env" / "keras"),
                           "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert spec["argv"][0] == str(python)
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=clean_env())
    assert check.returncode == 0, check.stdout
    # the appliance tool runs inside the env from the copy (not from the test runner's checkout)
    where = subprocess.run([str(python), "-c", "import appliance; print(appliance.__file__)"],
                           capture_output=True, text=True, cwd="/", env=clean_env())
    assert where.stdout.strip() == str(local_repo / "appliance" / "__init__.py")


def test_setup_again_only_checks(local_repo: Path):
    result = run_setup(local_repo, env=clean_env(**NO_NETWORK), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "env is up to date" in result.stderr


def test_jupyter_serves_runs_a_notebook_and_stops_on_sigint(local_repo: Path, start):
    server = start(local_repo / "local" / "run-jupyter.bash")
    match = server.wait_for(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]{32,})")
    port, token = int(match.group(1)), match.group(2)
    base = f"http://127.0.0.1:{port}"

    # the URL comes once the server answers, as the last line, after a quiet start
    assert requests.get(f"{base}/api/status", params={"token": token}, timeout=5).status_code == 200
    lines = server.output().strip().splitlines()
    assert lines[-1] == match.group(0), lines[-5:]
    assert len(lines) <= 4 and not any("Ignoring" in line or "[I " in line for line in lines), lines
    # the token is on no command line: other users of the machine can read those
    for process in psutil.Process(server.process.pid).children(recursive=True) + [psutil.Process(server.process.pid)]:
        assert token not in " ".join(process.cmdline()), process.cmdline()
    kernelspecs = requests.get(f"{base}/api/kernelspecs", params={"token": token}, timeout=5).json()
    assert kernelspecs["default"] == "workshop" and list(kernelspecs["kernelspecs"]) == ["workshop"]
    assert requests.get(f"{base}/api/status", timeout=5).status_code in (401, 403)
    assert requests.get(f"{base}/api/status", params={"token": "0" * 48}, timeout=5).status_code in (401, 403)
    auth = {"Authorization": f"token {token}"}

    # root dir is notebooks/: a notebook written there through the API appears in the copy
    cells = [
        "import os, keras, tensorflow as tf\nprint(keras.backend.backend(), os.environ['KERAS_HOME'])",
        "x = tf.constant([[1.0, 2.0], [3.0, 4.0]])\nprint(float(tf.reduce_sum(tf.matmul(x, x))))",
    ]
    notebook = {"cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None}
                          for src in cells],
                "metadata": {"kernelspec": {"name": "workshop", "display_name": "Python 3 (workshop)", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    put = requests.put(f"{base}/api/contents/local-check.ipynb", headers=auth, timeout=30,
                       json={"type": "notebook", "format": "json", "content": notebook})
    assert put.status_code in (200, 201), put.text
    assert (local_repo / "notebooks" / "local-check.ipynb").is_file()

    session = requests.post(f"{base}/api/sessions", headers=auth, timeout=60, json={
        "path": "local-check.ipynb", "type": "notebook", "name": "local-check.ipynb", "kernel": {"name": "workshop"}})
    assert session.status_code == 201, session.text
    kernel_id = session.json()["kernel"]["id"]

    saved = requests.get(f"{base}/api/contents/local-check.ipynb", headers=auth, timeout=30).json()["content"]
    outputs = []
    for cell in saved["cells"]:
        stdout, errors = execute(f"ws://127.0.0.1:{port}", kernel_id, token, cell["source"])
        assert not errors, errors
        outputs.append(stdout.strip())
    assert outputs[0] == f"tensorflow {local_repo / 'env' / 'keras'}"
    assert outputs[1] == "54.0"  # sum of [[7, 10], [15, 22]]

    assert server.stop(signal.SIGINT) == 0, server.output()[-2000:]
    assert port_is_free(port)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/api/status", timeout=5)


def test_jupyter_refuses_a_busy_port_in_one_line(local_repo: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(["bash", str(local_repo / "local" / "run-jupyter.bash"), "--port", str(port)],
                                cwd="/", env=clean_env(**NO_NETWORK), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"run-jupyter.bash: port {port} is in use; pass another --port"]
    result = subprocess.run(["bash", str(local_repo / "local" / "run-jupyter.bash"), "--port", "70000"],
                            cwd="/", env=clean_env(**NO_NETWORK), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["run-jupyter.bash: --port 70000: give a port number from 1 to 65535"]


def test_tensorboard_answers_and_stops(local_repo: Path, start):
    port = free_port()
    server = start(local_repo / "local" / "run-tensorboard.bash", "--port", str(port))
    server.wait_for(rf"http://127\.0\.0\.1:{port}/")
    response = wait_http(f"http://127.0.0.1:{port}/data/environment", timeout=180)
    assert response.status_code == 200
    assert (local_repo / "notebooks" / "logs").is_dir()
    server.stop(signal.SIGINT)
    assert port_is_free(port)


def test_setup_with_uv_offline(tmp_path: Path, wheelhouse: Path):
    """The uv path (organizers, CI): a fresh env from the same wheelhouse with no network."""
    if not shutil.which("uv", path=clean_env()["PATH"]):
        pytest.skip("uv is not installed (pip install uv, or bin/install-test-deps)")
    repo = copy_repo(tmp_path / "repo")
    result = run_setup(repo, "--offline", str(wheelhouse), env=clean_env(**NO_NETWORK))
    assert result.returncode == 0, result.stderr[-3000:]
    # quiet: one line per stage, the installer's own output only in env/setup.log
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert all(line.startswith("setup.bash: ") for line in lines) and len(lines) <= 6, lines
    assert "keras" in (repo / "env" / "setup.log").read_text().lower()
    probe = subprocess.run([str(repo / "env" / "bin" / "python"), "-c",
                            "import keras, pytensor, jupyterlab, sklearn; print(keras.backend.backend())"],
                           capture_output=True, text=True, env=clean_env(KERAS_BACKEND="tensorflow"), timeout=300)
    assert probe.stdout.strip() == "tensorflow", probe.stderr[-2000:]

    # workshop.yml changed: the next run (no --offline given) sees the stale stamp, installs again
    # from the wheels folder the first run used, still with no network, and rewrites the kernel
    config = repo / "workshop.yml"
    config.write_text(config.read_text().replace("keras_backend: tensorflow", "keras_backend: jax"))
    again = run_setup(repo, env=clean_env(**NO_NETWORK))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" not in again.stderr and f"from {wheelhouse}" in again.stderr
    spec = json.loads((repo / "env" / "share" / "jupyter" / "kernels" / "workshop" / "kernel.json").read_text())
    assert spec["env"]["KERAS_BACKEND"] == "jax"


@pytest.fixture
def scripts_only(tmp_path: Path) -> Path:
    """Just local/ and the files it reads: enough for setup.bash's checks that come before any install."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "local", repo / "local")
    shutil.copytree(REPO_ROOT / "requirements", repo / "requirements")
    shutil.copy2(REPO_ROOT / "workshop.yml", repo / "workshop.yml")
    return repo


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_setup_rejects_an_old_python(scripts_only: Path, tmp_path: Path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    line = one_line_failure(run_setup(scripts_only, "--python", str(fake), env=clean_env()))
    assert line.startswith(f"setup.bash: '{fake}' is Python 3.9, but the workshop needs 3.11, 3.12 or 3.13;")
    assert "--python" in line
    assert not (scripts_only / "env").exists()


def test_setup_rejects_something_that_is_not_python(scripts_only: Path):
    line = one_line_failure(run_setup(scripts_only, "--python", "/bin/false", env=clean_env()))
    assert line.startswith("setup.bash: '/bin/false' is not a working Python;")


def test_setup_offline_needs_a_wheels_folder(scripts_only: Path, tmp_path: Path):
    line = one_line_failure(run_setup(scripts_only, "--offline", str(tmp_path / "nowhere"), env=clean_env()))
    assert line == f"setup.bash: --offline {tmp_path / 'nowhere'}: no such folder; give the folder that holds the .whl files"
    (tmp_path / "empty").mkdir()
    line = one_line_failure(run_setup(scripts_only, "--offline", str(tmp_path / "empty"), env=clean_env()))
    assert "no .whl files there" in line


def test_setup_refuses_an_env_it_did_not_make(scripts_only: Path, tmp_path: Path):
    """An env/ that is no venv (someone's own folder) is never removed: one line, exit 2."""
    (scripts_only / "env").mkdir()
    (scripts_only / "env" / "notes.txt").write_text("mine")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "placeholder-1.0-py3-none-any.whl").write_bytes(b"")  # the check comes before any install
    result = run_setup(scripts_only, "--offline", str(wheels), env=clean_env())
    assert result.returncode == 2
    assert one_line_failure(result) == (f"setup.bash: {scripts_only / 'env'} exists but is not a Python environment "
                                        "the workshop made; move it away and start again")
    assert (scripts_only / "env" / "notes.txt").read_text() == "mine"


def test_the_scripts_run_the_first_python_that_works(scripts_only: Path, tmp_path: Path):
    """A python3.13 on PATH that does not run (a pyenv shim without that version) is passed over."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12"):
        (shims / name).write_text("#!/bin/sh\necho \"pyenv: $0: command not found\" >&2\nexit 127\n")
        (shims / name).chmod(0o755)
    env = clean_env()
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    line = one_line_failure(run_setup(scripts_only, "--python", "/bin/false", env=env))
    assert line.startswith("setup.bash: '/bin/false' is not a working Python;")  # local_mode.py ran
    assert not (scripts_only / "env").exists()
    result = run_setup(scripts_only, "--no-such-option", env=env)
    assert result.returncode == 2 and one_line_failure(result).startswith("setup.bash: unrecognized arguments: --no-such-option;")


def test_open_gives_the_browser_a_private_page_not_the_token(local_repo: Path, tmp_path: Path, start, monkeypatch):
    """--open: the browser gets a 0600 page that redirects to the URL, so the token is on no
    command line, the browser's included (the drive's launcher opens it the same way)."""
    record = tmp_path / "browser.txt"
    browser = tmp_path / "fake-browser"
    browser.write_text(f'#!/bin/sh\npage="${{1#file://}}"\n{{ echo "$*"; stat -c %a "$page"; cat "$page"; }} > "{record}"\n')
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))  # Python's webbrowser runs it; start() passes it on
    server = start(local_repo / "local" / "run-jupyter.bash", "--open")
    match = server.wait_for(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]{32,})")
    deadline = time.monotonic() + 30
    while not record.is_file() or len(record.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, "the browser was not started"
        time.sleep(0.2)
    argv, mode, page = record.read_text().split("\n", 2)
    assert argv.startswith("file://") and match.group(2) not in argv
    assert mode == "600"
    assert f'url={match.group(0)}"' in page
    assert server.stop(signal.SIGINT) == 0
    assert not Path(argv.removeprefix("file://")).exists()  # gone with the server
