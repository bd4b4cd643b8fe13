"""The single-user image tier: `appliance image build` on the repository's workshop (its
notebooks and workshop.yml, every asset generated in its real format), once per module; then
the archive runs under podman (a private storage root, ports on 127.0.0.1 only) and is checked
from outside as Zero to JupyterHub and a participant would meet it. Needs root, buildah,
podman and runc (bin/install-test-deps installs them)."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import requests

from appliance_runner import REPO_ROOT, run_appliance
from freeports import free_ports
from kernelclient import run_cells

sys.path.insert(0, str(REPO_ROOT / "tests" / "notebooks"))
from harness import inject_parameters  # noqa: E402

from vm.workshop_maker import make_workshop  # noqa: E402

pytestmark = pytest.mark.image

TOKEN = "image-tier-token-4f9c2b7e1d"
START_SECONDS = 180
EDITED_MARK = "# edited by the participant: the image must keep this"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (buildah's storage, the chroot)"
    missing = [tool for tool in ("buildah", "podman", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (bin/install-test-deps installs them)"
    return None


def _rlimit(which: int, wanted: int) -> int:
    """A limit below the host's hard one: podman's runc fails to set one at or above it without
    CAP_SYS_RESOURCE (the sandboxes here lack it)."""
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY or hard > wanted else max(hard - 1, 1)


class Podman:
    """podman with its own storage and runc (crun fails on this machine's cgroup v1 hybrid mode).
    overlay, as the build uses: vfs copies every layer whole and took minutes to load the archive."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        # podman refuses a runroot path longer than 50 characters
        self.runroot = Path(tempfile.mkdtemp(prefix="image-tier-", dir="/run" if os.access("/run", os.W_OK) else None))
        self.base = ["podman", "--root", str(storage / "root"), "--runroot", str(self.runroot),
                     "--storage-driver", os.environ.get("APPLIANCE_IMAGE_STORAGE_DRIVER", "overlay")]
        nofile = _rlimit(resource.RLIMIT_NOFILE, 16384)
        nproc = _rlimit(resource.RLIMIT_NPROC, 8192)
        self.run_options = ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}",
                            "--ulimit", f"nproc={nproc}:{nproc}"]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args[:2])} failed: {result.stderr.strip()[-800:]}")
        return result

    def run(self, image: str, *args: str, options: tuple[str, ...] = ()) -> str:
        """Start a detached container; returns its id."""
        return self("run", "--detach", *self.run_options, *options, image, *args).stdout.strip()

    def remove_everything(self) -> None:
        self("rm", "--all", "--force", "--time", "5", check=False)
        self("rmi", "--all", "--force", check=False)
        self("system", "reset", "--force", check=False, timeout=300)
        below = str(self.storage.resolve()) + "/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith((below, str(self.runroot) + "/"))), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount], capture_output=True)
        shutil.rmtree(self.storage, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


@dataclass
class Built:
    archive: Path
    output: str
    build_seconds: float
    image: str
    podman: Podman
    notebooks: list[str]
    assets: list


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory, workshop_python: Path, hub_cache: Path) -> Iterator[Built]:
    reason = _skip_reason()
    if reason:
        pytest.skip(f"image tier: {reason}")
    root = tmp_path_factory.mktemp("image-workshop")
    config_path, _, assets = make_workshop(root, REPO_ROOT, workshop_python, name="imagetest")
    started = time.monotonic()
    result = run_appliance("image", "build", "--config", str(config_path), timeout=1800)
    build_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    archive = root / "dist" / "imagetest-1-singleuser.oci.tar"
    podman = Podman(root / "podman")
    try:
        loaded = podman("load", "--quiet", "--input", str(archive), timeout=900).stdout
        image = loaded.split("Loaded image:")[-1].strip().split()[0]
        notebooks = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))
        yield Built(archive, result.stdout, build_seconds, image, podman, notebooks, assets)
    finally:
        podman.remove_everything()
        archive.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)  # the generated assets and the build's storage


@dataclass
class Server:
    container: str
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait_for(url: str, podman: Podman, container: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            pytest.fail(f"the container stopped ({state}): {podman('logs', container, check=False).stderr[-2000:]}")
        time.sleep(1)
    pytest.fail(f"Jupyter did not answer within {START_SECONDS} s: {podman('logs', container, check=False).stderr[-2000:]}")


@pytest.fixture(scope="module")
def server(built_image: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The image as a participant's standalone server: a home volume that already holds an
    edited notebook (and lacks the others), the token from the environment, 127.0.0.1 only."""
    home = tmp_path_factory.mktemp("home")
    notebooks = home / "notebooks"
    notebooks.mkdir()
    edited = nbformat.read(REPO_ROOT / "notebooks" / built_image.notebooks[1], as_version=4)
    edited.cells.insert(0, nbformat.v4.new_code_cell(EDITED_MARK))
    nbformat.write(edited, notebooks / built_image.notebooks[1])
    for path in (home, notebooks, *notebooks.iterdir()):
        os.chown(path, 1000, 1000)
    (port,) = free_ports(1)
    container = built_image.podman.run(
        built_image.image,
        options=("--publish", f"127.0.0.1:{port}:8888", "--env", f"JUPYTER_TOKEN={TOKEN}",
                 "--volume", f"{home}:/home/workshop"),
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}", built_image.podman, container)
        yield Server(container, port, home)
    finally:
        built_image.podman("rm", "--force", "--time", "5", container, check=False)


def test_build_prints_the_push_line_and_reproduces_the_notebook_layer(built_image: Built):
    out = built_image.output
    assert re.search(r"^skopeo copy oci-archive:\S+imagetest-1-singleuser\.oci\.tar "
                     r"docker://REGISTRY/imagetest-singleuser:1$", out, re.MULTILINE), out
    assert "3 layers" in out
    # The build commits the notebook layer twice from the same inputs and compares digests.
    assert "not reproducible" not in out
    print(f"\nimage tier: build {built_image.build_seconds:.0f} s, archive "
          f"{built_image.archive.stat().st_size / 1024**3:.2f} GB (gzip layers)")


def test_image_runs_as_uid_1000_with_the_start_script(built_image: Built):
    config = json.loads(built_image.podman("image", "inspect", built_image.image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/usr/local/bin/workshop-start"]


def test_server_needs_the_token(server: Server):
    assert requests.get(f"{server.url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/api/status", timeout=30).status_code in (401, 403)
    assert requests.get(f"{server.url}/api/status", params={"token": "x" * 26}, timeout=30).status_code in (401, 403)


def test_server_process_is_uid_1000_not_root(built_image: Built, server: Server):
    status = built_image.podman("exec", server.container, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE).group(1).split()
    assert uids == ["1000"] * 4, status
    command = built_image.podman("exec", server.container, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert "jupyter" in command and "lab" in command, command


def test_home_keeps_the_edited_notebook_and_gets_the_missing_ones(built_image: Built, server: Server):
    notebooks = server.home / "notebooks"
    assert EDITED_MARK in (notebooks / built_image.notebooks[1]).read_text()
    for name in built_image.notebooks:
        assert (notebooks / name).is_file(), name
        assert (notebooks / name).stat().st_uid == 1000
    assert (notebooks / "workshop_utils.py").is_file()


def test_assets_are_where_the_notebooks_look_and_read_only(built_image: Built, server: Server):
    names = [asset.name for asset in built_image.assets]
    code = (
        "import json, os, pathlib, workshop_utils as wu\n"
        f"names = {names!r}\n"
        "found = {}\n"
        "for name in names:\n"
        "    path = wu.asset_path(name).resolve()\n"
        "    try:\n"
        "        open(path, 'ab').close(); writable = True\n"
        "    except PermissionError:\n"
        "        writable = False\n"
        "    found[name] = [str(path), path.stat().st_uid, writable, os.access(path.parent, os.W_OK)]\n"
        "print(json.dumps({'uid': os.getuid(), 'assets': found}))\n"
    )
    found = json.loads(run_cells(server.url, TOKEN, [code], timeout=300).strip().splitlines()[-1])
    assert found["uid"] == 1000
    for name, (path, owner, writable, folder_writable) in found["assets"].items():
        assert path.startswith("/opt/workshop/"), (name, path)
        assert owner == 0 and not writable and not folder_writable, (name, path)


def _peak_memory(podman: Podman, container: str, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        result = podman("stats", "--no-stream", "--no-reset", "--format", "{{.MemUsage}}", container, check=False)
        match = re.match(r"\s*([\d.]+)([kMG]i?B)", result.stdout)
        if match:
            scale = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[match.group(2)]
            peak[0] = max(peak[0], int(float(match.group(1)) * scale))
        stop.wait(1)


def test_notebook_00_runs_in_quick_mode_in_the_image(built_image: Built, server: Server):
    name = built_image.notebooks[0]
    assert name.startswith("00-")
    nb = nbformat.read(server.home / "notebooks" / name, as_version=4)  # the copy the start script made
    inject_parameters(nb, {"quick": True})
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_peak_memory, args=(built_image.podman, server.container, stop, peak), daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        output = run_cells(server.url, TOKEN, sources, timeout=600)
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert "f(2) = 11.0" in output, output[-2000:]
    print(f"\nimage tier: notebook 00 (quick) ran in {time.monotonic() - started:.0f} s; "
          f"container memory peak {peak[0] / 1024**2:.0f} MiB (podman stats, 1 s samples)")


def test_hub_variables_start_jupyterhub_singleuser(built_image: Built):
    """Under a hub (JUPYTERHUB_API_TOKEN set, as KubeSpawner sets it) the start script runs
    jupyterhub-singleuser, the command Zero to JupyterHub expects. Not covered: a real hub's
    OAuth login through to this server."""
    env = {"JUPYTERHUB_API_TOKEN": "hub-token-for-the-test", "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
           "JUPYTERHUB_SERVICE_PREFIX": "/user/ada/", "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/ada/",
           "JUPYTERHUB_USER": "ada", "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-ada", "JUPYTERHUB_BASE_URL": "/"}
    options: list[str] = []
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    container = built_image.podman.run(built_image.image, options=tuple(options))
    try:
        deadline = time.monotonic() + START_SECONDS
        command = ""
        while time.monotonic() < deadline:
            command = built_image.podman("exec", container, "cat", "/proc/1/cmdline", check=False).stdout
            logs = built_image.podman("logs", container, check=False).stderr
            if "jupyterhub-singleuser" in command and "jupyterhub" in logs.lower():
                break
            time.sleep(2)
        logs = built_image.podman("logs", container, check=False).stderr
        assert "jupyterhub-singleuser" in command, (command, logs[-2000:])
        # No hub answers at JUPYTERHUB_API_URL here (no real hub in this test): the server says
        # it is JupyterHub's single-user server, whatever it then makes of the missing hub.
        assert "jupyterhub" in logs.lower(), logs[-2000:]
    finally:
        built_image.podman("rm", "--force", "--time", "5", container, check=False)


def test_empty_token_is_refused(built_image: Built):
    result = built_image.podman("run", "--rm", *built_image.podman.run_options, "--env", "JUPYTER_TOKEN=",
                                built_image.image, check=False, timeout=120)
    assert result.returncode == 2
    assert "JUPYTER_TOKEN is empty" in result.stderr


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), result.stderr
    return lines[0]


def test_build_without_wheelhouse_refuses_and_keeps_dist(debian_workshop: Path):
    """No wheelhouse (or, without root, no root): one line, exit 2, an earlier archive untouched."""
    dist = debian_workshop.parent / "dist"
    dist.mkdir()
    earlier = dist / "dl-workshop-2026.11-singleuser.oci.tar"
    earlier.write_bytes(b"an earlier build")
    line = _refusal(run_appliance("image", "build", "--config", str(debian_workshop)))
    assert ("no wheelhouse" in line) if os.geteuid() == 0 else ("needs root" in line), line
    assert [p.name for p in dist.iterdir()] == [earlier.name] and earlier.read_bytes() == b"an earlier build"


def test_build_without_buildah_refuses(debian_workshop: Path, tmp_path: Path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("tar", "chroot", "mount", "umount"):
        if shutil.which(tool):
            (tools / tool).symlink_to(shutil.which(tool))
    line = _refusal(run_appliance("image", "build", "--config", str(debian_workshop), env={"PATH": str(tools)}))
    assert ("needs buildah" in line) if os.geteuid() == 0 else ("needs root" in line), line
