"""The VM tier's built disk, exported and checked from outside: the OVA unpacks with the
.ovf first, every manifest hash matches, the OVF agrees with workshop.yml, and its VMDK
boots again under qemu (TCG) on a SATA (AHCI) disk with an e1000 NIC, as VirtualBox
attaches them, and Jupyter answers through the forwarded port. This proves the exported
disk, not the build VM.

The disk comes from the vm tier: its `built_disk` fixture when that exists, else the
APPLIANCE_BUILT_DISK environment variable, else cache/vm/<name>-<version>/disk.qcow2 where
`appliance build --provider qemu` leaves it. Without one the tests skip and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance import ova
from appliance.config import load_config
from appliance.vm import qemu
from appliance.vm.cachepaths import jupyter_token_path
from freeports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NS = {"ovf": ova.OVF_NS, "rasd": ova.RASD_NS, "vbox": ova.VBOX_NS}

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which(qemu.QEMU) is None,
                                 reason="needs qemu-img and qemu-system-x86_64")]


def _built_disk(request) -> tuple[Path, Path, bool]:
    """The built disk, the workshop.yml it was built from (its ports, token and sizes), and
    whether it is where `appliance build` left it (then `appliance export` seals it first)."""
    for name in ("built_disk", "built_vm_disk"):
        try:
            value = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
        return Path(getattr(value, "disk", value)), Path(getattr(value, "config_path", REPO_ROOT / "workshop.yml")), True
    config_path = REPO_ROOT / "workshop.yml"
    given = os.environ.get("APPLIANCE_BUILT_DISK")
    if given:
        return Path(given), config_path, False
    return qemu.built_disk_path(load_config(config_path)), config_path, True


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory) -> dict:
    disk, config_path, build_location = _built_disk(request)
    if not disk.is_file():
        pytest.skip(f"no built VM disk at {disk}: run the vm tier (`appliance build --provider qemu`) first, "
                    "or set APPLIANCE_BUILT_DISK")
    config = load_config(config_path)
    out = tmp_path_factory.mktemp("export-boot")
    # The build's own disk is exported the way an organizer does it (sealed by finalize first).
    where = [] if build_location else ["--disk", str(disk)]
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "export", "--config", str(config_path), *where,
         "--provider", "qemu", "--out", str(out / "dist")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "APPLIANCE_QEMU_ACCEL": "tcg"},
        capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    ova_path = out / "dist" / f"{config.workshop.artifact_name}.ova"
    unpacked = out / "unpacked"
    with tarfile.open(ova_path) as tar:
        names = tar.getnames()
        tar.extractall(unpacked, filter="data")
    return {"config": config, "disk": disk, "ova": ova_path, "names": names, "unpacked": unpacked,
            "stdout": result.stdout, "base": out, "sealed": build_location}


def test_ovf_first_and_manifest_hashes(exported):
    stem = exported["config"].workshop.artifact_name
    assert exported["names"] == [f"{stem}.ovf", f"{stem}-disk001.vmdk", f"{stem}.mf"]
    for line in (exported["unpacked"] / f"{stem}.mf").read_text().splitlines():
        name, digest = re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", line).groups()
        actual = hashlib.sha256()
        with (exported["unpacked"] / name).open("rb") as handle:
            while chunk := handle.read(1 << 22):
                actual.update(chunk)
        assert actual.hexdigest() == digest, name
    assert "OVA / data in the guest disk" in exported["stdout"]


def test_ovf_agrees_with_workshop_yml(exported):
    workshop = exported["config"].workshop
    stem = workshop.artifact_name
    root = ET.parse(exported["unpacked"] / f"{stem}.ovf").getroot()
    vmdk = exported["unpacked"] / f"{stem}-disk001.vmdk"
    file_el = root.find("ovf:References/ovf:File", NS)
    assert file_el.get(f"{{{ova.OVF_NS}}}href") == vmdk.name
    assert int(file_el.get(f"{{{ova.OVF_NS}}}size")) == vmdk.stat().st_size
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(exported["disk"])],
                                     capture_output=True, text=True, check=True).stdout)
    capacity = int(root.find("ovf:DiskSection/ovf:Disk", NS).get(f"{{{ova.OVF_NS}}}capacity"))
    assert capacity == info["virtual-size"]
    assert capacity >= workshop.vm.disk_gb * 10**9 * 0.9
    items = {i.find("rasd:ResourceType", NS).text: i for i in root.findall(".//ovf:VirtualHardwareSection/ovf:Item", NS)}
    assert items["3"].find("rasd:VirtualQuantity", NS).text == str(workshop.vm.cpus)
    assert items["4"].find("rasd:VirtualQuantity", NS).text == str(workshop.vm.memory_mb)
    rules = {f.get("name"): f for f in root.iter(f"{{{ova.OVF_NS}}}Forwarding")}
    for rule in ova.port_rules(workshop):
        assert rules[rule.name].get("hostip") == rule.host_ip
        assert rules[rule.name].get("hostport") == str(rule.host_port)
        assert rules[rule.name].get("guestport") == str(rule.guest_port)


def boot_vmdk(vmdk: Path, cpus: int, memory_mb: int, guest_port: int, console: Path,
              ready: Callable[[int], object | None], timeout: float = 1200) -> object | None:
    """Boot the VMDK as VirtualBox attaches it (SATA/AHCI disk, e1000 NIC) under qemu TCG,
    forward a free host port to guest_port, and poll ready(port) until it returns a value.
    A boot whose kernel panics (qemu's rare multi-threaded TCG race, as the product's own
    qemu.boot_until_ssh handles it) is stopped and booted again, up to qemu.BOOT_ATTEMPTS."""
    deadline = time.monotonic() + timeout
    for attempt in range(1, qemu.BOOT_ATTEMPTS + 1):
        port = free_port()
        command = [
            qemu.QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(memory_mb), "-smp", str(cpus),
            # snapshot=on leaves the VMDK as exported
            "-drive", f"file={vmdk},format=vmdk,if=none,id=disk0,snapshot=on",
            "-device", "ahci,id=ahci", "-device", "ide-hd,drive=disk0,bus=ahci.0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{guest_port}",
            "-device", "e1000,netdev=net0",
            "-display", "none", "-serial", f"file:{console}", "-no-reboot",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if qemu.console_shows_panic(console):
                    break
                answer = ready(port)
                if answer is not None:
                    return answer
                time.sleep(5)
            else:
                return None
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if attempt < qemu.BOOT_ATTEMPTS:
            console.replace(console.with_name(f"{console.stem}-panic-{attempt}.log"))
    return None


def _console_tail(console: Path) -> str:
    return console.read_text(errors="replace")[-3000:] if console.exists() else ""


def _guest_files(raw: Path):
    """Read files of the guest's root file system (the first MBR partition) with debugfs,
    without mounting or booting it."""
    with raw.open("rb") as handle:
        handle.seek(446 + 8)
        start = int.from_bytes(handle.read(4), "little") * 512
    device = f"{raw}?offset={start}"

    def debugfs(request: str) -> str:
        result = subprocess.run(["debugfs", "-R", request, device], capture_output=True, text=True, timeout=120)
        # stderr carries debugfs's banner and its "File not found" answers
        banner = re.compile(r"^debugfs \d[^\n]*\n?", re.MULTILINE)
        return result.stdout + banner.sub("", result.stderr)

    return debugfs


def test_exported_disk_is_sealed_with_a_build_manifest(exported, tmp_path, appliance_cli):
    if not exported["sealed"]:
        pytest.skip("APPLIANCE_BUILT_DISK was exported as it is (--disk), not sealed")
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs (e2fsprogs) is not installed")
    assert "export: sealed in" in exported["stdout"], exported["stdout"][-2000:]
    workshop = exported["config"].workshop
    # A fresh copy from the OVA: the boot test below writes to the unpacked one.
    with tarfile.open(exported["ova"]) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(".vmdk")]
        tar.extract(member, tmp_path, filter="data")
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp_path / member.name), str(raw)], check=True, timeout=1800)
    read = _guest_files(raw)

    text = read("cat /etc/workshop/build-manifest.json")
    text = text[text.index("{"):]
    manifest = json.loads(text)
    assert (manifest["name"], manifest["version"], manifest["title"]) == (workshop.name, workshop.version, workshop.title)
    assert manifest["os"].startswith("Debian") and manifest["python"]["version"].startswith("3.13")
    packages = manifest["python"]["packages"]
    assert any(re.match(r"tensorflow([-_]cpu)?==2\.", line) for line in packages), packages
    assert any(line.startswith("keras==3.") for line in packages), packages
    placed = {a.name: a.hash for a in exported["config"].included_assets() if a.place}
    assert {a["name"]: a["hash"] for a in manifest["assets"]} == placed
    copy = tmp_path / "build-manifest.json"
    copy.write_text(text)
    doctor = appliance_cli("doctor", "--config", str(exported["config"].path), "--build-manifest", str(copy))
    row = next((line for line in doctor.stdout.splitlines() if "build manifest" in line), "")
    assert f"name={workshop.name}" in row and f"version={workshop.version}" in row, doctor.stdout

    # every imported copy makes its own host keys and machine id; the build's caches are gone
    assert "ssh_host_" not in read("ls -l /etc/ssh")
    assert re.search(r"Size:\s+0\b", read("stat /etc/machine-id")), read("stat /etc/machine-id")
    assert "File not found" in read("stat /opt/workshop/wheels")
    assert "File not found" not in read("stat /opt/workshop/venv/bin/python")
    assert ".deb" not in read("ls /var/cache/apt/archives")


def test_exported_vmdk_boots_and_jupyter_answers(exported):
    workshop = exported["config"].workshop
    vmdk = exported["unpacked"] / f"{workshop.artifact_name}-disk001.vmdk"
    console = exported["base"] / "console.log"
    # where the build that made this disk keeps the token: next to the workshop.yml it read
    token_file = jupyter_token_path(exported["config"])
    token = token_file.read_text().strip() if token_file.is_file() else ""

    def jupyter(port: int) -> tuple[int, str] | None:
        url = f"http://127.0.0.1:{port}/api/status" + (f"?token={token}" if token else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return (exc.code, "") if exc.code in (401, 403) else None  # it answers, and wants the secret
        except OSError:
            return None

    # The VM only has to boot and serve Jupyter here; the shared test machine has little memory.
    answer = boot_vmdk(vmdk, workshop.vm.cpus, min(workshop.vm.memory_mb, 2048), workshop.ports.jupyter,
                       console, jupyter)
    assert answer is not None, f"Jupyter did not answer on the forwarded port; console:\n{_console_tail(console)}"
    if token:
        assert answer[0] == 200 and "started" in answer[1], answer
    else:
        assert answer[0] in (200, 401, 403), answer


def test_exported_base_image_boots_on_sata(tmp_path):
    """The vm tier's unprovisioned base image (cache/vm/base-*.qcow2), through the same export:
    it boots from the VMDK on AHCI and its sshd answers through the forwarded port."""
    bases = sorted((REPO_ROOT / "cache" / "vm").glob("base-*.qcow2"))
    if not bases:
        pytest.skip("no base image in cache/vm: the vm tier makes one (appliance build --provider qemu)")
    copy = tmp_path / "base.qcow2"
    shutil.copyfile(bases[-1], copy)  # the vm tier may be using the original
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "export", "--disk", str(copy), "--provider", "qemu",
         "--out", str(tmp_path / "dist")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr
    (ova_path,) = (tmp_path / "dist").glob("*.ova")
    with tarfile.open(ova_path) as tar:
        (vmdk_member,) = [m for m in tar.getmembers() if m.name.endswith(".vmdk")]
        tar.extract(vmdk_member, tmp_path, filter="data")
    console = tmp_path / "console.log"

    def ssh_banner(port: int) -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                banner = sock.recv(64).decode(errors="replace")
        except OSError:
            return None
        return banner if banner.startswith("SSH-") else None

    banner = boot_vmdk(tmp_path / vmdk_member.name, 2, 1024, 22, console, ssh_banner, timeout=900)
    assert banner is not None, f"no ssh banner through the forwarded port; console:\n{_console_tail(console)}"
