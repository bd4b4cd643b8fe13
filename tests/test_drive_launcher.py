"""Local mode from a thumb drive made by `appliance thumbdrive build`, end to end on Linux:
the drive mounted read-only at a path with spaces, a home folder with a non-ASCII name, no
Python on PATH, the package index unreachable. The Linux launcher copies uv, lets it install
CPython from the drive, builds the environment from the drive's wheels, starts JupyterLab,
and a cell runs on its kernel; a second start reuses everything. The first hour is local
mode's: the one `workshop` kernel, quiet (TF_CPP_MIN_LOG_LEVEL), no news prompt.

python-build-standalone's host is not reachable here, so the drive carries a CPython archive
made by the test in the same install_only layout (this machine's Debian CPython 3.11 with its
standard library), listed in the test's assets.yml with its own sha256 like the real ones.
uv itself is the real uv wheel from PyPI, fetched by `appliance fetch` through assets.yml."""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from freeports import free_port
from test_local_mode import execute

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL_ENV = json.loads((REPO_ROOT / "local" / "jupyter" / "kernel-env.json").read_text())
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(os.geteuid() != 0, reason="the read-only bind mount of the drive needs root"),
    pytest.mark.skipif(not (DEBIAN_PYTHON.is_file() and Path("/usr/lib/python3.11/os.py").is_file()),
                       reason="needs Debian's CPython 3.11 to make the test's CPython archive"),
]


def make_cpython_archive(dest: Path) -> Path:
    """A real, working CPython in python-build-standalone's install_only layout (python/bin, python/lib)."""
    version = subprocess.run([str(DEBIAN_PYTHON), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    name = f"cpython-{version}+test-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz"
    skip = {"test", "site-packages", "dist-packages", "__pycache__", "EXTERNALLY-MANAGED", "sitecustomize.py"}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if Path(info.name).name in skip else info

    with tarfile.open(dest / name, "w:gz", compresslevel=1) as archive:
        archive.add(DEBIAN_PYTHON, "python/bin/python3.11")
        for link in ("python3", "python"):
            info = tarfile.TarInfo(f"python/bin/{link}")
            info.type, info.linkname = tarfile.SYMTYPE, "python3.11"
            archive.addfile(info)
        archive.add("/usr/lib/python3.11", "python/lib/python3.11", filter=keep)
        info = tarfile.TarInfo("python/lib/python3.11/site-packages")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(info)
    return dest / name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def drive_image(base: Path, wheelhouse: Path) -> Iterator[tuple[Path, Path, str]]:
    """A Linux x86_64 drive made by `thumbdrive build`, bind-mounted read-only at a path with
    spaces: (mount point, base, build output). bench/thumbdrive.py uses it too."""
    checkout = base / "checkout"
    for folder in ("appliance", "requirements", "local"):
        shutil.copytree(REPO_ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "notebooks").mkdir()
    (checkout / "notebooks" / "hello.ipynb").write_text('{"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}\n')
    cache = checkout / "cache"
    cache.mkdir()
    (cache / "wheels").symlink_to(wheelhouse)
    archive = make_cpython_archive(cache)
    real = yaml.safe_load((REPO_ROOT / "assets.yml").read_text())["assets"]
    uv = next(a for a in real if a.get("platform") == "uv-linux_x86_64")
    assets = [uv, {"name": archive.name, "kind": "installer", "platform": "cpython3.11-linux_x86_64",
                   "urls": [f"https://github.com/astral-sh/python-build-standalone/releases/download/test/{archive.name}"],
                   "hash": f"sha256:{sha256(archive)}"}]
    (checkout / "assets.yml").write_text(yaml.safe_dump({"assets": assets}))
    (checkout / "workshop.yml").write_text(yaml.safe_dump({
        "name": "dl-test", "version": "1", "notebooks": ["hello.ipynb"],
        "assets": {"manifest": "assets.yml", "include": []},
        "drive": {"platforms": ["linux_x86_64"], "python": "3.11"},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    fetched = subprocess.run([sys.executable, "-m", "appliance", "fetch", "--installers", "--only", uv["name"],
                              "--config", str(checkout / "workshop.yml")], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    ova = base / "dl-test-1.ova"
    ova.write_bytes(b"not a real ova")
    image = base / "image"
    built = subprocess.run([sys.executable, "-m", "appliance", "thumbdrive", "build", "--config",
                            str(checkout / "workshop.yml"), "--ova", str(ova), "--out", str(image), "--drive-size", "64G"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "local mode for linux_x86_64:" in built.stdout
    mount = base / "WORKSHOP DRIVE é"
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(image), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        yield mount, base, built.stdout
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture(scope="module")
def drive(tmp_path_factory, wheelhouse: Path):
    base = tmp_path_factory.mktemp("drive")
    with drive_image(base, wheelhouse) as made:
        yield made
    # The drive image and the participant's environment: 3 GB of a disk CI shares.
    shutil.rmtree(base, ignore_errors=True)


def participant_env(base: Path) -> dict[str, str]:
    """A clean environment: no Python on PATH, an index nobody answers, a non-ASCII home."""
    tools = base / "tools-only"
    if not tools.exists():
        tools.mkdir()
        for tool in ("sh", "uname", "dirname", "mkdir", "cp", "cmp", "chmod", "mv"):
            (tools / tool).symlink_to(shutil.which(tool))
    home = base / "home Jürgen"
    home.mkdir(exist_ok=True)
    return {"PATH": str(tools), "HOME": str(home), "LANG": "C.UTF-8",
            "UV_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


def start(mount: Path, env: dict[str, str], port: int, log: Path,
          script: str = "start-workshop-linux.sh") -> tuple[subprocess.Popen, float, str]:
    begin = time.monotonic()
    handle = log.open("w")
    process = subprocess.Popen(["/bin/sh", str(mount / script), "--no-browser", "--port", str(port)],
                               env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = begin + 1500
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "JupyterLab is ready at" in text:
            return process, time.monotonic() - begin, text
        if process.poll() is not None:
            raise AssertionError(f"the launcher stopped (status {process.returncode}):\n{text[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no JupyterLab within the time:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def assert_only_the_workshop_kernel(base: str, auth: dict[str, str]) -> None:
    kernelspecs = requests.get(f"{base}/api/kernelspecs", headers=auth, timeout=10).json()
    assert kernelspecs["default"] == "workshop" and list(kernelspecs["kernelspecs"]) == ["workshop"], kernelspecs
    assert kernelspecs["kernelspecs"]["workshop"]["spec"]["display_name"] == "Python 3 (workshop)"


def assert_local_modes_lab_settings(base: str, auth: dict[str, str]) -> None:
    """local/jupyter/'s server, page and lab settings are the ones this server uses."""
    assert requests.get(f"{base}/api", headers=auth, timeout=10).headers.get("X-Workshop-Appliance") == "jupyter"
    notification = requests.get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification",
                                headers=auth, timeout=30).json()["schema"]["properties"]
    assert notification["fetchNews"]["default"] == "false" and notification["checkForUpdates"]["default"] is False
    page = requests.get(f"{base}/lab", headers=auth, timeout=30).text
    config = json.loads(html.unescape(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1)))
    assert "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]


def test_the_linux_launcher_runs_the_workshop_from_a_read_only_drive(drive):
    mount, base, _ = drive
    env = participant_env(base)
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("python", path=env["PATH"]) is None
    with pytest.raises(OSError):
        (mount / "probe").write_text("x")  # the drive is read-only
    home = Path(env["HOME"]) / "dl-test-1"
    port = free_port()
    process, first, log = start(mount, env, port, base / "first.log")
    try:
        assert "building the workshop environment" in log
        # quiet, as local mode: one line per stage, uv's own output only in env/setup.log
        assert all(line.startswith("workshop: ") for line in log.strip().splitlines()) and len(log.splitlines()) <= 4, log
        assert "keras" in (home / "env" / "setup.log").read_text().lower()
        token_file = home / "jupyter-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        for pid in subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert token not in cmdline  # the token travels in the environment, never argv
        server, auth = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
        assert requests.get(f"{server}/api/kernels", timeout=10).status_code == 403
        assert_only_the_workshop_kernel(server, auth)
        assert_local_modes_lab_settings(server, auth)
        kernel = requests.post(f"{server}/api/kernels", headers=auth, json={"name": "workshop"}, timeout=60).json()
        assert kernel["name"] == "workshop"
        out, errors = execute(f"ws://127.0.0.1:{port}", kernel["id"], token,
                              "import os, sys, numpy, keras\n"
                              "print(sys.prefix, numpy.__version__, keras.backend.backend(), os.environ.get('KERAS_HOME'),\n"
                              "      *(os.environ.get(name) for name in sorted(%r)), sep='|')" % sorted(KERNEL_ENV))
        assert not errors, errors
        prefix, _, backend, keras_home, *kernel_env = out.strip().split("|")
        assert Path(prefix) == home / "env" and backend == "tensorflow" and Path(keras_home) == home / "keras"
        assert dict(zip(sorted(KERNEL_ENV), kernel_env)) == KERNEL_ENV and KERNEL_ENV["TF_CPP_MIN_LOG_LEVEL"] == "2"
        spec = json.loads((home / "env/share/jupyter/kernels/workshop/kernel.json").read_text())
        assert spec["env"] == {**KERNEL_ENV, "KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(home / "keras")}
        assert spec["argv"][0] == str(home / "env" / "bin" / "python")
        assert (home / "notebooks" / "hello.ipynb").is_file()
        assert (home / "python").is_dir()  # uv installed the drive's CPython into the participant's folder
    finally:
        stop(process)

    (home / "notebooks" / "hello.ipynb").write_text("my own work")
    process, second, log = start(mount, env, port, base / "second.log")
    try:
        assert "building the workshop environment" not in log
        assert (home / "notebooks" / "hello.ipynb").read_text() == "my own work"  # never overwritten
    finally:
        stop(process)

    # the drive goes on to the next participant: the home folder starts without it
    script = (home / "start-workshop.sh").read_text()
    assert str(mount) not in script and "drive" not in (home / "start-workshop.command").read_text().split("\n", 2)[2]
    process, _, log = start(home, env, port, base / "third.log", script="start-workshop.sh")
    try:
        url = (home / "jupyter-url").read_text().strip()  # the port, or the next free one
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}api/status", headers={"Authorization": f"token {token}"}, timeout=10).status_code == 200
        assert_only_the_workshop_kernel(url.rstrip("/"), {"Authorization": f"token {token}"})  # kept in the env
    finally:
        stop(process)
    print(f"first start {first:.1f} s, second start {second:.1f} s")


def test_the_guide_tells_exactly_what_this_drive_holds(drive):
    mount, _, output = drive
    text = (mount / "README.txt").read_text(encoding="utf-8")
    assert "sh start-workshop-linux.sh" in text and "Linux (64-bit Intel/AMD)" in text
    assert "Python 3.11" in text and "without administrator rights" in text
    assert "need no drive: in that folder, run  sh start-workshop.sh  (Linux)." in text
    assert ".cmd" not in text and ".command" not in text  # no Windows or macOS files on this drive
    assert "Windows (64-bit Intel/AMD), macOS on Apple Silicon (M1 and later, macOS 14+), Linux on 64-bit ARM, Intel Macs) use the VM" in text
    assert sorted(p.name for p in mount.iterdir() if p.suffix in (".sh", ".cmd", ".command")) == ["start-workshop-linux.sh"]
    assert sorted(p.name for p in (mount / "tools").iterdir()) == ["linux_x86_64"]
    downloads = json.loads((mount / "python" / "downloads.json").read_text())
    [(key, entry)] = downloads.items()
    assert key.startswith("cpython-3.11.") and key.endswith("-linux-x86_64-gnu")
    archive = mount / "python" / entry["build"] / Path(entry["url"]).name.replace("%2B", "+")
    assert sha256(archive) == entry["sha256"]
    # each wheel once, and only what linux_x86_64 with Python 3.11 installs (no cp313 wheel)
    names = [p.name for p in (mount / "wheels").iterdir()]
    assert names and not [n for n in names if "-cp313-" in n]
    assert "local mode for linux_x86_64:" in output
