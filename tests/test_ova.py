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

    assert system.find("ovf:OperatingSystemSection/vbox:OSType", NS).text == "Debian_64"
    product = system.find("ovf:ProductSection", NS)
    assert product.find("ovf:Product", NS).text == workshop["title"]
    assert product.find("ovf:Vendor", NS).text == workshop["vendor"]
    assert product.find("ovf:Version", NS).text == workshop["version"]
    assert product.find("ovf:ProductUrl", NS).text == workshop["url"]
    assert system.find("ovf:AnnotationSection/ovf:Annotation", NS).text == workshop["description"]
    assert system.find("ovf:EulaSection/ovf:License", NS).text

    machine = system.find("vbox:Machine", NS)
    assert machine.get("OSType") == "Debian_64"
    assert machine.find("ovf:Hardware/ovf:CPU", NS).get("count") == str(workshop["vm"]["cpus"])
    assert machine.find("ovf:Hardware/ovf:Memory", NS).get("RAMSize") == str(workshop["vm"]["memory_mb"])
    assert machine.find("ovf:Hardware/ovf:Display", NS).get("VRAMSize") == str(workshop["vm"]["video_memory_mb"])
    rules = {f.get("name"): f for f in machine.findall("ovf:Hardware/ovf:Network/ovf:Adapter/ovf:NAT/ovf:Forwarding", NS)}
    ports = workshop["ports"]
    assert set(rules) == {"jupyter", "tensorboard", "ssh"}
    for name, guest in (("jupyter", ports["jupyter"]), ("tensorboard", ports["tensorboard"]), ("ssh", 22)):
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


def test_big_members_get_a_pax_size_record():
    """Members of 8 GiB and more do not fit ustar's size field: the pax header carries them."""
    info = ova.member_info("disk.vmdk", 9 * 1024**3)
    header = info.tobuf(tarfile.PAX_FORMAT)
    assert f"size={9 * 1024**3}".encode() in header
    small = ova.member_info("x.ovf", 1000).tobuf(tarfile.PAX_FORMAT)
    assert b"size=" not in small  # plain ustar where it suffices


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


def test_vagrant_vm_id_is_read_from_the_checkout(tmp_path):
    assert vbox.vagrant_vm_id(tmp_path) is None
    id_file = tmp_path / ".vagrant" / "machines" / "default" / "virtualbox" / "id"
    id_file.parent.mkdir(parents=True)
    id_file.write_text("0b5c4e2a-1111-2222-3333-444455556666")
    assert vbox.vagrant_vm_id(tmp_path) == "0b5c4e2a-1111-2222-3333-444455556666"
