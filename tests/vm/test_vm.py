"""Checks of the built VM from outside, in the style of testinfra: ssh for the guest's
state, the forwarded ports for what a participant sees."""

from __future__ import annotations

import json
import re

import psutil
import pytest
import requests

from kernelclient import run_cells

from workers import SHARED_BUILD

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group(SHARED_BUILD)]


@pytest.mark.parametrize("service", ["jupyter.service", "tensorboard.socket"])
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


def _run_in_kernel(built_vm, sources: list[str], timeout: float = 900) -> str:
    """Run code cells on a kernel the VM's Jupyter starts; returns what they printed."""
    return run_cells(built_vm.jupyter_url, built_vm.token, sources, timeout)


def test_every_notebook_and_asset_is_where_the_notebooks_look(built_vm):
    """In the VM's kernel (the notebooks' folder, KERAS_HOME and manifest of the service):
    workshop_utils.asset_path finds each asset, with the manifest's hash; every notebook of
    workshop.yml is in the participant's folder."""
    import yaml

    notebooks = yaml.safe_load(built_vm.config_path.read_text())["notebooks"]
    names = [a.name for a in built_vm.assets]
    code = (
        "import hashlib, json, pathlib, workshop_utils as wu\n"
        f"paths = {{n: str(wu.asset_path(n)) for n in {names!r}}}\n"
        "print(json.dumps({'assets': {n: [p, hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()]"
        " for n, p in paths.items()},"
        f" 'notebooks': [n for n in {notebooks!r} if (wu.notebooks_dir() / n).is_file()]}}))\n"
    )
    found = json.loads(_run_in_kernel(built_vm, [code]).strip().splitlines()[-1])
    assert found["notebooks"] == notebooks
    assert len(notebooks) == 10 and len(built_vm.assets) == 6
    for asset in built_vm.assets:
        path, digest = found["assets"][asset.name]
        root, rest = asset.place.split("/", 1)
        assert path == (f"/home/workshop/.keras/{rest}" if root == "keras" else f"/home/workshop/notebooks/{rest}")
        assert "sha256:" + digest == asset.hash, asset.name


def test_vm_has_the_memory_workshop_yml_asks_for(built_vm):
    import yaml

    wanted = yaml.safe_load((built_vm.root / "workshop.yml").read_text())["vm"]["memory_mb"]
    assert wanted == 4096  # the repository's default, not a test value
    total_kb = int(built_vm.ssh("grep MemTotal /proc/meminfo").stdout.split()[1])
    assert total_kb / 1024 > wanted * 0.9


def test_build_was_verified_by_a_boot_and_recorded(built_vm):
    assert re.search(r"^verified: Jupyter ready \d+ s after qemu started", built_vm.build_output, re.M), built_vm.build_output[-3000:]
    from appliance.config import load_config
    from appliance.vm.cachepaths import build_record_path

    record = json.loads(build_record_path(load_config(built_vm.config_path)).read_text())
    assert (record["os"], record["version"]) == ("debian", "13")


def test_notebooks_have_a_pristine_copy_and_a_writable_one(built_vm):
    result = built_vm.ssh(
        "sudo stat -c '%U %a' /home/workshop/notebooks/00-framework-basics.ipynb /opt/workshop/notebooks-pristine/00-framework-basics.ipynb"
    )
    assert result.stdout.split("\n")[:2] == ["workshop 644", "root 644"], result.stdout


def test_login_message_names_the_urls(built_vm):
    # the token comes from this copy's secrets unit (/etc/motd.d), the rest from the motd role
    motd = built_vm.ssh("cat /etc/motd /etc/motd.d/workshop-jupyter").stdout
    assert f"http://localhost:{built_vm.ports['jupyter']}/lab?token={built_vm.token}" in motd
    issue = built_vm.ssh("cat /etc/issue.d/workshop-jupyter.issue").stdout
    assert f"enter this token: {built_vm.token}" in issue
    assert f"http://localhost:{built_vm.ports['tensorboard']}/" in motd


def test_tensorboard_starts_at_the_first_visit(built_vm):
    """Idle, the appliance holds no TensorBoard; the first request through the forwarded port
    starts it (socket activation) and gets its answer."""
    assert built_vm.ssh("systemctl is-active tensorboard.service").stdout.strip() == "inactive"
    # the first visit waits for TensorFlow's import, minutes under software emulation
    response = requests.get(f"http://127.0.0.1:{built_vm.ports['tensorboard']}/data/logdir", timeout=900)
    assert response.status_code == 200 and response.json()["logdir"] == "/home/workshop/logs"
    assert built_vm.ssh("systemctl is-active tensorboard.service").stdout.strip() == "active"


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
