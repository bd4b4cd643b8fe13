"""A guest kernel that dies in the middle of a play (what qemu's multi-threaded TCG made a
Debian kernel do once in CI) costs a reboot and a second run of the play, not the build:
the real base image, a real panic (sysrq c) on the first run, the same run_play_in_vm the
build and the export's sealing use."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from appliance.config import load_config
from appliance.vm import qemu, qemu_build
from appliance.vm.cachepaths import workshop_state
from appliance.vm.image import ensure_base_image
from freeports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_play_whose_guest_panics_is_run_again_after_a_reboot(tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_QEMU_ACCEL", "tcg")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "assets.yml").write_text("assets: []\n")
    (tmp_path / "workshop.yml").write_text(yaml.safe_dump({
        "name": "panic-retry", "version": "1",
        "ports": {"host_address": "127.0.0.1", **dict(zip(("jupyter", "tensorboard", "ssh"), free_ports(3)))},
        "vm": {"os": "debian", "memory_mb": 2048, "cpus": 2},
    }))  # fmt: skip
    config = load_config(tmp_path / "workshop.yml")
    base = ensure_base_image(REPO_ROOT / "cache" / "vm", config.workshop.vm.disk_gb)
    disk = tmp_path / "disk.qcow2"
    qemu_build.fresh_disk(base.disk, disk)
    fetched = tmp_path / "fetched"
    playbook = tmp_path / "crash-once.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Crash the kernel on the first run only",
        "hosts": "all", "become": True, "gather_facts": False,
        "tasks": [
            {"name": "Panic unless this disk has panicked before",
             "ansible.builtin.shell": "test -e /var/tmp/panicked-once && exit 0; "
                                      "touch /var/tmp/panicked-once && sync && echo c > /proc/sysrq-trigger"},
            {"name": "Bring back the marker the first run left",
             "ansible.builtin.fetch": {"src": "/var/tmp/panicked-once", "dest": f"{fetched}/", "flat": True}},
        ],
    }], sort_keys=False))  # fmt: skip

    said: list[str] = []
    played = qemu_build.run_play_in_vm(disk, config, base.key, playbook, "the test disk", said.append)

    assert played.report.failed_tasks == []
    assert (fetched / "panicked-once").is_file(), "the second run did not see what the first left"
    kept = workshop_state(config) / "console-panic-crash-once-1.log"
    assert qemu.console_shows_panic(kept), kept.read_text(errors="replace")[-2000:]
    assert any("panicked during crash-once.yml" in line and "attempt 2 of 2" in line for line in said), said[-20:]
    assert qemu.running_pid(config) is None, "qemu was left running"
    shutil.rmtree(workshop_state(config), ignore_errors=True)
