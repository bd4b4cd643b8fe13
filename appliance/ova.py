"""The VirtualBox-free OVA writer: qemu-img streamOptimized VMDK + OVF envelope + SHA-256
manifest, packed as a tar with the .ovf first (the order VirtualBox reads), as Fedora
CoreOS ships its VirtualBox OVA without VirtualBox.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Workshop
from appliance.errors import ApplianceError

Progress = Callable[[str], None]

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VBOX_NS = "http://www.virtualbox.org/ovf/machine"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

# VirtualBox's OS type id for each guest, and the CIM id VirtualBox's own table
# (g_aOsTypes in ApplianceImpl.cpp) pairs with it: Debian_64 -> CIMOS_Debian_64 (96);
# Fedora has no CIM id, and the table gives Fedora_64 CIMOS_Linux_2_6_x_64 (100).
OS_TYPES = {"debian": ("Debian_64", 96), "fedora": ("Fedora_64", 100)}

# Inside the guest Jupyter and TensorBoard listen on the same port numbers as the host
# side (the Vagrantfile and the qemu provider forward them so); ssh on 22.
GUEST_SSH_PORT = 22

COPY_CHUNK = 4 * 1024 * 1024
TAR_BLOCK = 512

# Elements live in the OVF namespace as the document's default namespace, while attributes
# need the explicit ovf: prefix (the form VirtualBox and ovftool write). ElementTree maps one
# prefix per URI and refuses unprefixed attributes with a default namespace, so elements are
# serialised under a placeholder prefix that is turned into the default namespace afterwards.
_OVF_ATTR_NS = "urn:x-appliance:ovf-attributes"
_ELEMENT_PREFIX = "ovfdefaultns"
for _prefix, _uri in ((_ELEMENT_PREFIX, OVF_NS), ("ovf", _OVF_ATTR_NS), ("rasd", RASD_NS), ("vssd", VSSD_NS), ("vbox", VBOX_NS), ("xsi", XSI_NS)):
    ET.register_namespace(_prefix, _uri)


@dataclass(frozen=True)
class PortRule:
    name: str
    host_ip: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class OvfSettings:
    """Everything the envelope says about the machine, taken from workshop.yml."""

    name: str
    product: str
    vendor: str
    version: str
    product_url: str
    description: str
    os: str
    cpus: int
    memory_mb: int
    video_memory_mb: int
    ports: tuple[PortRule, ...]
    eula: str | None            # licence text; None: no EulaSection (VBoxManage import would stop at it)
    firmware: str = "BIOS"
    machine_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    disk_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


def port_rules(workshop: Workshop) -> tuple[PortRule, ...]:
    """Jupyter and TensorBoard; ssh only when an instructor key is configured, since no one
    else can log in over ssh and an open port invites guessing."""
    ports = workshop.ports
    rules = [
        PortRule("jupyter", ports.host_address, ports.jupyter, ports.jupyter),
        PortRule("tensorboard", ports.host_address, ports.tensorboard, ports.tensorboard),
    ]
    if workshop.vm.instructor_ssh_key:
        rules.append(PortRule("ssh", ports.host_address, ports.ssh, GUEST_SSH_PORT))
    return tuple(rules)


def os_type_ids(os_name: str) -> tuple[str, int]:
    """(VirtualBox OS type id, CIM OS id) for a guest OS name; the one place both come from."""
    try:
        return OS_TYPES[os_name]
    except KeyError:
        raise ApplianceError(f"no VirtualBox OS type is known for guest {os_name!r}; use one of "
                             f"{', '.join(sorted(OS_TYPES))}") from None


def settings_from_workshop(workshop: Workshop, eula: str | None = None, firmware: str = "BIOS") -> OvfSettings:
    return OvfSettings(
        name=workshop.artifact_name,
        product=workshop.title,
        vendor=workshop.vendor,
        version=workshop.version,
        product_url=workshop.url,
        description=workshop.description,
        os=workshop.vm.os,
        cpus=workshop.vm.cpus,
        memory_mb=workshop.vm.memory_mb,
        video_memory_mb=workshop.vm.video_memory_mb,
        ports=port_rules(workshop),
        eula=eula,
        firmware=firmware,
    )


def artifact_names(stem: str) -> tuple[str, str, str]:
    """Member names inside the OVA: the .ovf, the disk, the manifest."""
    return f"{stem}.ovf", f"{stem}-disk001.vmdk", f"{stem}.mf"


# --- the envelope ----------------------------------------------------------------------

def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, _q(ns, tag), attrs)
    if text is not None:
        element.text = text
    return element


def _ovf_attrs(**attrs: str) -> dict[str, str]:
    return {_q(_OVF_ATTR_NS, key): value for key, value in attrs.items()}


def _e(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    """An element of VirtualBox's machine section (in the envelope's default namespace)."""
    return ET.SubElement(parent, _q(OVF_NS, tag), attrs)


def _item(section: ET.Element, fields: list[tuple[str, str]]) -> None:
    # rasd elements must appear in alphabetical order (the CIM schema is a sequence).
    item = _sub(section, OVF_NS, "Item")
    for tag, text in sorted(fields):
        _sub(item, RASD_NS, tag, text)


def build_ovf(settings: OvfSettings, disk_file: str, disk_file_size: int, capacity: int, populated: int) -> bytes:
    """The OVF 1.0 envelope, with VirtualBox's own machine section so NAT port forwarding,
    video memory and the OS type survive the import."""
    os_type, cim_id = os_type_ids(settings.os)
    env = ET.Element(_q(OVF_NS, "Envelope"), _ovf_attrs(version="1.0"))
    env.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")

    refs = _sub(env, OVF_NS, "References")
    _sub(refs, OVF_NS, "File", **_ovf_attrs(id="file1", href=disk_file, size=str(disk_file_size)))

    disks = _sub(env, OVF_NS, "DiskSection")
    _sub(disks, OVF_NS, "Info", "List of the virtual disks used in the package")
    disk = _sub(disks, OVF_NS, "Disk", **_ovf_attrs(
        capacity=str(capacity), capacityAllocationUnits="byte", diskId="vmdisk1", fileRef="file1",
        format=STREAM_OPTIMIZED, populatedSize=str(populated),
    ))
    disk.set(_q(VBOX_NS, "uuid"), settings.disk_uuid)

    nets = _sub(env, OVF_NS, "NetworkSection")
    _sub(nets, OVF_NS, "Info", "Logical networks used in the package")
    net = _sub(nets, OVF_NS, "Network", **_ovf_attrs(name="NAT"))
    _sub(net, OVF_NS, "Description", "Logical network used by this appliance.")

    system = _sub(env, OVF_NS, "VirtualSystem", **_ovf_attrs(id=settings.name))
    _sub(system, OVF_NS, "Info", "A virtual machine")
    _sub(system, OVF_NS, "Name", settings.name)

    product = _sub(system, OVF_NS, "ProductSection")
    _sub(product, OVF_NS, "Info", "Meta-information about the installed software")
    _sub(product, OVF_NS, "Product", settings.product)
    if settings.vendor:
        _sub(product, OVF_NS, "Vendor", settings.vendor)
    _sub(product, OVF_NS, "Version", settings.version)
    if settings.product_url:
        _sub(product, OVF_NS, "ProductUrl", settings.product_url)

    if settings.description:
        annotation = _sub(system, OVF_NS, "AnnotationSection")
        _sub(annotation, OVF_NS, "Info", "A human-readable annotation")
        _sub(annotation, OVF_NS, "Annotation", settings.description)

    if settings.eula:
        eula = _sub(system, OVF_NS, "EulaSection")
        _sub(eula, OVF_NS, "Info", "License agreement for the virtual system")
        _sub(eula, OVF_NS, "License", settings.eula)

    oss = _sub(system, OVF_NS, "OperatingSystemSection", **_ovf_attrs(id=str(cim_id)))
    _sub(oss, OVF_NS, "Info", "The kind of installed guest operating system")
    vbox_os = _sub(oss, VBOX_NS, "OSType", os_type)
    vbox_os.set(_q(_OVF_ATTR_NS, "required"), "false")

    hw = _sub(system, OVF_NS, "VirtualHardwareSection")
    _sub(hw, OVF_NS, "Info", "Virtual hardware requirements for a virtual machine")
    sys_el = _sub(hw, OVF_NS, "System")
    _sub(sys_el, VSSD_NS, "ElementName", "Virtual Hardware Family")
    _sub(sys_el, VSSD_NS, "InstanceID", "0")
    _sub(sys_el, VSSD_NS, "VirtualSystemIdentifier", settings.name)
    _sub(sys_el, VSSD_NS, "VirtualSystemType", "virtualbox-2.2")
    _item(hw, [("Caption", f"{settings.cpus} virtual CPU"), ("Description", "Number of virtual CPUs"),
               ("ElementName", f"{settings.cpus} virtual CPU"), ("InstanceID", "1"), ("ResourceType", "3"),
               ("VirtualQuantity", str(settings.cpus))])
    _item(hw, [("AllocationUnits", "MegaBytes"), ("Caption", f"{settings.memory_mb} MB of memory"),
               ("Description", "Memory Size"), ("ElementName", f"{settings.memory_mb} MB of memory"),
               ("InstanceID", "2"), ("ResourceType", "4"), ("VirtualQuantity", str(settings.memory_mb))])
    _item(hw, [("Address", "0"), ("Caption", "sataController0"), ("Description", "SATA Controller"),
               ("ElementName", "sataController0"), ("InstanceID", "3"), ("ResourceSubType", "AHCI"),
               ("ResourceType", "20")])
    _item(hw, [("AddressOnParent", "0"), ("Caption", "disk1"), ("Description", "Disk Image"),
               ("ElementName", "disk1"), ("HostResource", "/disk/vmdisk1"), ("InstanceID", "4"),
               ("Parent", "3"), ("ResourceType", "17")])
    _item(hw, [("AutomaticAllocation", "true"), ("Caption", "Ethernet adapter on 'NAT'"),
               ("Connection", "NAT"), ("ElementName", "Ethernet adapter on 'NAT'"), ("InstanceID", "5"),
               ("ResourceSubType", "E1000"), ("ResourceType", "10")])
    _item(hw, [("Address", "0"), ("Caption", "usb"), ("Description", "USB Controller"),
               ("ElementName", "usb"), ("InstanceID", "6"), ("ResourceType", "23")])

    system.append(_vbox_machine(settings, os_type))
    ET.indent(env)
    text = ET.tostring(env, encoding="unicode")
    # Text and attribute values are escaped, so "<prefix:" only occurs in tags.
    text = text.replace(f"<{_ELEMENT_PREFIX}:", "<").replace(f"</{_ELEMENT_PREFIX}:", "</")
    text = text.replace(f'xmlns:{_ELEMENT_PREFIX}="{OVF_NS}"', f'xmlns="{OVF_NS}"')
    text = text.replace(f'xmlns:ovf="{_OVF_ATTR_NS}"', f'xmlns:ovf="{OVF_NS}"')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n").encode("utf-8")


def _vbox_machine(settings: OvfSettings, os_type: str) -> ET.Element:
    """VirtualBox reads this section in preference to the generic hardware items; it is the
    only place the NAT port-forwarding rules can travel in."""
    machine = ET.Element(_q(VBOX_NS, "Machine"), {
        _q(_OVF_ATTR_NS, "required"): "false", "version": "1.16-linux", "uuid": "{" + settings.machine_uuid + "}",
        "name": settings.name, "OSType": os_type,
    })
    if settings.description:
        _e(machine, "Description").text = settings.description
    _sub(machine, OVF_NS, "Info", "Complete VirtualBox machine configuration in VirtualBox format")
    hardware = _e(machine, "Hardware")
    cpu = _e(hardware, "CPU", count=str(settings.cpus))
    _e(cpu, "PAE", enabled="true")
    _e(cpu, "LongMode", enabled="true")
    _e(cpu, "HardwareVirtExLargePages", enabled="false")
    _e(hardware, "Memory", RAMSize=str(settings.memory_mb))
    _e(hardware, "Firmware", type=settings.firmware)
    # The tablet is a USB device: without a USB controller the import drops it and the
    # guest gets a relative PS/2 mouse (the pointer lags behind the host's).
    _e(hardware, "HID", Pointing="USBTablet", Keyboard="PS2Keyboard")
    usb = _e(_e(hardware, "USB"), "Controllers")
    _e(usb, "Controller", name="OHCI", type="OHCI")
    boot = _e(hardware, "Boot")
    _e(boot, "Order", position="1", device="HardDisk")
    for position in (2, 3, 4):
        _e(boot, "Order", position=str(position), device="None")
    _e(hardware, "Display", controller="VMSVGA", VRAMSize=str(settings.video_memory_mb))
    bios = _e(hardware, "BIOS")
    _e(bios, "IOAPIC", enabled="true")
    network = _e(hardware, "Network")
    adapter = _e(network, "Adapter", slot="0", enabled="true", cable="true", type="82540EM")
    nat = _e(adapter, "NAT")
    for rule in settings.ports:
        # proto 1 = TCP in VirtualBox's settings format.
        _e(nat, "Forwarding", name=rule.name, proto="1", hostip=rule.host_ip,
                      hostport=str(rule.host_port), guestport=str(rule.guest_port))
    # No NAT option beyond the forwards: the guest must not reach the host's 127.0.0.1
    # (VirtualBox's localhost-reachable setting stays off when absent).
    _e(hardware, "AudioAdapter", driver="Null", enabled="false")
    # A Linux guest keeps UTC in the hardware clock; without this VirtualBox gives it local
    # time, and an offline guest has nothing to correct it.
    _e(hardware, "RTC", localOrUTC="UTC")
    _e(hardware, "Clipboard", mode="Disabled")
    storage = _e(machine, "StorageControllers")
    sata = _e(storage, "StorageController", name="SATA", type="AHCI", PortCount="1",
                         useHostIOCache="false", Bootable="true")
    attached = _e(sata, "AttachedDevice", type="HardDisk", hotpluggable="false", port="0", device="0")
    _e(attached, "Image", uuid="{" + settings.disk_uuid + "}")
    return machine


# --- the disk ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DiskInfo:
    virtual_size: int   # the capacity the guest sees
    data_bytes: int     # bytes the image holds data for (not holes, not zero clusters)
    file_size: int      # bytes the image file takes on the host


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("qemu-img") is None:
        raise ApplianceError("qemu-img is not installed; install qemu-utils (Debian) or qemu-img (Fedora)")
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ApplianceError(f"qemu-img {args[0]} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
    return result


def disk_info(path: Path) -> DiskInfo:
    info = json.loads(_qemu_img("info", "--output=json", str(path)).stdout)
    extents = json.loads(_qemu_img("map", "--output=json", str(path)).stdout)
    data = sum(e["length"] for e in extents if e.get("data") and not e.get("zero"))
    return DiskInfo(virtual_size=int(info["virtual-size"]), data_bytes=data, file_size=path.stat().st_size)


def convert_to_vmdk(source: Path, target: Path, progress: Progress) -> None:
    """streamOptimized: compressed grains, the only VMDK variant OVF allows in an OVA."""
    if shutil.which("qemu-img") is None:
        raise ApplianceError("qemu-img is not installed; install qemu-utils (Debian) or qemu-img (Fedora)")
    command = ["qemu-img", "convert", "-p", "-O", "vmdk", "-o", "subformat=streamOptimized",
               str(source), str(target)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    last = -1
    buffer = ""
    while True:
        chunk = process.stdout.read(64)
        if not chunk:
            break
        buffer += chunk
        # qemu-img -p redraws "(12.34/100%)" with carriage returns
        *done, buffer = buffer.replace("\r", "\n").split("\n")
        for line in done:
            line = line.strip()
            # report every 10 percent, not every redraw
            percent = line.strip("()").split("/")[0].split(".")[0]
            if percent.isdigit() and int(percent) // 10 != last:
                last = int(percent) // 10
                progress(f"converting disk to VMDK: {percent}%")
    stderr = process.stderr.read() if process.stderr else ""
    if process.wait() != 0:
        raise ApplianceError(f"qemu-img convert of {source} failed: {stderr.strip() or process.returncode}")


# --- manifest and tar ----------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_text(entries: list[tuple[str, str]]) -> str:
    """VirtualBox's manifest form: one `SHA256(name)= hex` line per file."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in entries)


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated, zero-padded octal field."""
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def _size_field(size: int) -> bytes:
    """ustar's 12-byte size: octal below 8 GiB, else base-256 (high bit set, big-endian),
    as VirtualBox's own tar writer does; a pax record would stop VirtualBox's reader."""
    if size < 8 * 1024**3:
        return _octal(size, 12)
    return bytes([0x80]) + size.to_bytes(11, "big")


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """One 512-byte ustar header for a regular file (magic "ustar\\0", version "00")."""
    encoded = name.encode("utf-8")
    if len(encoded) >= 100 or not name.isprintable():
        raise ApplianceError(f"{name!r}: an OVA member name must be printable and shorter than 100 bytes")
    header = bytearray(TAR_BLOCK)
    fields = [
        (0, encoded), (100, _octal(0o644, 8)), (108, _octal(0, 8)), (116, _octal(0, 8)),
        (124, _size_field(size)), (136, _octal(mtime, 12)), (148, b" " * 8), (156, b"0"),
        (257, b"ustar\0"), (263, b"00"), (265, b"someone"), (297, b"someone"),
    ]
    for offset, value in fields:
        header[offset:offset + len(value)] = value
    header[148:156] = f"{sum(header):06o}".encode("ascii") + b"\0 "
    return bytes(header)


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the regions of a file that hold data; holes read as zeros."""
    extents, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        pos = end
    return extents


def pack_ova(out: Path, members: list[tuple[str, Path]], progress: Progress) -> None:
    """A plain ustar archive, members in the given order (VirtualBox wants the .ovf first).
    Written by hand: Python's tarfile adds pax headers for big members, and VirtualBox's tar
    reader refuses every pax header ("Error reading OVA"). Holes in a member stay holes."""
    mtime = int(time.time())
    with out.open("wb") as writer:
        for name, path in members:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                writer.write(tar_header(name, size, mtime))
                base = writer.tell()
                last_report = 0.0
                for start, end in _data_extents(handle.fileno(), size):
                    handle.seek(start)
                    writer.seek(base + start)
                    remaining = end - start
                    while remaining:
                        chunk = handle.read(min(COPY_CHUNK, remaining))
                        if not chunk:
                            raise ApplianceError(f"{path} shrank while it was packed; export again")
                        writer.write(chunk)
                        remaining -= len(chunk)
                        if time.monotonic() - last_report > 2:
                            last_report = time.monotonic()
                            progress(f"packing {name} {100 * (end - remaining) // max(size, 1)}%")
                writer.seek(base + size)
            writer.write(b"\0" * (-size % TAR_BLOCK))
        writer.write(b"\0" * (2 * TAR_BLOCK))  # end of archive


@dataclass(frozen=True)
class ExportResult:
    ova: Path
    sha256_file: Path
    ova_size: int
    disk: DiskInfo
    seconds: float

    @property
    def ratio_to_used(self) -> float:
        return self.ova_size / max(self.disk.data_bytes, 1)


def write_sha256_file(ova: Path, digest: str) -> Path:
    target = ova.with_name(ova.name + ".sha256")
    temp = target.with_name(target.name + ".partial")
    temp.write_text(f"{digest}  {ova.name}\n", encoding="ascii")
    os.replace(temp, target)
    return target


def export_qemu(settings: OvfSettings, disk: Path, out_dir: Path, progress: Progress) -> ExportResult:
    """Disk image (qcow2/raw) -> dist/<name>-<version>.ova (+ .sha256). Nothing half-written
    is left under the final name: the OVA is built under a temporary name, then renamed."""
    started = time.monotonic()
    if not disk.is_file():
        raise ApplianceError(f"{disk}: no such disk image; build the VM first (appliance build) or pass --disk")
    info = disk_info(disk)
    out_dir.mkdir(parents=True, exist_ok=True)
    ovf_name, vmdk_name, mf_name = artifact_names(settings.name)
    final = out_dir / f"{settings.name}.ova"
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work_dir:
        work = Path(work_dir)
        vmdk = work / vmdk_name
        convert_to_vmdk(disk, vmdk, progress)
        progress(f"VMDK {vmdk.stat().st_size / 1e6:.1f} MB; writing OVF and manifest")
        ovf = work / ovf_name
        ovf.write_bytes(build_ovf(settings, vmdk_name, vmdk.stat().st_size, info.virtual_size, info.data_bytes))
        mf = work / mf_name
        mf.write_text(manifest_text([(ovf_name, sha256_file(ovf)), (vmdk_name, sha256_file(vmdk))]), encoding="ascii")
        partial = work / (final.name + ".partial")
        pack_ova(partial, [(ovf_name, ovf), (vmdk_name, vmdk), (mf_name, mf)], progress)
        digest = sha256_file(partial)
        os.replace(partial, final)
    sums = write_sha256_file(final, digest)
    return ExportResult(final, sums, final.stat().st_size, info, time.monotonic() - started)
