"""The hub's own lock (JupyterHub 5, SystemdSpawner, the idle culler) and its proxy from npm:
the lock says how it was made and resolves from the wheelhouse `appliance fetch --wheels` fills;
the proxy npm installed into the cache runs on this machine's distribution node and proxies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from appliance.lockfile import parse_lock
from appliance.wheels import Target, resolve_command
from tests.freeports import free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_IN = REPO_ROOT / "requirements" / "hub.in"
HUB_LOCK = REPO_ROOT / "requirements" / "hub.lock"
UV = str(Path(sys.executable).parent / "uv")
VM_TARGET = Target("3.13", "linux_x86_64")




def test_lock_header_names_the_command_in_hub_in() -> None:
    header = HUB_LOCK.read_text().splitlines()[:2]
    command = header[1].strip("# ").strip()
    assert command.startswith("uv pip compile ") and "--generate-hashes" in command
    assert command in HUB_IN.read_text(), "hub.in's instructions and the lock's header differ"


def test_lock_pins_the_hub_with_hashes() -> None:
    pins = {pin.name: pin for pin in parse_lock(HUB_LOCK)}
    assert pins["jupyterhub"].version.startswith("5.")
    for name in ("jupyterhub-systemdspawner", "jupyterhub-idle-culler", "jupyterlab", "pamela"):
        assert name in pins
    assert all(pin.hashes for pin in pins.values())


def test_lock_resolves_offline_from_the_hub_wheelhouse(hub_cache: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    result = subprocess.run(resolve_command(UV, HUB_LOCK, VM_TARGET, tmp_path, hub_cache / "wheels" / "hub"),
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # the VM's own wheelhouse stays exactly the workshop lock: no hub wheel at its top level
    assert not list((hub_cache / "wheels").glob("jupyterhub-*.whl"))


def test_proxy_from_the_cache_proxies_with_the_distribution_node(hub_cache: Path, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install the distribution's nodejs (the hub server uses the same)")
    proxy = hub_cache / "npm" / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
    assert proxy.is_file()
    (tmp_path / "hello.txt").write_text("through the proxy\n")
    port, api_port, backend_port = free_ports(3)
    backend = subprocess.Popen([sys.executable, "-m", "http.server", str(backend_port), "--bind", "127.0.0.1"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chp = subprocess.Popen([node, str(proxy), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                            "--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{backend_port}"],
                           env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": "test-token"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/hello.txt", timeout=5)
                if answer.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert chp.poll() is None, chp.communicate()[0]
            assert time.monotonic() < deadline, "the proxy did not answer in 60 s"
            time.sleep(0.5)
        assert answer.text == "through the proxy\n"
        routes = requests.get(f"http://127.0.0.1:{api_port}/api/routes", timeout=5)
        assert routes.status_code == 403  # its API wants the token
        routes = requests.get(f"http://127.0.0.1:{api_port}/api/routes",
                              headers={"Authorization": "token test-token"}, timeout=5)
        assert routes.status_code == 200
    finally:
        for process in (chp, backend):
            process.terminate()
            process.wait(timeout=30)
