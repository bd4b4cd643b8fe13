"""The finalize role, run by Ansible over ssh against a real Debian 13 file system (built
with mmdebstrap, sshd started inside it with chroot), then checked from outside.

Free-space filling stays off here: inside a chroot the mounts are the host's. The VM tier
(tests/vm/test_export_boot.py) covers it on a real disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from appliance.config import load_config
from appliance.vm.provision_vars import write_provision_vars
from freeports import free_port
from shiphelpers import REPO_ROOT, WORKSHOP, make_checkout

MIRROR = "http://deb.debian.org/debian"
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap into a folder, chroot, mounts)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed"
    if ANSIBLE_PLAYBOOK is None:
        return "ansible-playbook is not installed (pip install -e .[vm])"
    return None


pytestmark = [pytest.mark.vm, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


@pytest.fixture(scope="module")
def finalized(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("finalize")
    rootfs = base / "rootfs"
    built = subprocess.run(
        ["mmdebstrap", "--variant=apt", "--include=python3,python3-venv,openssh-server,systemd,systemd-sysv,sudo",
         "trixie", str(rootfs), MIRROR], capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        pytest.skip("mmdebstrap could not build Debian 13 here: " + (built.stderr.strip().splitlines() or ["?"])[-1])

    # What a used build VM has lying around
    for path, content in {
        "root/.bash_history": "ls\n", "root/.python_history": "1+1\n", "home/workshop/.bash_history": "jupyter\n",
        "tmp/build-junk/file": "x", "var/tmp/junk": "x", "var/log/test.log": "line\n" * 100,
        "var/log/test.log.1": "old\n", "var/log/apt/history.log.1.gz": "gz", "root/.cache/pip/http/blob": "x" * 1000,
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n", "var/lib/dhcp/dhclient.eth0.leases": "lease",
        # mmdebstrap cleans these itself; a provisioned VM has them again
        "var/lib/apt/lists/deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages": "Package: x\n",
        "var/cache/apt/archives/python3-venv_3.13_amd64.deb": "deb",
    }.items():
        target = rootfs / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    assert list((rootfs / "etc/ssh").glob("ssh_host_*_key")), "openssh-server made no host keys"
    assert list((rootfs / "var/lib/apt/lists").glob("*Packages*")), "no package lists to clean"
    subprocess.run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/workshop/venv"], check=True)
    wheel = rootfs / "opt/workshop/wheels/0123456789ab/numpy-2.1.0-cp313-cp313-manylinux_2_17_x86_64.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"wheel")

    key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (rootfs / "run/sshd").mkdir(parents=True, exist_ok=True)

    mounts = [rootfs / "proc", rootfs / "dev"]
    subprocess.run(["mount", "-t", "proc", "proc", str(mounts[0])], check=True)
    subprocess.run(["mount", "--bind", "/dev", str(mounts[1])], check=True)
    port = free_port()
    sshd = subprocess.Popen(["chroot", str(rootfs), "/usr/sbin/sshd", "-D", "-e", "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", "PermitRootLogin=prohibit-password"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)

        checkout = make_checkout(base / "checkout", installers=True)
        inventory = base / "inventory.ini"
        inventory.write_text(
            f"build ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
            f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
        # The product's own playbook and vars file, as `appliance export` runs them.
        config = load_config(checkout / "workshop.yml")
        vars_path = write_provision_vars(config)
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "provision" / "ansible.cfg"),
               "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
        run = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), str(REPO_ROOT / "provision" / "finalize.yml"),
                              "-e", json.dumps({"workshop_config": str(checkout / "workshop.yml"),
                                                "workshop_vars": str(vars_path), "finalize_fill": "none"})],
                             capture_output=True, text=True, env=env, timeout=900)
        # the connection still works after the host keys are gone (sshd keeps them loaded)
        after = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@127.0.0.1",
                                "true"], capture_output=True, text=True, timeout=60)
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", str(mount)], check=False)
    return {"rootfs": rootfs, "run": run, "checkout": checkout, "ssh_after": after}


def test_role_runs(finalized):
    run = finalized["run"]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "failed=0" in run.stdout


def test_build_manifest(finalized):
    manifest = json.loads((finalized["rootfs"] / "etc/workshop/build-manifest.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["title"]) == (WORKSHOP["name"], WORKSHOP["version"], WORKSHOP["title"])
    assert manifest["schema"] == 1
    assert manifest["build_date"].endswith("Z") and manifest["build_date"][:2] == "20"
    assert manifest["os"].startswith("Debian")
    assert manifest["python"]["venv"] == "/opt/workshop/venv"
    assert manifest["python"]["version"].startswith("3.")
    assert any(line.startswith("pip==") for line in manifest["python"]["packages"])
    assets = yaml.safe_load((finalized["checkout"] / "assets.yml").read_text())["assets"]
    # what the VM gets: every asset with a place (installers only go on the thumb drive)
    expected = {a["name"]: (a["place"], a["hash"]) for a in assets if a.get("place") and a["kind"] != "installer"}
    assert expected, "the manifest lists no asset for the VM"
    assert {a["name"]: (a["place"], a["hash"]) for a in manifest["assets"]} == expected


def test_doctor_shows_the_build_manifest(finalized, appliance_cli):
    path = finalized["rootfs"] / "etc/workshop/build-manifest.json"
    result = appliance_cli("doctor", "--build-manifest", str(path))
    line = next((l for l in result.stdout.splitlines() if "build manifest" in l), "")
    assert f"name={WORKSHOP['name']}" in line and f"version={WORKSHOP['version']}" in line, result.stdout


def test_wheelhouse_inside_the_vm_removed(finalized):
    # the environment is installed; the thumb drive carries the wheelhouse for local mode
    assert not (finalized["rootfs"] / "opt/workshop/wheels").exists()
    assert (finalized["rootfs"] / "opt/workshop/venv/bin/python").exists()


def test_sealed_for_copies(finalized):
    rootfs = finalized["rootfs"]
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    unit = (rootfs / "etc/systemd/system/workshop-ssh-keygen.service").read_text()
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit and "Before=ssh.service" in unit
    assert (rootfs / "etc/systemd/system/multi-user.target.wants/workshop-ssh-keygen.service").is_symlink()
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert finalized["ssh_after"].returncode == 0, finalized["ssh_after"].stderr


def test_cleaned(finalized):
    rootfs = finalized["rootfs"]
    for gone in ("root/.bash_history", "root/.python_history", "home/workshop/.bash_history", "tmp/build-junk",
                 "var/tmp/junk", "var/log/test.log.1", "var/log/apt/history.log.1.gz", "root/.cache/pip",
                 "var/lib/dhcp/dhclient.eth0.leases"):
        assert not (rootfs / gone).exists(), gone
    assert (rootfs / "var/log/test.log").stat().st_size == 0
    assert not list((rootfs / "var/lib/apt/lists").glob("*Packages*"))
    assert not list((rootfs / "var/cache/apt/archives").glob("*.deb"))
