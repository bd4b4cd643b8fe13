"""`appliance export`: the VirtualBox-free OVA from a small real disk image, checked from
outside (tar order, manifest hashes, OVF content against workshop.yml, the VMDK's bytes),
and the exact VBoxManage command line of the VirtualBox path."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from appliance import ova, vbox
from appliance.config import load_config
from shiphelpers import WORKSHOP, make_checkout, make_disk, run_appliance

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("mkfs.ext4") is None,
                                reason="needs qemu-img (qemu-utils) and mkfs.ext4 (e2fsprogs)")

NS = {"ovf": ova.OVF_NS, "rasd": ova.RASD_NS, "vssd": ova.VSSD_NS, "vbox": ova.VBOX_NS}
FAT_SAFE = re.compile(r'^[^<>:"/\\|?*\x00-\x1f]+$')


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("export")
    root = make_checkout(base / "checkout", installers=False)
    disk = make_disk(base)
    out = base / "dist"
    result = run_appliance("export", "--config", str(root / "workshop.yml"), "--disk", str(disk),
                           "--provider", "qemu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return {"root": root, "disk": disk, "out": out, "result": result, "base": base}


def test_export_writes_ova_and_sha256_with_fat_safe_names(exported):
    out = exported["out"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["test-workshop-1.2.ova", "test-workshop-1.2.ova.sha256"]
    assert all(FAT_SAFE.match(name) for name in names)
    ova_path = out / "test-workshop-1.2.ova"
    line = (out / "test-workshop-1.2.ova.sha256").read_text()
    assert line == f"{sha256(ova_path.read_bytes())}  test-workshop-1.2.ova\n"
    # `sha256sum -c` accepts the file as written
    check = subprocess.run(["sha256sum", "-c", "test-workshop-1.2.ova.sha256"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_export_reports_size_and_ratio(exported):
    stdout = exported["result"].stdout
    assert "wrote" in stdout and "GB" in stdout
    assert re.search(r"OVA / data in the guest disk: .* = \d+\.\d\d", stdout), stdout
    assert "converting disk to VMDK" in stdout  # progress


def test_ova_members_ovf_first_and_manifest_hashes_match(exported):
    ova_path = exported["out"] / "test-workshop-1.2.ova"
    with tarfile.open(ova_path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["test-workshop-1.2.ovf", "test-workshop-1.2-disk001.vmdk",
                                              "test-workshop-1.2.mf"]
        data = {m.name: tar.extractfile(m).read() for m in members}
    manifest = data["test-workshop-1.2.mf"].decode()
    lines = manifest.splitlines()
    assert len(lines) == 2
    for line in lines:
        match = re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", line)
        assert match, line
        assert sha256(data[match.group(1)]) == match.group(2)


def _ovf(exported) -> tuple[ET.Element, bytes, dict]:
    with tarfile.open(exported["out"] / "test-workshop-1.2.ova") as tar:
        ovf_bytes = tar.extractfile("test-workshop-1.2.ovf").read()
        vmdk = tar.extractfile("test-workshop-1.2-disk001.vmdk").read()
    return ET.fromstring(ovf_bytes), vmdk, yaml.safe_load((exported["root"] / "workshop.yml").read_text())


def test_ovf_agrees_with_workshop_yml(exported):
    root, vmdk, workshop = _ovf(exported)
    assert root.tag == f"{{{ova.OVF_NS}}}Envelope"
    file_el = root.find("ovf:References/ovf:File", NS)
    assert file_el.get(f"{{{ova.OVF_NS}}}href") == "test-workshop-1.2-disk001.vmdk"
    assert int(file_el.get(f"{{{ova.OVF_NS}}}size")) == len(vmdk)

    disk_el = root.find("ovf:DiskSection/ovf:Disk", NS)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(exported["disk"])],
                                     capture_output=True, text=True, check=True).stdout)
    assert int(disk_el.get(f"{{{ova.OVF_NS}}}capacity")) == info["virtual-size"]
    assert disk_el.get(f"{{{ova.OVF_NS}}}format").endswith("#streamOptimized")
    assert 0 < int(disk_el.get(f"{{{ova.OVF_NS}}}populatedSize")) <= info["virtual-size"]

    system = root.find("ovf:VirtualSystem", NS)
    items = system.findall("ovf:VirtualHardwareSection/ovf:Item", NS)
    by_type = {item.find("rasd:ResourceType", NS).text: item for item in items}
    assert by_type["3"].find("rasd:VirtualQuantity", NS).text == str(workshop["vm"]["cpus"])
    assert by_type["4"].find("rasd:VirtualQuantity", NS).text == str(workshop["vm"]["memory_mb"])
    assert by_type["20"].find("rasd:ResourceSubType", NS).text == "AHCI"
    assert by_type["17"].find("rasd:HostResource", NS).text == "/disk/vmdisk1"
    assert by_type["10"].find("rasd:Connection", NS).text == "NAT"
    for item in items:  # the CIM schema wants rasd elements in alphabetical order
        tags = [child.tag for child in item]
        assert tags == sorted(tags)

    os_section = system.find("ovf:OperatingSystemSection", NS)
    assert os_section.find("vbox:OSType", NS).text == "Debian_64"
    # the CIM id VirtualBox's own table (ApplianceImpl.cpp g_aOsTypes) gives Debian_64
    assert os_section.get(f"{{{ova.OVF_NS}}}id") == "96"
    product = system.find("ovf:ProductSection", NS)
    assert product.find("ovf:Product", NS).text == workshop["title"]
    assert product.find("ovf:Vendor", NS).text == workshop["vendor"]
    assert product.find("ovf:Version", NS).text == workshop["version"]
    assert product.find("ovf:ProductUrl", NS).text == workshop["url"]
    assert system.find("ovf:AnnotationSection/ovf:Annotation", NS).text == workshop["description"]
    # no license_file in workshop.yml: no EulaSection, which `VBoxManage import` stops at
    assert system.find("ovf:EulaSection", NS) is None

    machine = system.find("vbox:Machine", NS)
    assert machine.get("OSType") == "Debian_64"
    assert machine.find("ovf:Hardware/ovf:CPU", NS).get("count") == str(workshop["vm"]["cpus"])
    assert machine.find("ovf:Hardware/ovf:Memory", NS).get("RAMSize") == str(workshop["vm"]["memory_mb"])
    assert machine.find("ovf:Hardware/ovf:Display", NS).get("VRAMSize") == str(workshop["vm"]["video_memory_mb"])
    hardware = machine.find("ovf:Hardware", NS)
    assert hardware.find("ovf:RTC", NS).get("localOrUTC") == "UTC"
    assert hardware.find("ovf:HID", NS).get("Pointing") == "USBTablet"
    usb = hardware.findall("ovf:USB/ovf:Controllers/ovf:Controller", NS)
    assert [(c.get("name"), c.get("type")) for c in usb] == [("OHCI", "OHCI")]
    assert by_type["23"].find("rasd:ElementName", NS).text == "usb"
    audio = hardware.find("ovf:AudioAdapter", NS)
    assert audio.get("driver") == "Null" and audio.get("enabled") == "false"
    nat = hardware.find("ovf:Network/ovf:Adapter/ovf:NAT", NS)
    assert not any("localhost" in key.lower() for key in nat.attrib), nat.attrib
    rules = {f.get("name"): f for f in nat.findall("ovf:Forwarding", NS)}
    ports = workshop["ports"]
    # no vm.instructor_ssh_key: no ssh forward into the participant's machine
    assert set(rules) == {"jupyter", "tensorboard"}
    for name, guest in (("jupyter", ports["jupyter"]), ("tensorboard", ports["tensorboard"])):
        assert rules[name].get("hostip") == ports["host_address"]
        assert rules[name].get("hostport") == str(ports[name])
        assert rules[name].get("guestport") == str(guest)
        assert rules[name].get("proto") == "1"
    image_uuid = machine.find("ovf:StorageControllers/ovf:StorageController/ovf:AttachedDevice/ovf:Image", NS).get("uuid")
    assert image_uuid.strip("{}") == disk_el.get(f"{{{ova.VBOX_NS}}}uuid")


def test_vmdk_is_stream_optimized_and_holds_the_same_disk(exported, tmp_path):
    _, vmdk, _ = _ovf(exported)
    path = tmp_path / "disk.vmdk"
    path.write_bytes(vmdk)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "vmdk"
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    same = subprocess.run(["qemu-img", "compare", str(exported["disk"]), str(path)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    # compressed: the VMDK is smaller than the data it holds (random 3 MB + ext4 metadata)
    assert len(vmdk) < info["virtual-size"] / 4


def test_export_leaves_nothing_partial_and_missing_disk_is_one_line(exported, tmp_path, appliance_cli):
    leftovers = [p.name for p in exported["out"].iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]
    assert leftovers == []
    result = appliance_cli("export", "--config", str(exported["root"] / "workshop.yml"),
                           "--disk", str(tmp_path / "nope.qcow2"), "--provider", "qemu", "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "nope.qcow2" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ovf_keeps_the_literal_vbox_prefix_and_no_host_loopback(exported):
    """VirtualBox's reader looks the machine up by prefix (findChildElementNS("vbox", "Machine")),
    not by namespace URI; and nothing in the OVF lets the guest reach the host's 127.0.0.1."""
    with tarfile.open(exported["out"] / "test-workshop-1.2.ova") as tar:
        text = tar.extractfile("test-workshop-1.2.ovf").read().decode("utf-8")
    assert f'xmlns:vbox="{ova.VBOX_NS}"' in text
    assert re.search(r"<vbox:Machine [^>]*OSType=\"Debian_64\"", text)
    assert "</vbox:Machine>" in text
    assert "localhost" not in text.lower()


def raw_tar_headers(path: Path) -> list[tuple[str, bytes, int]]:
    """(name, type flag, size) of every header, walking the archive block by block as
    VirtualBox's reader does (not through tarfile, which hides pax headers)."""
    headers = []
    with path.open("rb") as handle:
        while True:
            block = handle.read(512)
            assert len(block) == 512, "archive ends without its two zero blocks"
            if block == bytes(512):
                assert handle.read(512) == bytes(512)
                break
            unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
            assert int(block[148:154], 8) == unsigned, "header checksum"
            assert block[257:265] == b"ustar\x0000"
            field = block[124:136]
            size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.rstrip(b"\0 "), 8)
            headers.append((block[:100].rstrip(b"\0").decode(), block[156:157], size))
            handle.seek((size + 511) // 512 * 512, 1)
    return headers


def test_ova_over_8_gib_has_only_ustar_headers(tmp_path):
    """A sparse 9 GiB member (VirtualBox's tar reader refuses pax 'x'/'g' headers): base-256
    size in a plain ustar header, and the bytes around the hole land where tar says."""
    ovf, disk, mf = tmp_path / "a.ovf", tmp_path / "a-disk001.vmdk", tmp_path / "a.mf"
    ovf.write_text("<Envelope/>\n")
    big = 9 * 1024**3 + 123
    with disk.open("wb") as handle:
        handle.write(b"head")
        handle.truncate(big)
        handle.seek(big - 4)
        handle.write(b"tail")
    mf.write_text("SHA256(a.ovf)= 00\n")
    out = tmp_path / "a.ova"
    ova.pack_ova(out, [("a.ovf", ovf), ("a-disk001.vmdk", disk), ("a.mf", mf)], lambda _: None)
    headers = raw_tar_headers(out)
    assert [(name, flag) for name, flag, _ in headers] == [("a.ovf", b"0"), ("a-disk001.vmdk", b"0"), ("a.mf", b"0")]
    assert [size for _, _, size in headers] == [12, big, 18]
    assert out.stat().st_blocks * 512 < 10 * 1024**2  # the hole stayed a hole
    # an independent reader agrees (GNU tar), and the member's bytes are where they belong
    listing = subprocess.run(["tar", "tvf", str(out)], capture_output=True, text=True, check=True).stdout
    assert str(big) in listing and "a.mf" in listing
    with tarfile.open(out) as tar:
        member = tar.getmember("a-disk001.vmdk")
        assert member.size == big and not member.pax_headers
        with out.open("rb") as handle:
            handle.seek(member.offset_data)
            assert handle.read(4) == b"head"
            handle.seek(member.offset_data + big - 4)
            assert handle.read(4) == b"tail"
        assert tar.extractfile("a.mf").read() == mf.read_bytes()


def test_export_writes_only_ustar_headers(exported):
    headers = raw_tar_headers(exported["out"] / "test-workshop-1.2.ova")
    assert {flag for _, flag, _ in headers} == {b"0"}


def test_licence_and_instructor_key_travel_into_the_ova(exported, tmp_path):
    """With license_file: a EulaSection holding its text; with vm.instructor_ssh_key: the
    ssh forward, still on the host address."""
    root = exported["root"]
    # a form feed between pages, as in the GPL's text: XML 1.0 cannot carry it as it is
    (root / "LICENSE-WORKSHOP.txt").write_text("Use these notebooks\f for learning.\n", encoding="utf-8")
    data = dict(WORKSHOP, license_file="LICENSE-WORKSHOP.txt",
                vm=dict(WORKSHOP["vm"], instructor_ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f instructor"))
    config = root / "workshop-licensed.yml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "dist"
    result = run_appliance("export", "--config", str(config), "--disk", str(exported["disk"]),
                           "--provider", "qemu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with tarfile.open(out / "test-workshop-1.2.ova") as tar:
        root_el = ET.fromstring(tar.extractfile("test-workshop-1.2.ovf").read())
    system = root_el.find("ovf:VirtualSystem", NS)
    assert system.find("ovf:EulaSection/ovf:License", NS).text == "Use these notebooks\n for learning."
    nat = system.find("vbox:Machine/ovf:Hardware/ovf:Network/ovf:Adapter/ovf:NAT", NS)
    rules = {f.get("name"): f for f in nat.findall("ovf:Forwarding", NS)}
    assert set(rules) == {"jupyter", "tensorboard", "ssh"}
    assert (rules["ssh"].get("hostip"), rules["ssh"].get("hostport"), rules["ssh"].get("guestport")) == \
        ("127.0.0.1", "12222", "22")


def test_an_unreadable_licence_file_is_one_line_and_writes_nothing(exported, tmp_path, appliance_cli):
    root = exported["root"]
    (root / "LICENSE-BINARY.txt").write_bytes(b"\xff\xfe\x00binary")
    (root / "LICENSE-CONTROL.txt").write_bytes(b"text with a bell \x07 in it")
    for name in ("LICENSE-BINARY.txt", "NO-SUCH-LICENSE.txt", "LICENSE-CONTROL.txt"):
        config = root / f"workshop-{name}.yml"
        config.write_text(yaml.safe_dump(dict(WORKSHOP, license_file=name)), encoding="utf-8")
        out = tmp_path / name
        result = appliance_cli("export", "--config", str(config), "--disk", str(exported["disk"]),
                               "--provider", "qemu", "--out", str(out))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and name in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()


def test_vboxmanage_export_command_line(repo_root):
    workshop = load_config(repo_root / "workshop.yml").workshop
    argv = vbox.export_argv(workshop, "1234-uuid", Path("/out/dl.ova"), eula_file=Path("/tmp/EULA.txt"))
    assert argv == [
        "VBoxManage", "export", "1234-uuid", "--output", "/out/dl.ova", "--ovf20",
        "--options", "manifest,nomacs", "--vsys", "0", "--vmname", workshop.artifact_name,
        "--product", workshop.title, "--version", workshop.version,
        "--vendor", workshop.vendor, "--producturl", workshop.url, "--description", workshop.description,
        "--eulafile", "/tmp/EULA.txt",
    ]


def test_vboxmanage_leaves_out_empty_fields(tmp_path):
    data = dict(WORKSHOP, vendor="", url="", description="")
    root = make_checkout(tmp_path / "c", installers=False, workshop=data)
    workshop = load_config(root / "workshop.yml").workshop
    argv = vbox.export_argv(workshop, "vm", tmp_path / "x.ova")
    assert "--vendor" not in argv and "--producturl" not in argv and "--description" not in argv
    assert argv[argv.index("--product") + 1] == "Test Workshop"


def test_virtualbox_path_turns_off_host_loopback_and_the_ssh_forward(tmp_path):
    root = make_checkout(tmp_path / "c", installers=False)
    workshop = load_config(root / "workshop.yml").workshop
    info = 'name="x"\nForwarding(0)="jupyter,tcp,127.0.0.1,18888,,18888"\nForwarding(1)="ssh,tcp,127.0.0.1,12222,,22"\n'
    rules = vbox.parse_forwarding_rules(info)
    assert rules == ["jupyter", "ssh"]
    assert vbox.prepare_argvs(workshop, "vm", rules) == [
        ["VBoxManage", "modifyvm", "vm", "--nat-localhostreachable1", "off"],
        ["VBoxManage", "modifyvm", "vm", "--natpf1", "delete", "ssh"],
    ]
    # no ssh rule left to delete: only the loopback setting
    assert vbox.prepare_argvs(workshop, "vm", ["jupyter"]) == [
        ["VBoxManage", "modifyvm", "vm", "--nat-localhostreachable1", "off"]]
    data = dict(WORKSHOP, vm=dict(WORKSHOP["vm"], instructor_ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f i"))
    keyed = make_checkout(tmp_path / "k", installers=False, workshop=data)
    assert vbox.prepare_argvs(load_config(keyed / "workshop.yml").workshop, "vm", rules) == [
        ["VBoxManage", "modifyvm", "vm", "--nat-localhostreachable1", "off"]]


def test_vagrant_vm_id_is_read_from_the_checkout(tmp_path):
    assert vbox.vagrant_vm_id(tmp_path) is None
    id_file = tmp_path / ".vagrant" / "machines" / "default" / "virtualbox" / "id"
    id_file.parent.mkdir(parents=True)
    id_file.write_text("0b5c4e2a-1111-2222-3333-444455556666")
    assert vbox.vagrant_vm_id(tmp_path) == "0b5c4e2a-1111-2222-3333-444455556666"
