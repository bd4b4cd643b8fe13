"""The VM build's parts that need no full VM: the per-role timing callback (through a real
ansible-playbook run on localhost), the inventory Vagrant would write, the qemu command, and
what the qemu provider does when a guest kernel panics while booting (a real qemu booting a
one-sector disk)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.vm import qemu
from appliance.vm.cachepaths import workshop_state
from appliance.vm.playbook import ANSIBLE_CFG, Connection, playbook_environment, write_inventory
from freeports import free_ports


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


def test_built_disk_path_is_per_workshop(repo_root):
    config = load_config(repo_root / "workshop.yml")
    assert qemu.built_disk_path(config) == repo_root / "cache" / "vm" / "dl-workshop-2026.11" / "disk.qcow2"


def test_ansible_cfg_enables_the_timing_callback():
    assert "callbacks_enabled = workshop_timing" in ANSIBLE_CFG.read_text()


def _panicking_disk(path: Path) -> Path:
    """A real boot sector that prints a kernel-panic line on COM1 and halts, as a guest
    kernel that dies while booting does (what qemu's multi-threaded TCG made a Debian
    kernel do once in CI)."""
    code = bytes([
        0xFC,              # cld
        0x31, 0xC0,        # xor ax, ax
        0x8E, 0xD8,        # mov ds, ax
        0xBE, 0x17, 0x7C,  # mov si, message (0x7c00 + 23)
        0xBA, 0xF8, 0x03,  # mov dx, 0x3f8 (COM1)
        0xAC,              # next: lodsb
        0x84, 0xC0,        # test al, al
        0x74, 0x03,        # jz halt
        0xEE,              # out dx, al
        0xEB, 0xF8,        # jmp next
        0xFA,              # halt: cli
        0xF4,              # hlt
        0xEB, 0xFD,        # jmp hlt
    ])  # fmt: skip
    assert len(code) == 23
    sector = (code + b"Kernel panic - not syncing: Fatal exception in interrupt\r\n\0").ljust(510, b"\0") + b"\x55\xaa"
    raw = path.with_suffix(".raw")
    raw.write_bytes(sector.ljust(2**20, b"\0"))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(path)], check=True)
    return path


@pytest.mark.skipif(shutil.which(qemu.QEMU) is None or shutil.which("qemu-img") is None, reason="needs qemu")
def test_a_guest_whose_kernel_panics_is_booted_again_then_reported(tmp_path, monkeypatch):
    jupyter, tensorboard, ssh = free_ports(3)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "assets.yml").write_text("assets: []\n")
    (tmp_path / "workshop.yml").write_text(
        f"name: panics\nversion: '1'\nports: {{jupyter: {jupyter}, tensorboard: {tensorboard}, ssh: {ssh}}}\n"
    )
    config = load_config(tmp_path / "workshop.yml")
    disk = _panicking_disk(tmp_path / "disk.qcow2")
    monkeypatch.setenv("APPLIANCE_QEMU_ACCEL", "tcg")
    said: list[str] = []
    with pytest.raises(qemu.GuestPanicked, match=r"panicked in all 2 boots of .*disk\.qcow2; see .*console-panic-2\.log"):
        qemu.boot_until_ssh(disk, config, tmp_path / "no-key", "nobody", timeout=120, log=said.append, attempts=2)
    kept = sorted(workshop_state(config).glob("console-panic-*.log"))
    assert [path.name for path in kept] == ["console-panic-1.log", "console-panic-2.log"]
    assert all(qemu.console_shows_panic(path) for path in kept)
    assert any("panicked while booting" in line and "attempt 2 of 2" in line for line in said), said
    assert qemu.running_pid(config) is None, "qemu was left running"


def test_a_console_without_a_panic_is_not_taken_for_one(tmp_path):
    console = tmp_path / "console.log"
    assert not qemu.console_shows_panic(console)  # not written yet
    console.write_text("[    2.3] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\nDebian GNU/Linux 13 workshop ttyS0\n")
    assert not qemu.console_shows_panic(console)
    console.write_text(console.read_text() + "[    2.34] Kernel panic - not syncing: Fatal exception in interrupt\n")
    assert qemu.console_shows_panic(console)


def _appliance(*args: str, repo_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=repo_root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo_root)}, timeout=300)


def test_qemu_provider_refuses_an_os_it_does_not_build(repo_root):
    import yaml

    assert yaml.safe_load((repo_root / "workshop.yml").read_text())["vm"]["os"] == "fedora"
    result = _appliance("build", "--provider", "qemu", "--dry-run", repo_root=repo_root)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "vm.os: fedora" in line and "debian" in line and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_qemu_build_dry_run_prints_the_native_build_and_writes_nothing(repo_root, debian_workshop):
    config = debian_workshop
    folder = config.parent
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    built = _appliance("build", "--provider", "qemu", "--dry-run", "--config", str(config), repo_root=repo_root)
    again = _appliance("build", "--provider", "qemu", "--provision-only", "--dry-run", "--config", str(config),
                       repo_root=repo_root)
    assert built.returncode == 0 and again.returncode == 0, built.stderr + again.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # no key, no state folder
    assert "community.general.chroot" in built.stdout and "mkfs.ext4" in built.stdout and " -d " in built.stdout
    assert "verification boot" in built.stdout
    assert "community.general.chroot" in again.stdout and "mkfs.ext4" not in again.stdout


def test_kvm_answer_is_remembered_per_host(tmp_path, monkeypatch):
    """The real probe runs once; its answer is reused while kernel and qemu stay the same,
    and asked again when the recorded host differs."""
    if shutil.which(qemu.QEMU) is None:
        pytest.skip("qemu is not installed")
    monkeypatch.delenv("APPLIANCE_QEMU_ACCEL", raising=False)
    memo = tmp_path / "kvm-probe.json"
    first = qemu.choose_accelerator(memo)
    recorded = json.loads(memo.read_text())
    assert recorded == {"host": qemu.host_key(), "kvm": first == "kvm"}
    assert os.uname().release in recorded["host"] and "QEMU" in recorded["host"]

    memo.write_text(json.dumps({"host": qemu.host_key(), "kvm": first != "kvm"}))  # what a failed KVM boot records
    assert qemu.choose_accelerator(memo) != first  # remembered, not probed
    memo.write_text(json.dumps({"host": "another kernel | QEMU emulator version 1.0", "kvm": first != "kvm"}))
    again = qemu.choose_accelerator(memo)  # another host: probed again (on a busy host the probe may time out)
    assert json.loads(memo.read_text()) == {"host": qemu.host_key(), "kvm": again == "kvm"}


def test_export_labels_the_os_the_build_recorded(repo_root, tmp_path):
    """workshop.yml says fedora; the qemu build recorded debian next to its disk: the OVF says Debian."""
    import tarfile

    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    state = tmp_path / "state"
    state.mkdir()
    disk = state / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    (state / "build.json").write_text(json.dumps({"os": "debian", "version": "13"}))
    result = _appliance("export", "--disk", str(disk), "--provider", "qemu", "--out", str(tmp_path / "dist"),
                        repo_root=repo_root)
    assert result.returncode == 0, result.stderr
    (ova_path,) = (tmp_path / "dist").glob("*.ova")
    with tarfile.open(ova_path) as tar:
        ovf = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".ovf"))
    assert "Debian_64" in ovf and "Fedora_64" not in ovf


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("extlinux") is None, reason="needs root and extlinux")
def test_disk_writer_puts_the_root_in_a_bootable_partition(tmp_path):
    from appliance.vm.image import MBR_BIN, tree_bytes, write_disk

    root = tmp_path / "root"
    (root / "boot" / "extlinux").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("workshop\n")
    raw = tmp_path / "disk.raw"
    write_disk(root, raw, 1, "0d6c4c9e-3c47-4a59-9d0a-2a1b1f6f3d11")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True).stdout)
    [partition] = table["partitiontable"]["partitions"]
    assert partition["start"] == 2048 and partition.get("bootable")
    assert raw.read_bytes()[:440] == MBR_BIN.read_bytes()[:440]
    # The file system is read from outside at the partition's offset, as a BIOS would find it.
    part = tmp_path / "part.img"
    subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=1M", "skip=1", "conv=sparse", "status=none"], check=True)
    shown = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(part)], capture_output=True, text=True)
    assert shown.stdout == "workshop\n"
    uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(part)], capture_output=True, text=True).stdout
    assert uuid.strip() == "0d6c4c9e-3c47-4a59-9d0a-2a1b1f6f3d11"
    listed = subprocess.run(["debugfs", "-R", "ls /boot/extlinux", str(part)], capture_output=True, text=True).stdout
    assert "ldlinux.sys" in listed
    assert tree_bytes(root) > 0
    stats = subprocess.run(["dumpe2fs", "-h", str(part)], capture_output=True, text=True).stdout
    assert re.search(r"^Total journal size:\s+32M$", stats, re.M), stats


def test_a_disk_write_that_cannot_fit_is_refused_first(tmp_path):
    from appliance.errors import ApplianceError
    from appliance.vm.image import require_free_space

    free = shutil.disk_usage(tmp_path).free
    require_free_space(tmp_path, free // 2, "writing the disk image")
    with pytest.raises(ApplianceError, match=r"writing the disk image needs about .* GB free under .*; free some space"):
        require_free_space(tmp_path, free * 2, "writing the disk image")


def _small_disk(tmp_path: Path) -> Path:
    """A 1 GB partitioned qcow2 disk as the build writes it, holding /etc/hostname."""
    from appliance.vm.image import write_disk

    root = tmp_path / "tree"
    (root / "boot" / "extlinux").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("workshop\n")
    raw = tmp_path / "built.raw"
    write_disk(root, raw, 1, "0d6c4c9e-3c47-4a59-9d0a-2a1b1f6f3d11")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    return disk


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("extlinux") is None or shutil.which("qemu-img") is None,
                    reason="needs root, extlinux and qemu-img")
def test_mounted_disk_writes_back_only_a_successful_changed_session(tmp_path):
    """--provision-only's mount: the play writes to an overlay (no raw copy where FUSE works);
    a scratch session and a failed one leave the disk's bytes as they were, a successful one
    replaces the disk with a standalone qcow2 holding the change; nothing is left in `work`."""
    from appliance.vm.chroot import fuse_export_usable, mounted_disk

    disk = _small_disk(tmp_path)
    before = _sha256(disk)
    work = tmp_path / "work"

    with mounted_disk(disk, work, write_back=False) as root:
        (root / "etc" / "scratch").write_text("gone\n")
        if fuse_export_usable():
            # a view, not a copy: the raw file is the storage daemon's FUSE mount
            assert os.path.ismount(work / "disk.raw")
    assert _sha256(disk) == before

    with pytest.raises(RuntimeError):
        with mounted_disk(disk, work) as root:
            (root / "etc" / "failed").write_text("gone\n")
            raise RuntimeError("the play failed")
    assert _sha256(disk) == before

    with mounted_disk(disk, work, write_back=lambda: True) as root:
        (root / "etc" / "hostname").write_text("changed\n")
    assert _sha256(disk) != before
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert "backing-filename" not in info  # standalone: the overlay was flattened into it
    assert sorted(p.name for p in work.iterdir()) == []
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in line]

    with mounted_disk(disk, work, write_back=False) as root:
        assert (root / "etc" / "hostname").read_text() == "changed\n"
        assert not (root / "etc" / "scratch").exists() and not (root / "etc" / "failed").exists()
