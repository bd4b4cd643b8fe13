"""A class's worth of participants against a JupyterHub over HTTPS, as browsers would: log in with
the slip's password, start the server, run cells through the kernel's websocket. The hub tier
(tests/vm/test_hub.py) and bench/hub.py both use it; every wait is capped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import websocket
import yaml

from freeports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOP_SECONDS = 900  # the cap of every wait


def run_appliance(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Hub:
    machine: object
    url: str
    http_url: str
    cert: str
    passwords: dict[str, str]
    config_path: Path
    inventory: Path
    deploy_seconds: float = 0.0
    deploy_output: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.cert
        # requests lets REQUESTS_CA_BUNDLE (set on CI machines) override a session's verify
        session.trust_env = False
        return session

    def login(self, user: str, password: str) -> tuple[requests.Session, requests.Response]:
        session = self.session()
        page = session.get(f"{self.url}/hub/login", timeout=120)
        page.raise_for_status()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": user, "password": password, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
        answer = session.post(f"{self.url}/hub/login", data=data, allow_redirects=False, timeout=300)
        return session, answer

    def api(self, user: str, method: str, path: str, **kwargs) -> requests.Response:
        """The hub's or the user's server's REST API with the user's own token."""
        with self.session() as session:
            return session.request(method, f"{self.url}{path}", headers={"Authorization": f"token {self.tokens[user]}"},
                                   timeout=kwargs.pop("timeout", 120), **kwargs)

    def ops(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run_appliance("hub", *args, "--inventory", str(self.inventory), "--config", str(self.config_path),
                          timeout=timeout)


def wait(probe, what: str, seconds: float = LOOP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(2)


def execute(hub: Hub, user: str, kernel_id: str, code: str) -> str:
    """One cell through the kernel's websocket; its stream output, or the error's traceback raised."""
    ws = websocket.create_connection(
        f"{hub.url.replace('https://', 'wss://')}/user/{user}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {hub.tokens[user]}"], sslopt={"ca_certs": hub.cert}, timeout=LOOP_SECONDS)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        output = ""
        deadline = time.monotonic() + LOOP_SECONDS
        for _ in range(100_000):
            assert time.monotonic() < deadline, "the cell did not finish"
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                output += message["content"]["text"]
            elif kind == "error":
                raise AssertionError(f"{user}: " + "\n".join(message["content"]["traceback"])[-3000:])
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return output
        raise AssertionError("too many messages without the cell's end")
    finally:
        ws.close()


# What each participant's first cell reports: who runs it, whether any other participant's home
# opens, whether sudo works (SystemdSpawner's NoNewPrivileges must stop it) and where Keras reads.
PROBE = """\
import getpass, os, subprocess
others = [p for p in os.listdir('/home') if p != getpass.getuser() and p.startswith('p')]
readable = []
for other in others:
    try:
        os.listdir('/home/' + other)
        readable.append(other)
    except PermissionError:
        pass
sudo = subprocess.run(['sudo', '-n', 'true'], capture_output=True).returncode
print(getpass.getuser(), 6 * 7, len(others), len(readable), sudo, os.environ.get('KERAS_HOME'),
      os.access(os.path.join(os.environ['KERAS_HOME'], 'datasets', 'mnist.npz'), os.R_OK),
      os.access(os.environ['KERAS_HOME'], os.W_OK))
"""


def log_in_and_start(hub: Hub, user: str) -> dict[str, float]:
    """Log in with the slip's password, start the server, run the probe; returns the seconds taken."""
    began = time.monotonic()
    session, answer = hub.login(user, hub.passwords[user])
    assert answer.status_code == 302, (user, answer.status_code)
    logged_in = time.monotonic()
    xsrf = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
    made = session.post(f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "hub tier", "expires_in": 7200},
                        headers={"X-XSRFToken": xsrf}, timeout=120)
    assert made.status_code in (200, 201), made.text
    hub.tokens[user] = made.json()["token"]
    start = hub.api(user, "POST", f"/hub/api/users/{user}/server", timeout=300)
    assert start.status_code in (201, 202), (user, start.status_code, start.text)
    wait(lambda: hub.api(user, "GET", f"/hub/api/users/{user}").json()["servers"].get("", {}).get("ready"),
          f"{user}'s server did not start")
    ready = time.monotonic()
    hub.started_at[user] = ready
    specs = hub.api(user, "GET", f"/user/{user}/api/kernelspecs").json()
    assert specs["default"] == "workshop" and list(specs["kernelspecs"]) == ["workshop"], specs
    kernel = hub.api(user, "POST", f"/user/{user}/api/kernels", json={"name": "workshop"}, timeout=300)
    assert kernel.status_code == 201, kernel.text
    output = execute(hub, user, kernel.json()["id"], PROBE)
    name, answer_, others, readable, sudo, keras_home, mnist, keras_writable = output.split()
    assert (name, answer_) == (user, "42"), output
    assert int(others) >= len(hub.passwords) - 1 and readable == "0", f"{user} can read other homes: {output}"
    assert sudo != "0", f"{user} can sudo"
    assert keras_home == "/opt/workshop/keras" and mnist == "True" and keras_writable == "False", output
    return {"login": logged_in - began, "spawn": ready - logged_in, "cell": time.monotonic() - ready}


def ensure_running(hub: Hub, user: str) -> None:
    """The culler may have stopped an idle server between two checks; start it again."""
    if not hub.api(user, "GET", f"/hub/api/users/{user}").json()["servers"].get("", {}).get("ready"):
        hub.api(user, "POST", f"/hub/api/users/{user}/server", timeout=300)
        wait(lambda: hub.api(user, "GET", f"/hub/api/users/{user}").json()["servers"].get("", {}).get("ready"),
              f"{user}'s server did not start again")
        hub.started_at[user] = time.monotonic()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]




@contextmanager
def start_hub(root: Path, config_path: Path, disk: Path, scratch: Path, users: int, memory_mb: int, idle_minutes: int,
              vm_memory_mb: int) -> Iterator[Hub]:
    """The built workshop `root` (its workshop.yml at `config_path`, its halted disk) as the hub
    server: a roster of p01..pNN (p01 the admin), their slips, an overlay of the disk booted
    under qemu, `appliance deploy --mode hub` over ssh; the VM is shut down on leaving."""
    from appliance.config import load_config
    from appliance.vm import qemu
    from appliance.vm.image import USER, build_key_path
    from appliance.vm.playbook import Connection, write_inventory
    from appliance.vm.qemu_build import make_overlay

    if not (root / "cache" / "npm").exists():
        (root / "cache" / "npm").symlink_to(REPO_ROOT / "cache" / "npm")
    names = [f"p{n:02d}" for n in range(1, users + 1)]
    (root / "roster.csv").write_text("user,email\n" + "".join(f"{n},{n}@example.org\n" for n in names))
    # The hub's HTTPS and HTTP ports ride on the two forwards the provider makes (jupyter, tensorboard).
    https_port, http_port, ssh_port = free_ports(3)
    workshop = yaml.safe_load(config_path.read_text())
    workshop["name"] = "vmhub"
    workshop["vm"]["memory_mb"] = vm_memory_mb
    workshop["ports"] = {"host_address": "127.0.0.1", "jupyter": https_port, "tensorboard": http_port, "ssh": ssh_port}
    workshop["hub"] = {"admins": [names[0]], "roster": "roster.csv", "url": f"https://localhost:{https_port}/",
                       "port": https_port, "http_port": http_port, "memory_mb": memory_mb, "cpus": 1.0,
                       "idle_minutes": idle_minutes,
                       # 20 servers starting at once in an emulated guest took over 12 minutes of CPU
                       "spawn_timeout_seconds": 1800}
    hub_config = root / "hub-workshop.yml"
    hub_config.write_text(yaml.safe_dump(workshop, sort_keys=False))
    config = load_config(hub_config)

    sheet = scratch / "slips.html"
    slips = run_appliance("hub", "slips", "--config", str(hub_config), "--out", str(sheet), timeout=300)
    assert slips.returncode == 0, slips.stderr
    passwords = dict(re.findall(r"<dt>User</dt><dd>([^<]+)</dd><dt>Password</dt><dd>([^<]+)</dd>", sheet.read_text()))
    assert set(passwords) == set(names)

    overlay = scratch / "hub.qcow2"
    make_overlay(disk, overlay)
    key = build_key_path(REPO_ROOT / "cache" / "vm")
    os.environ.setdefault("APPLIANCE_QEMU_ACCEL", "tcg")
    machine, _ = qemu.boot_until_ssh(overlay, config, key, USER, 900)
    try:
        inventory = scratch / "hub-inventory"
        write_inventory(inventory, Connection("127.0.0.1", ssh_port, USER, key))
        started = time.monotonic()
        deploy = run_appliance("deploy", "--mode", "hub", "--inventory", str(inventory), "--config", str(hub_config),
                               timeout=3600)
        (REPO_ROOT / "cache" / "vm" / "hub-last-deploy.log").write_text(deploy.stdout + deploy.stderr)
        assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-2000:]
        cert = scratch / "hub-cert.pem"
        cert.write_text(machine.ssh("sudo", "cat", "/etc/workshop/tls/cert.pem").stdout)
        hub = Hub(machine, f"https://localhost:{https_port}", f"http://localhost:{http_port}", str(cert), passwords,
                  hub_config, inventory, time.monotonic() - started, deploy.stdout)
        wait(lambda: hub.session().get(f"{hub.url}/hub/api", timeout=30).ok, "the hub did not answer over HTTPS")
        yield hub
    finally:
        machine.shutdown(timeout=120)
