"""The VM tier's built disk, exported and checked from outside: the OVA unpacks with the
.ovf first, every manifest hash matches, the OVF agrees with workshop.yml, and its VMDK
boots again under qemu (TCG) on a SATA (AHCI) disk with an e1000 NIC, as VirtualBox
attaches them, and Jupyter answers through the forwarded port (the two copies below). This
proves the exported disk, not the build VM.

Two copies of the exported disk are booted side by side, as two participants' imports: each
shows its own Jupyter token on the console (read from the serial console, as a participant
reads the VirtualBox window), refuses the other's token and the build's, refuses a request
with a foreign Host header; the build's ssh key is refused, and through the instructor's key
(workshop.yml's vm.instructor_ssh_key, given for this export) the workshop user has no sudo.

The disk comes from the vm tier: its `built_disk` fixture when that exists, else the
APPLIANCE_BUILT_DISK environment variable, else cache/vm/<name>-<version>/disk.qcow2 where
`appliance build --provider qemu` leaves it. Without one the tests skip and say so.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from appliance import ova
from appliance.config import load_config
from appliance.vm import qemu
from appliance.vm.cachepaths import jupyter_token_path
from freeports import free_port
from workers import SHARED_BUILD

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NS = {"ovf": ova.OVF_NS, "rasd": ova.RASD_NS, "vbox": ova.VBOX_NS}

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group(SHARED_BUILD),
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
    out = tmp_path_factory.mktemp("export-boot")
    instructor_key = None
    if build_location and config_path.parent != REPO_ROOT:
        # The same workshop with an instructor's key, beside the test-made workshop.yml (so the
        # same built disk and build state): the one login a sealed copy has.
        instructor_key = out / "instructor_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "instructor", "-f", str(instructor_key)],
                       check=True)
        settings = yaml.safe_load(config_path.read_text())
        settings.setdefault("vm", {})["instructor_ssh_key"] = instructor_key.with_suffix(".pub").read_text().strip()
        config_path = config_path.with_name("workshop-instructor.yml")
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    config = load_config(config_path)
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
            "stdout": result.stdout, "base": out, "sealed": build_location, "instructor_key": instructor_key}


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
    # no secret of the build and none of its ways in
    for gone in ("/var/lib/workshop/jupyter/token", "/var/lib/workshop/jupyter/cookie_secret",
                 "/home/vagrant/.ssh/authorized_keys", "/etc/sudoers.d/vagrant", "/home/workshop/.local/share/jupyter/runtime"):
        assert "File not found" in read(f"stat {gone}"), gone
    assert re.search(r"^vagrant:!", read("cat /etc/shadow"), re.M), "the build user is not locked"


TOKEN_ON_CONSOLE = re.compile(r"enter this token: ([0-9a-z]{4}(?:-[0-9a-z]{4}){3})")


class Copy:
    """One import of the exported disk: a qcow2 overlay on the VMDK (the VMDK stays as
    exported), booted as VirtualBox attaches it, Jupyter's and ssh's guest ports forwarded."""

    def __init__(self, vmdk: Path, folder: Path, name: str, guest_port: int, memory_mb: int) -> None:
        self.vmdk, self.folder, self.name, self.guest_port, self.memory_mb = vmdk, folder, name, guest_port, memory_mb
        self.console = folder / f"{name}-console.log"
        self.process: subprocess.Popen | None = None
        self.boots = 0

    def boot(self) -> None:
        self.boots += 1
        disk = self.folder / f"{self.name}.qcow2"
        disk.unlink(missing_ok=True)  # a panicked first boot: start again from the exported disk
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.vmdk), "-F", "vmdk", str(disk)], check=True)
        self.port, self.ssh_port = free_port(), free_port()
        self.process = subprocess.Popen([
            qemu.QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
            "-drive", f"file={disk},format=qcow2,if=none,id=disk0",
            "-device", "ahci,id=ahci", "-device", "ide-hd,drive=disk0,bus=ahci.0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:{self.guest_port},"
                       f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "e1000,netdev=net0",
            "-display", "none", "-serial", f"file:{self.console}", "-no-reboot",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def token_on_console(self) -> str | None:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        found = TOKEN_ON_CONSOLE.findall(text)
        return found[-1] if found else None

    def status(self, token: str, host: str | None = None) -> int | None:
        """GET /api/status with a token (and a Host header); None while nothing answers."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            connection.request("GET", f"/api/status?token={token}", headers={"Host": host} if host else {})
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def ssh(self, key: Path, user: str, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", "-i", str(key), "-p", str(self.ssh_port), *qemu.SSH_OPTIONS, f"{user}@127.0.0.1",
                               command], capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _until_served(copies: list[Copy], timeout: float = 1500) -> dict[str, str]:
    """Boot every copy; wait until each shows a token on its console and Jupyter answers it."""
    tokens: dict[str, str] = {}
    for copy in copies:
        copy.boot()
    deadline = time.monotonic() + timeout
    while len(tokens) < len(copies) and time.monotonic() < deadline:
        for copy in copies:
            if copy.name in tokens:
                continue
            if qemu.console_shows_panic(copy.console) and copy.boots < qemu.BOOT_ATTEMPTS:
                copy.stop()
                copy.console.replace(copy.console.with_name(f"{copy.name}-console-panic-{copy.boots}.log"))
                copy.boot()
                continue
            token = copy.token_on_console()
            if token and copy.status(token) == 200:
                tokens[copy.name] = token
        time.sleep(5)
    return tokens


@pytest.fixture(scope="module")
def two_copies(exported):
    workshop = exported["config"].workshop
    vmdk = exported["unpacked"] / f"{workshop.artifact_name}-disk001.vmdk"
    # Two side by side on the shared test machine: one CPU and 1 GB each (Jupyter, no kernel).
    copies = [Copy(vmdk, exported["base"], name, workshop.ports.jupyter, 1024) for name in ("first", "second")]
    try:
        tokens = _until_served(copies)
        missing = [c for c in copies if c.name not in tokens]
        assert not missing, "no token on the console, or Jupyter did not take it: " + "".join(
            f"\n--- {c.name} console:\n{_console_tail(c.console)}" for c in missing)
        yield {"copies": copies, "tokens": tokens}
    finally:
        for copy in copies:
            copy.stop()


def test_each_copy_makes_its_own_token(two_copies, exported):
    first, second = two_copies["copies"]
    token_a, token_b = two_copies["tokens"]["first"], two_copies["tokens"]["second"]
    assert token_a != token_b
    for token in (token_a, token_b):
        # 16 characters of 32 = 80 bits, in groups of 4, none that reads as another
        assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}", token), token
    assert first.status(token_a) == 200 and second.status(token_b) == 200
    assert first.status(token_b) == 403 and second.status(token_a) == 403
    build_token_file = jupyter_token_path(exported["config"])
    if build_token_file.is_file():
        build_token = build_token_file.read_text().strip()
        assert first.status(build_token) == 403 and second.status(build_token) == 403
    # the token is on the console screen before anyone logs in: the login prompt follows it
    console = first.console.read_text(errors="replace")
    assert re.search(TOKEN_ON_CONSOLE.pattern + r"[\s\S]*login:", console), console[-2000:]


def test_foreign_host_header_refused(two_copies, exported):
    first = two_copies["copies"][0]
    token = two_copies["tokens"]["first"]
    port = exported["config"].workshop.ports.jupyter
    # What the participant's browser sends through the forwarded port works...
    assert first.status(token, host=f"localhost:{port}") == 200
    assert first.status(token, host=f"127.0.0.1:{port}") == 200
    # ...a page whose name was rebound to 127.0.0.1 does not, even with the token
    assert first.status(token, host=f"attacker.example:{port}") == 403
    assert first.status(token, host=f"10.0.2.15:{port}") == 403


def test_build_key_refused_and_no_sudo_for_the_workshop_user(two_copies, exported):
    from appliance.vm.cachepaths import vm_cache
    from appliance.vm.image import USER, build_key_path

    first = two_copies["copies"][0]
    build_key = build_key_path(vm_cache(exported["config"]))
    if not build_key.is_file():
        pytest.skip(f"no build key at {build_key}")
    refused = first.ssh(build_key, USER, "echo in")
    assert refused.returncode == 255 and "in" not in refused.stdout, refused
    assert "Permission denied" in refused.stderr, refused.stderr
    root = first.ssh(build_key, "root", "echo in")
    assert root.returncode == 255 and "Permission denied" in root.stderr, root
    key = exported["instructor_key"]
    if key is None:
        pytest.skip("exported without an instructor key (not the VM tier's own build)")
    # The instructor is root through sudo; the participants' account is not.
    instructor = first.ssh(key, "instructor", "sudo -n id -un; sudo -n -u workshop -- sudo -n true; echo rc=$?")
    assert instructor.stdout.splitlines()[0] == "root", instructor
    assert "rc=1" in instructor.stdout and "sudo:" in instructor.stderr, instructor
    rules = first.ssh(key, "instructor", "sudo -n -l -U workshop; sudo -n -l -U vagrant; sudo -n chage -l vagrant")
    assert rules.stdout.count("not allowed to run sudo") == 2, rules
    assert re.search(r"Account expires\s*:\s*Jan 0?2, 1970", rules.stdout), rules.stdout
