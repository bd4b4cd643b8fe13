"""The personal mode on the VM tier: the VM the qemu provider built (an overlay of the session's one
build) is the "remote" GPU machine; `appliance deploy --mode personal` provisions it over ssh, then,
from this host over the forwarded loopback ports only: Jupyter answers HTTPS with the certificate
the host made (verified against the copy read over ssh, and the fingerprint the deploy printed),
plain HTTP on that port gets no answer, TensorBoard's own port is closed to the network and is
reached through Jupyter at /tensorboard/, nothing but ssh and Jupyter listens beyond loopback,
the API refuses a visitor without login (and any token), a wrong password is refused, the right
one logs in and a cell runs in the workshop kernel; a second deploy changes nothing. Last, a
`--check` deploy with Let's Encrypt settings (ACME cannot run here: no public DNS name reaches
the VM) runs the acme role in check mode and changes nothing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import websocket
import yaml

from appliance_runner import REPO_ROOT, run_appliance
from freeports import free_ports
from workers import SERVER_TIERS, SHARED_BUILD

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group(SHARED_BUILD), SERVER_TIERS]

NAME = "vmpers"
LOOP_SECONDS = 900  # every wait below is capped
DEPLOY_SECONDS = 3600
LLMNR_PORT = 5355  # systemd-resolved answers link-local name queries on it in Debian's image


@dataclass
class Personal:
    machine: object
    url: str
    https_port: int
    tensorboard_port: int
    cert: str
    password: str
    deploy_seconds: float
    deploy_output: str
    config_path: Path
    inventory: Path

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.cert
        # requests lets REQUESTS_CA_BUNDLE (set on CI machines) override a session's verify
        session.trust_env = False
        return session

    def login(self, password: str) -> tuple[requests.Session, requests.Response]:
        session = self.session()
        page = session.get(f"{self.url}/login", timeout=60)
        assert page.status_code == 200, page.status_code
        answer = session.post(f"{self.url}/login", data={"password": password, "_xsrf": session.cookies["_xsrf"]},
                              allow_redirects=False, timeout=120)
        return session, answer

    def deploy(self, *extra: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_appliance("deploy", "--mode", "personal", "--inventory", str(self.inventory),
                             "--config", str(config or self.config_path), *extra, timeout=DEPLOY_SECONDS)


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


def _workshop(built_disk, https_port: int, tensorboard_port: int, ssh_port: int, **personal) -> dict:
    workshop = yaml.safe_load(built_disk.config_path.read_text())
    workshop["name"] = NAME
    # The provider forwards 127.0.0.1:<ports.x> to the same port in the guest: Jupyter's HTTPS port
    # rides on the jupyter forward, and the tensorboard forward shows whether that port is closed.
    workshop["ports"] = {"host_address": "127.0.0.1", "jupyter": https_port, "tensorboard": tensorboard_port, "ssh": ssh_port}
    workshop["personal"] = {"bind_address": "0.0.0.0", "port": https_port, **personal}
    return workshop


@pytest.fixture(scope="module")
def personal(built_disk, tmp_path_factory) -> Personal:
    from appliance.config import load_config
    from appliance.vm import qemu
    from appliance.vm.image import USER, build_key_path
    from appliance.vm.playbook import Connection, write_inventory
    from appliance.vm.qemu_build import make_overlay

    root = built_disk.root
    https_port, tensorboard_port, ssh_port = free_ports(3)
    config_path = root / "personal-workshop.yml"
    config_path.write_text(yaml.safe_dump(_workshop(built_disk, https_port, tensorboard_port, ssh_port), sort_keys=False))
    config = load_config(config_path)

    made = run_appliance("personal", "password", "--generate", "--config", str(config_path), timeout=120)
    assert made.returncode == 0, made.stderr
    password = re.search(r"shown only now; give it to the user\): (\S+)", made.stdout).group(1)

    overlay = tmp_path_factory.mktemp("personal") / "personal.qcow2"
    make_overlay(built_disk.disk, overlay)
    key = build_key_path(REPO_ROOT / "cache" / "vm")
    machine, _ = qemu.boot_until_ssh(overlay, config, key, USER, 900)
    try:
        inventory = root / "personal-inventory"
        write_inventory(inventory, Connection("127.0.0.1", ssh_port, USER, key))
        started = time.monotonic()
        deploy = run_appliance("deploy", "--mode", "personal", "--inventory", str(inventory), "--config", str(config_path),
                               timeout=DEPLOY_SECONDS)
        seconds = time.monotonic() - started
        (REPO_ROOT / "cache" / "vm" / "personal-last-deploy.log").write_text(deploy.stdout + deploy.stderr)
        assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-2000:]
        print(f"\npersonal deploy ({machine.accelerator}): {seconds:.0f} s")
        cert = root / "personal-cert.pem"
        cert.write_text(machine.ssh("sudo", "cat", "/etc/workshop/tls/cert.pem").stdout)
        result = Personal(machine, f"https://localhost:{https_port}", https_port, tensorboard_port, str(cert), password,
                          seconds, deploy.stdout, config_path, inventory)
        _wait(lambda: result.session().get(f"{result.url}/login", timeout=30).status_code == 200,
              "Jupyter did not answer over HTTPS")
        yield result
    finally:
        machine.shutdown(timeout=120)


def test_https_answers_with_the_hosts_certificate(personal: Personal) -> None:
    from appliance.personal.deploy import fingerprint

    page = personal.session().get(f"{personal.url}/login", timeout=60)
    assert page.status_code == 200 and page.headers.get("X-Workshop-Appliance") == "jupyter"
    # the deploy brought the same certificate back and printed its fingerprint for the user
    printed = re.search(r"^certificate of default: (\S+), SHA-256 fingerprint ([0-9A-F:]{95})$", personal.deploy_output, re.M)
    assert printed, personal.deploy_output[-2000:]
    assert Path(printed.group(1)).read_text() == Path(personal.cert).read_text()
    assert printed.group(2) == fingerprint(Path(personal.cert).read_text())
    # and nothing else is trusted: the system's CAs do not vouch for it
    with pytest.raises(requests.exceptions.SSLError):
        requests.Session().get(f"{personal.url}/login", timeout=60, verify=True)


def test_plain_http_gets_no_answer(personal: Personal) -> None:
    session = requests.Session()
    session.trust_env = False
    try:
        answer = session.get(f"http://localhost:{personal.https_port}/login", timeout=60)
    except requests.exceptions.ConnectionError:
        return  # the TLS server drops a plain-HTTP request
    assert answer.status_code >= 400 and "X-Workshop-Appliance" not in answer.headers, answer.status_code


def test_only_ssh_and_jupyter_listen_beyond_loopback(personal: Personal) -> None:
    listening = personal.machine.ssh("ss", "-Htln").stdout
    public = set()
    for line in listening.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        if not re.fullmatch(r"(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\])(%\w+)?", address):
            public.add(int(port))
    # beside ssh and Jupyter's HTTPS only the OS's own LLMNR (systemd-resolved, 5355): not HTTP, not ours
    assert public <= {22, personal.https_port, LLMNR_PORT}, listening
    assert personal.https_port in public, listening
    # TensorBoard's port is on loopback only: its forward reaches nothing
    session = requests.Session()
    session.trust_env = False
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"http://127.0.0.1:{personal.tensorboard_port}/", timeout=60)


def test_no_way_in_without_the_password(personal: Personal) -> None:
    session = personal.session()
    for path in ("/api/kernels", "/api/contents", "/tensorboard/"):
        assert session.get(f"{personal.url}{path}", allow_redirects=False, timeout=60).status_code in (302, 403), path
        for token in ("", "x" * 48):  # no token opens it (the password is the only way in)
            answer = session.get(f"{personal.url}{path}", params={"token": token},
                                 headers={"Authorization": f"token {token}"}, allow_redirects=False, timeout=60)
            assert answer.status_code in (302, 403), (path, token, answer.status_code)
    lab = session.get(f"{personal.url}/lab", allow_redirects=False, timeout=60)
    assert lab.status_code == 302 and "/login" in lab.headers["Location"]


def test_a_wrong_password_is_refused(personal: Personal) -> None:
    for wrong in (personal.password + "x", personal.password.upper(), ""):
        session, answer = personal.login(wrong)
        assert answer.status_code == 401, answer.status_code
        assert session.get(f"{personal.url}/api/kernels", timeout=60).status_code == 403


def _execute(personal: Personal, session: requests.Session, kernel_id: str, code: str) -> str:
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    ws = websocket.create_connection(
        f"wss://localhost:{personal.https_port}/api/kernels/{kernel_id}/channels", header=[f"Cookie: {cookies}"],
        sslopt={"ca_certs": personal.cert}, suppress_origin=True, timeout=LOOP_SECONDS)
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


def test_the_password_logs_in_and_a_cell_runs_in_the_workshop_kernel(personal: Personal) -> None:
    session, answer = personal.login(personal.password)
    assert answer.status_code == 302, answer.status_code
    xsrf = {"X-XSRFToken": session.cookies["_xsrf"]}
    specs = session.get(f"{personal.url}/api/kernelspecs", timeout=60).json()
    assert specs["default"] == "workshop" and list(specs["kernelspecs"]) == ["workshop"], specs
    kernel = session.post(f"{personal.url}/api/kernels", json={"name": "workshop"}, headers=xsrf, timeout=120)
    assert kernel.status_code == 201, kernel.text
    try:
        output = _execute(personal, session, kernel.json()["id"],
                          "import getpass, os, sys\nprint(getpass.getuser(), sys.prefix, os.environ['KERAS_BACKEND'], 6 * 7)\n")
        assert output.split() == ["workshop", "/opt/workshop/venv", "tensorflow", "42"], output
    finally:
        session.delete(f"{personal.url}/api/kernels/{kernel.json()['id']}", headers=xsrf, timeout=60)


def test_tensorboard_through_jupyter(personal: Personal) -> None:
    """TensorBoard starts at its first visit (socket activation), here through Jupyter's proxy.
    Under software emulation its TensorFlow import takes minutes: the proxy's request may time out
    while it starts, so the visit is repeated, within LOOP_SECONDS."""
    session, answer = personal.login(personal.password)
    assert answer.status_code == 302
    started = time.monotonic()
    _wait(lambda: session.get(f"{personal.url}/tensorboard/data/logdir", timeout=330).status_code == 200,
          "TensorBoard did not answer through Jupyter")
    print(f"\nTensorBoard's first answer through Jupyter: {time.monotonic() - started:.0f} s")
    logdir = session.get(f"{personal.url}/tensorboard/data/logdir", timeout=60).json()
    assert logdir["logdir"] == "/home/workshop/logs", logdir


def test_second_deploy_changes_nothing(personal: Personal) -> None:
    started = time.monotonic()
    again = personal.deploy()
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    changed = re.search(r"^changed tasks: (\d+)", again.stdout, re.MULTILINE)
    print(f"\nsecond personal deploy: {seconds:.0f} s, {changed.group(1) if changed else '?'} changed tasks")
    assert changed and changed.group(1) == "0", again.stdout[-4000:]


def test_acme_settings_pass_a_check_run_that_changes_nothing(personal: Personal) -> None:
    workshop = yaml.safe_load(personal.config_path.read_text())
    workshop["personal"]["acme"] = {"domain": "gpu1.example.org", "email": "organizer@example.org", "staging": True}
    config_path = personal.config_path.with_name("personal-acme-workshop.yml")
    config_path.write_text(yaml.safe_dump(workshop, sort_keys=False))
    before = personal.machine.ssh("sudo", "sha256sum", "/etc/workshop/tls/cert.pem", "/opt/workshop/jupyter/jupyter_server_config.json").stdout
    check = personal.deploy("--check", config=config_path)
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    assert re.search(r"^\s+acme\s+[0-9.]+ s$", check.stdout, re.M), check.stdout[-3000:]
    assert re.search(r"^would change tasks: [1-9]", check.stdout, re.M), check.stdout[-3000:]
    after = personal.machine.ssh("sudo", "sha256sum", "/etc/workshop/tls/cert.pem", "/opt/workshop/jupyter/jupyter_server_config.json").stdout
    assert after == before
    assert personal.machine.ssh("sh", "-c", shlex.quote("command -v certbot"), check=False).returncode != 0
