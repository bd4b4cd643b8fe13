"""The VM build's parts that need no VM: the per-role timing callback (through a real
ansible-playbook run on localhost), the inventory Vagrant would write, the qemu command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.vm import qemu
from appliance.vm.playbook import ANSIBLE_CFG, Connection, playbook_environment, write_inventory


def test_timing_callback_reports_roles_and_changed_tasks(tmp_path):
    roles = tmp_path / "roles"
    for role, changes in (("first", True), ("second", False)):
        tasks = roles / role / "tasks"
        tasks.mkdir(parents=True)
        body = (
            f"- name: Write a file\n  ansible.builtin.copy:\n    content: x\n    dest: {tmp_path}/{role}.txt\n    mode: '0644'\n"
            if changes
            else "- name: Wait a little\n  ansible.builtin.pause:\n    seconds: 1\n"
        )
        (tasks / "main.yml").write_text(body)
    (tmp_path / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles: [first, second]\n"
    )
    report = tmp_path / "report.json"
    env = playbook_environment(report)
    env["ANSIBLE_ROLES_PATH"] = str(roles)
    ansible = Path(sys.executable).parent / "ansible-playbook"
    command = [str(ansible), "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "TIME PER ROLE" in first.stdout
    data = json.loads(report.read_text())
    assert set(data["roles"]) == {"first", "second"}
    assert data["roles"]["second"] >= 1.0
    assert data["changed_tasks"] == ["first : Write a file"]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert json.loads(report.read_text())["changed_tasks"] == []


def test_inventory_is_the_line_vagrant_writes(tmp_path):
    inventory = tmp_path / "inventory"
    write_inventory(inventory, Connection("127.0.0.1", 2222, "vagrant", Path("/k/id")))
    assert inventory.read_text().startswith(
        "default ansible_host=127.0.0.1 ansible_port=2222 ansible_user='vagrant' ansible_ssh_private_key_file='/k/id'"
    )


def test_qemu_forwards_match_the_config(repo_root, tmp_path):
    config = load_config(repo_root / "workshop.yml")
    command = qemu.qemu_command(tmp_path / "d.qcow2", config, "tcg", tmp_path / "c", tmp_path / "p", tmp_path / "m")
    netdev = command[command.index("-netdev") + 1]
    assert netdev == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8888-:8888,hostfwd=tcp:127.0.0.1:6006-:6006"
    )
    assert command[command.index("-m") + 1] == "4096"


def test_kvm_probe_answers_quickly():
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm here")
    started = time.monotonic()
    assert qemu.kvm_works(timeout=10) in (True, False)
    assert time.monotonic() - started < 15


def test_built_disk_path_is_per_workshop(repo_root):
    config = load_config(repo_root / "workshop.yml")
    assert qemu.built_disk_path(config) == repo_root / "cache" / "vm" / "dl-workshop-2026.11" / "disk.qcow2"


def test_ansible_cfg_enables_the_timing_callback():
    assert "callbacks_enabled = workshop_timing" in ANSIBLE_CFG.read_text()
