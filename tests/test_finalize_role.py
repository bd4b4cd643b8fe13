"""The finalize role, run by Ansible over ssh against a real Debian 13 file system (built
with mmdebstrap, sshd started inside it with chroot), then checked from outside. Ansible
logs in as the build does (`vagrant`, a key, NOPASSWD sudo); workshop.yml names an
instructor's key.

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
        # what the build's Jupyter left: its secrets, where they were shown, its sessions
        "var/lib/workshop/jupyter/token": "buildtoken", "var/lib/workshop/jupyter/cookie_secret": "c0ffee",
        "etc/issue.d/workshop-jupyter.issue": "token buildtoken\n", "etc/motd.d/workshop-jupyter": "token buildtoken\n",
        "home/workshop/.local/share/jupyter/runtime/jpserver-1234.json": "{}",
        "home/workshop/.ipython/profile_default/history.sqlite": "sqlite",
        "home/workshop/.jupyter/lab/workspaces/default-37a8.jupyterlab-workspace": "{}",
        "home/workshop/notebooks/.ipynb_checkpoints/01-mnist-checkpoint.ipynb": "{}",
        "home/workshop/notebooks/01-mnist.ipynb": "{}",
        "opt/workshop/notebooks-pristine/.ipynb_checkpoints/01-mnist-checkpoint.ipynb": "{}",
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

    # The build's way in, as the qemu base image and Vagrant's boxes have it
    key, instructor_key = base / "id_ed25519", base / "instructor_ed25519"
    for made in (key, instructor_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(made)], check=True)
    for user in ("vagrant", "workshop"):
        subprocess.run(["chroot", str(rootfs), "useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    subprocess.run(["chroot", str(rootfs), "usermod", "-aG", "sudo", "vagrant"], check=True)
    (rootfs / "etc/sudoers.d/vagrant").write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    (rootfs / "etc/sudoers.d/vagrant").chmod(0o440)
    for home in ("home/vagrant", "root"):
        ssh_dir = rootfs / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    subprocess.run(["chroot", str(rootfs), "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"], check=True)
    subprocess.run(["chroot", str(rootfs), "chown", "-R", "workshop:workshop", "/home/workshop"], check=True)
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

        workshop = {**WORKSHOP, "vm": {**WORKSHOP["vm"], "instructor_ssh_key": instructor_key.with_suffix(".pub").read_text()}}
        checkout = make_checkout(base / "checkout", installers=True, workshop=workshop)
        inventory = base / "inventory.ini"
        inventory.write_text(
            f"build ansible_host=127.0.0.1 ansible_port={port} ansible_user=vagrant "
            f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
        # The product's own playbook and vars file, as `appliance export` runs them.
        config = load_config(checkout / "workshop.yml")
        vars_path = write_provision_vars(config)
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "provision" / "ansible.cfg"),
               "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
        run = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), str(REPO_ROOT / "provision" / "finalize.yml"),
                              "-e", json.dumps({"workshop_config": str(checkout / "workshop.yml"),
                                                "workshop_vars": str(vars_path), "finalize_fill": "none",
                                                "finalize_poweroff": False})],
                             capture_output=True, text=True, env=env, timeout=900)

        def ssh(identity: Path, user: str, command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ssh", "-i", str(identity), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                                   "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"{user}@127.0.0.1",
                                   command], capture_output=True, text=True, timeout=60)

        logins = {
            # sshd still runs with the host keys it loaded; what it lets in is what changed
            "instructor": ssh(instructor_key, "instructor", "sudo -n true && echo instructor-is-root"),
            "vagrant": ssh(key, "vagrant", "echo in"),
            "root": ssh(key, "root", "echo in"),
            # what a participant's notebook could try
            "workshop_sudo": subprocess.run(["chroot", str(rootfs), "runuser", "-u", "workshop", "--", "sudo", "-n", "true"],
                                            capture_output=True, text=True, timeout=60),
            "vagrant_sudo": subprocess.run(["chroot", str(rootfs), "runuser", "-u", "vagrant", "--", "sudo", "-n", "true"],
                                           capture_output=True, text=True, timeout=60),
        }
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", str(mount)], check=False)
    return {"rootfs": rootfs, "run": run, "checkout": checkout, "logins": logins}


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


def test_cleaned(finalized):
    rootfs = finalized["rootfs"]
    for gone in ("root/.bash_history", "root/.python_history", "home/workshop/.bash_history", "tmp/build-junk",
                 "var/tmp/junk", "var/log/test.log.1", "var/log/apt/history.log.1.gz", "root/.cache/pip",
                 "var/lib/dhcp/dhclient.eth0.leases"):
        assert not (rootfs / gone).exists(), gone
    assert (rootfs / "var/log/test.log").stat().st_size == 0
    assert not list((rootfs / "var/lib/apt/lists").glob("*Packages*"))
    assert not list((rootfs / "var/cache/apt/archives").glob("*.deb"))


def test_jupyter_leftovers_and_secrets_removed(finalized):
    rootfs = finalized["rootfs"]
    for gone in ("var/lib/workshop/jupyter/token", "var/lib/workshop/jupyter/cookie_secret",
                 "etc/issue.d/workshop-jupyter.issue", "etc/motd.d/workshop-jupyter",
                 "home/workshop/.local/share/jupyter/runtime", "home/workshop/.ipython/profile_default/history.sqlite",
                 "home/workshop/.jupyter/lab/workspaces", "home/workshop/notebooks/.ipynb_checkpoints",
                 "opt/workshop/notebooks-pristine/.ipynb_checkpoints"):
        assert not (rootfs / gone).exists(), gone
    assert (rootfs / "home/workshop/notebooks/01-mnist.ipynb").exists()


def test_build_access_gone(finalized):
    rootfs, logins = finalized["rootfs"], finalized["logins"]
    for user in ("vagrant", "root"):
        assert logins[user].returncode == 255 and "in" not in logins[user].stdout, (user, logins[user])
        assert "Permission denied" in logins[user].stderr, logins[user].stderr
    assert not (rootfs / "etc/sudoers.d/vagrant").exists()
    assert not list(rootfs.glob("root/.ssh/authorized_keys*")) and not list(rootfs.glob("home/vagrant/.ssh/authorized_keys*"))
    shadow = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/shadow").read_text().splitlines()}
    assert shadow["vagrant"][1].startswith("!") and shadow["vagrant"][7] == "1", shadow["vagrant"]
    assert "vagrant" not in (rootfs / "etc/group").read_text().split("\nsudo:")[1].split("\n")[0]
    for user in ("workshop", "vagrant"):
        refused = logins[f"{user}_sudo"]
        assert refused.returncode != 0, refused
    assert "sudo:" in logins["workshop_sudo"].stderr, logins["workshop_sudo"].stderr


def test_instructor_key_alone_lets_the_instructor_in(finalized):
    rootfs, login = finalized["rootfs"], finalized["logins"]["instructor"]
    assert login.returncode == 0 and "instructor-is-root" in login.stdout, login
    authorized = (rootfs / "home/instructor/.ssh/authorized_keys").read_text().splitlines()
    assert len(authorized) == 1 and authorized[0].startswith("ssh-ed25519 ")
