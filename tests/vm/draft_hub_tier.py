# DRAFT, not collected by pytest (its name is not test_*.py): the VM hub tier of issue 12. Its first
# full run (session 17, 4 users, TCG, run by hand with `pytest -n 0 tests/vm/draft_hub_tier.py`): the
# deploy took 781 s, 346 of them a per-file notebook copy (now one archive: the next deploys took
# 313 s, then 240 s with 0 changed tasks); redirect, refusals, login + spawn + cell + closed homes
# passed against that hub. Not in CI: with the second deploy it adds about 15 minutes to a run of
# about 33. Rename to test_hub.py when the hub tier has room (its own worker, or a faster deploy).
"""The hub tier: the VM the qemu provider built (an overlay of the session's one build) is the
"remote" server; `appliance deploy --mode hub` provisions it over ssh with a roster, then, from
this host over the forwarded loopback ports only: HTTP redirects to HTTPS (the server's own
certificate verifies for localhost), a wrong password and an unknown user are refused, two users
log in, their servers start under SystemdSpawner, a cell runs in each through the kernel API, one
participant cannot read another's home. HUB_TEST_USERS sets the roster's size (default 4)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket
import yaml

from freeports import free_ports

pytestmark = pytest.mark.vm

REPO_ROOT = Path(__file__).resolve().parents[2]
USERS = int(os.environ.get("HUB_TEST_USERS", "4"))
LOOP_SECONDS = 600  # every wait below is capped


def _appliance(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


class Hub:
    def __init__(self, machine, https_port: int, http_port: int, cert: Path, passwords: dict[str, str],
                 deploy_seconds: float, deploy_output: str, config_path: Path, inventory: Path) -> None:
        self.machine = machine
        self.url = f"https://localhost:{https_port}"
        self.http_url = f"http://localhost:{http_port}"
        self.cert = str(cert)
        self.passwords = passwords
        self.deploy_seconds = deploy_seconds
        self.deploy_output = deploy_output
        self.config_path = config_path
        self.inventory = inventory

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.cert
        # requests lets REQUESTS_CA_BUNDLE (set on CI machines) override a session's verify
        session.trust_env = False
        return session

    def login(self, user: str, password: str) -> tuple[requests.Session, requests.Response]:
        session = self.session()
        page = session.get(f"{self.url}/hub/login", timeout=60)
        page.raise_for_status()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": user, "password": password, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
        answer = session.post(f"{self.url}/hub/login", data=data, allow_redirects=False, timeout=120)
        return session, answer


@pytest.fixture(scope="module")
def hub(built_disk, tmp_path_factory) -> Hub:
    from appliance.config import load_config
    from appliance.vm import qemu
    from appliance.vm.image import USER, build_key_path
    from appliance.vm.playbook import Connection, write_inventory
    from appliance.vm.qemu_build import make_overlay

    root = built_disk.root
    if not (root / "cache" / "npm").exists():
        (root / "cache" / "npm").symlink_to(REPO_ROOT / "cache" / "npm")
    names = [f"p{n:02d}" for n in range(1, USERS + 1)]
    (root / "roster.csv").write_text("user,email\n" + "".join(f"{n},{n}@example.org\n" for n in names))
    # The hub's HTTPS and HTTP ports ride on the two forwards the provider makes (jupyter, tensorboard).
    https_port, http_port, ssh_port = free_ports(3)
    workshop = yaml.safe_load(built_disk.config_path.read_text())
    workshop["name"] = "vmhub"
    workshop["ports"] = {"host_address": "127.0.0.1", "jupyter": https_port, "tensorboard": http_port, "ssh": ssh_port}
    workshop["hub"] = {"admins": [names[0]], "roster": "roster.csv", "url": f"https://localhost:{https_port}/",
                       "port": https_port, "http_port": http_port, "memory_mb": 1024, "cpus": 1.0, "idle_minutes": 60}
    config_path = root / "hub-workshop.yml"
    config_path.write_text(yaml.safe_dump(workshop, sort_keys=False))
    config = load_config(config_path)

    slips = _appliance("hub", "slips", "--config", str(config_path), timeout=120)
    assert slips.returncode == 0, slips.stderr
    sheet = next(iter(sorted((REPO_ROOT / "cache" / "vm" / "vmhub-1").glob("hub-slips-*.html"), reverse=True)))
    passwords = dict(re.findall(r"<dt>User</dt><dd>([^<]+)</dd><dt>Password</dt><dd>([^<]+)</dd>", sheet.read_text()))
    assert set(passwords) == set(names)

    overlay = tmp_path_factory.mktemp("hub") / "hub.qcow2"
    make_overlay(built_disk.disk, overlay)
    key = build_key_path(REPO_ROOT / "cache" / "vm")
    os.environ.setdefault("APPLIANCE_QEMU_ACCEL", "tcg")
    machine, _ = qemu.boot_until_ssh(overlay, config, key, USER, 900)
    try:
        inventory = root / "hub-inventory"
        write_inventory(inventory, Connection("127.0.0.1", ssh_port, USER, key))
        started = time.monotonic()
        deploy = _appliance("deploy", "--mode", "hub", "--inventory", str(inventory), "--config", str(config_path),
                            timeout=3600)
        seconds = time.monotonic() - started
        (REPO_ROOT / "cache" / "vm" / "hub-last-deploy.log").write_text(deploy.stdout + deploy.stderr)
        assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-2000:]
        print(f"\nhub deploy ({USERS} users, {machine.accelerator}): {seconds:.0f} s")
        cert = root / "hub-cert.pem"
        cert.write_text(machine.ssh("sudo", "cat", "/etc/workshop/tls/cert.pem").stdout)
        hub = Hub(machine, https_port, http_port, cert, passwords, seconds, deploy.stdout, config_path, inventory)
        _wait(lambda: hub.session().get(f"{hub.url}/hub/api", timeout=30).ok, "the hub did not answer over HTTPS")
        yield hub
    finally:
        machine.shutdown(timeout=120)


def _wait(probe, what: str, seconds: float = LOOP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(3)


def test_http_redirects_to_https(hub: Hub) -> None:
    answer = requests.get(f"{hub.http_url}/hub/login", allow_redirects=False, timeout=60)
    assert answer.status_code in (301, 302, 307, 308), answer.status_code
    assert answer.headers["Location"].startswith("https://localhost:"), answer.headers["Location"]


def test_wrong_password_and_unknown_user_are_refused(hub: Hub) -> None:
    user = next(iter(hub.passwords))
    for name, password in ((user, hub.passwords[user] + "x"), ("mallory", "whatever-1234"),
                           ("vagrant", "vagrant"), ("root", "")):
        _, answer = hub.login(name, password)
        assert answer.status_code == 403, (name, answer.status_code)
        assert "hub/home" not in answer.headers.get("Location", "")


def _start_and_run(hub: Hub, user: str) -> tuple[str, str]:
    """Log in, start the user's server, run one cell in the workshop kernel; returns (token, output)."""
    session, answer = hub.login(user, hub.passwords[user])
    assert answer.status_code == 302, answer.status_code
    xsrf = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
    made = session.post(f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "hub tier", "expires_in": 3600},
                        headers={"X-XSRFToken": xsrf}, timeout=60)
    assert made.status_code in (200, 201), made.text
    token = made.json()["token"]
    auth = {"Authorization": f"token {token}"}
    start = requests.post(f"{hub.url}/hub/api/users/{user}/server", headers=auth, verify=hub.cert, timeout=120)
    assert start.status_code in (201, 202, 400), start.text  # 400: already running
    _wait(lambda: requests.get(f"{hub.url}/hub/api/users/{user}", headers=auth, verify=hub.cert, timeout=30)
          .json()["servers"].get("", {}).get("ready"), f"{user}'s server did not start")
    base = f"{hub.url}/user/{user}"
    specs = requests.get(f"{base}/api/kernelspecs", headers=auth, verify=hub.cert, timeout=60).json()
    assert specs["default"] == "workshop" and list(specs["kernelspecs"]) == ["workshop"], specs
    kernel = requests.post(f"{base}/api/kernels", json={"name": "workshop"}, headers=auth, verify=hub.cert, timeout=120)
    assert kernel.status_code == 201, kernel.text
    code = ("import os, getpass\n"
            "others = [p for p in os.listdir('/home') if p != getpass.getuser() and p.startswith('p')]\n"
            "denied = []\n"
            "for other in others:\n"
            "    try:\n        os.listdir('/home/' + other)\n"
            "    except PermissionError:\n        denied.append(other)\n"
            "print(getpass.getuser(), 6 * 7, len(others), len(denied))\n")
    output = _execute(base.replace("https://", "wss://"), kernel.json()["id"], token, hub.cert, code)
    return token, output


def _execute(base: str, kernel_id: str, token: str, cert: str, code: str) -> str:
    ws = websocket.create_connection(f"{base}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {token}"], sslopt={"ca_certs": cert}, timeout=300)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        output = ""
        deadline = time.monotonic() + LOOP_SECONDS
        for _ in range(1000):
            assert time.monotonic() < deadline, "the cell did not finish"
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                output += message["content"]["text"]
            elif kind == "error":
                raise AssertionError("\n".join(message["content"]["traceback"]))
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return output
        raise AssertionError("too many messages without the cell's end")
    finally:
        ws.close()


def test_two_users_log_in_run_a_cell_and_cannot_read_each_other(hub: Hub) -> None:
    first, second = list(hub.passwords)[:2]
    for user in (first, second):
        _, output = _start_and_run(hub, user)
        name, answer, others, denied = output.split()
        assert (name, answer) == (user, "42"), output
        assert int(others) == USERS - 1 and int(denied) == int(others), output  # every other home is closed
    units = hub.machine.ssh("systemctl", "show", f"jupyter-{first}-singleuser", "-p", "MemoryMax", "-p", "User").stdout
    assert f"MemoryMax={1024 * 1024 * 1024}" in units and f"User={first}" in units, units


def test_second_deploy_changes_nothing(hub: Hub) -> None:
    again = _appliance("deploy", "--mode", "hub", "--inventory", str(hub.inventory), "--config", str(hub.config_path),
                       timeout=3600)
    assert again.returncode == 0, again.stdout[-4000:]
    changed = re.search(r"^changed tasks: (\d+)", again.stdout, re.MULTILINE)
    print(f"\nsecond hub deploy: {changed.group(1) if changed else '?'} changed tasks")
    assert changed and changed.group(1) == "0", again.stdout[-4000:]
