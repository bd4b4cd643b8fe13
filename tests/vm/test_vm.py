"""Checks of the built VM from outside, in the style of testinfra: ssh for the guest's
state, the forwarded ports for what a participant sees."""

from __future__ import annotations

import json
import re
import uuid

import psutil
import pytest
import requests
import websocket

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("service", ["jupyter", "tensorboard"])
def test_service_is_active_and_enabled(built_vm, service):
    result = built_vm.ssh(f"systemctl is-active {service}; systemctl is-enabled {service}")
    assert result.stdout.split() == ["active", "enabled"], result.stdout + result.stderr


def test_build_reports_roles_and_changes(built_vm):
    out = built_vm.build_output
    assert "time per role:" in out
    for role in ("base", "python_env", "jupyter", "tensorboard", "assets", "notebooks", "motd"):
        assert re.search(rf"^\s+{role}\s+[0-9.]+ s$", out, re.M), role
    changed = int(re.search(r"^changed tasks: (\d+)$", out, re.M).group(1))
    assert changed > 10
    assert f"Jupyter:     http://localhost:{built_vm.ports['jupyter']}/lab?token={built_vm.token}" in out


def test_second_provisioning_changes_nothing(built_vm):
    assert re.search(r"^changed tasks: 0$", built_vm.reprovision_output, re.M), built_vm.reprovision_output[-3000:]


def test_jupyter_needs_the_token(built_vm):
    with_token = requests.get(f"{built_vm.jupyter_url}/api/status", params={"token": built_vm.token}, timeout=30)
    assert with_token.status_code == 200 and "started" in with_token.json()
    without = requests.get(f"{built_vm.jupyter_url}/api/status", timeout=30)
    assert without.status_code in (401, 403)
    wrong = requests.get(f"{built_vm.jupyter_url}/api/status", params={"token": "x" * 48}, timeout=30)
    assert wrong.status_code in (401, 403)


def test_notebook_runs_in_the_vm_kernel(built_vm):
    """The notebook as the server holds it (contents API), run cell by cell on a kernel the
    server starts (kernels API + websocket channels)."""
    auth = {"Authorization": f"token {built_vm.token}"}
    base = built_vm.jupyter_url
    notebook = requests.get(f"{base}/api/contents/smoke.ipynb", headers=auth, timeout=30)
    assert notebook.status_code == 200, notebook.text
    cells = [c for c in notebook.json()["content"]["cells"] if c["cell_type"] == "code"]
    kernel = requests.post(f"{base}/api/kernels", headers=auth, json={"name": "workshop"}, timeout=60).json()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{built_vm.ports['jupyter']}/api/kernels/{kernel['id']}/channels", header=auth, timeout=600
    )
    try:
        output = []
        for cell in cells:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                           "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": cell["source"], "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
            }))
            while True:
                message = json.loads(ws.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if kind == "stream":
                    output.append(message["content"]["text"])
                elif kind == "error":
                    pytest.fail("\n".join(message["content"]["traceback"]))
                elif kind == "execute_reply":
                    assert message["content"]["status"] == "ok"
                    break
    finally:
        ws.close()
        requests.delete(f"{base}/api/kernels/{kernel['id']}", headers=auth, timeout=60)
    text = "".join(output)
    assert "backend tensorflow sum 12.0" in text
    assert "keras_home /home/workshop/.keras" in text
    assert "asset 200000" in text


def test_assets_are_in_place_with_the_manifest_hashes(built_vm):
    for asset in built_vm.assets:
        algorithm, digest = asset.hash.split(":")
        root, rest = asset.place.split("/", 1)
        path = f"/home/workshop/.keras/{rest}" if root == "keras" else f"/home/workshop/notebooks/{rest}"
        result = built_vm.ssh(f"sudo {algorithm}sum {path}")  # the home is 0700
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == digest


def test_notebooks_have_a_pristine_copy_and_a_writable_one(built_vm):
    result = built_vm.ssh(
        "sudo stat -c '%U %a' /home/workshop/notebooks/smoke.ipynb /opt/workshop/notebooks-pristine/smoke.ipynb"
    )
    assert result.stdout.split("\n")[:2] == ["workshop 644", "root 644"], result.stdout


def test_login_message_names_the_urls(built_vm):
    motd = built_vm.ssh("cat /etc/motd").stdout
    assert f"http://localhost:{built_vm.ports['jupyter']}/lab?token={built_vm.token}" in motd
    assert f"http://localhost:{built_vm.ports['tensorboard']}/" in motd


def test_tensorboard_answers(built_vm):
    response = requests.get(f"http://127.0.0.1:{built_vm.ports['tensorboard']}/data/logdir", timeout=60)
    assert response.status_code == 200 and response.json()["logdir"] == "/home/workshop/logs"


def test_forwarded_ports_listen_only_on_loopback(built_vm):
    wanted = set(built_vm.ports.values())
    listening = [
        c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port in wanted
    ]
    assert {c.laddr.port for c in listening} == wanted
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert all(c.pid == built_vm.machine.pid for c in listening if c.pid is not None)


def test_the_venv_uses_python_313(built_vm):
    result = built_vm.ssh("/opt/workshop/venv/bin/python --version")
    assert result.stdout.startswith("Python 3.13"), result.stdout


def test_the_vm_offers_the_quiet_workshop_kernel_only_and_no_news(built_vm):
    auth = {"Authorization": f"token {built_vm.token}"}
    specs = requests.get(f"{built_vm.jupyter_url}/api/kernelspecs", headers=auth, timeout=30).json()
    assert specs["default"] == "workshop" and list(specs["kernelspecs"]) == ["workshop"]
    assert specs["kernelspecs"]["workshop"]["spec"]["env"]["TF_CPP_MIN_LOG_LEVEL"] == "2"
    news = requests.get(f"{built_vm.jupyter_url}/lab/api/news", headers=auth, timeout=30)
    assert news.status_code != 200 or news.json().get("news") == []
    # appliance doctor recognises the workshop's own Jupyter on the forwarded port by this header
    assert requests.get(f"{built_vm.jupyter_url}/api", timeout=30).headers.get("X-Workshop-Appliance") == "jupyter"


def test_workshop_update_is_installed_and_says_what_to_pass(built_vm):
    result = built_vm.ssh("workshop-update")  # no updates.git_url in the test workshop
    assert result.returncode == 2
    assert "pass --from" in result.stderr
