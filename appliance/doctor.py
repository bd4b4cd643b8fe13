"""`appliance doctor`: what makes a workshop fail on a participant's machine, and what to do.

Each check returns one row (name, ok/warn/FAIL, what was found, what to do). Nothing here
changes the machine; the checks only read system state.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from appliance.assets import CACHED, MISSING, UNPINNED, VERIFIED, check_cached
from appliance.config import LoadedConfig
from appliance.table import human_size

OK, WARN, FAIL = "ok", "warn", "FAIL"
GB = 1000**3
PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))  # TensorFlow 2.21 has wheels for these only
MIN_AVAILABLE_RAM = 2 * GB
MIN_TOTAL_RAM_LOCAL = 4 * GB
# Room for the workshop venv (TensorFlow, Keras, PyTensor, JupyterLab) plus work files.
LOCAL_ENV_BYTES = 4 * GB
# An imported appliance disk grows as it is used; below this the VM will not get through the day.
VM_MIN_DISK_BYTES = 10 * GB
BUILD_MANIFEST = Path("/etc/workshop/build-manifest.json")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    found: str
    advice: str = ""


# --- Python -----------------------------------------------------------------------------


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        major, minor = out.split(".")
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def check_python(vm: bool) -> Check:
    current = sys.version_info[:2]
    shown = f"{current[0]}.{current[1]} ({sys.executable})"
    if current in PYTHONS:
        return Check("python", OK, shown)
    for major, minor in reversed(PYTHONS):
        found = shutil.which(f"python{major}.{minor}")
        if found and _version_of(found) == (major, minor):
            return Check("python", OK, f"{shown}; {found} is {major}.{minor}",
                         f"this Python cannot run TensorFlow; local mode can use {found}")
    wanted = "3.10-3.13"
    advice = (f"install Python {wanted} (e.g. Fedora: dnf install python3.13; macOS/Windows: python.org) "
              f"for local mode; TensorFlow has no wheels for {current[0]}.{current[1]}")
    return Check("python", WARN if vm else FAIL, shown, advice)


# --- memory and disk ----------------------------------------------------------------------


def check_memory(loaded: LoadedConfig, vm: bool) -> Check:
    memory = psutil.virtual_memory()
    found = f"{human_size(memory.available)} free of {human_size(memory.total)}"
    if vm:
        guest = loaded.workshop.vm.memory_mb * 1024 * 1024
        need = guest + 1024**3  # the guest's memory plus room for the host itself
        if memory.available >= need:
            return Check("memory", OK, found)
        if memory.total < need:
            return Check("memory", FAIL, found,
                         f"the VM wants {loaded.workshop.vm.memory_mb} MB plus 1 GB for the host; "
                         "lower vm.memory_mb (minimum 2048) or use local mode")
        return Check("memory", WARN, found, f"close programs: the VM needs {human_size(need)} free")
    if memory.available >= MIN_AVAILABLE_RAM:
        return Check("memory", OK, found)
    if memory.total < MIN_TOTAL_RAM_LOCAL:
        return Check("memory", FAIL, found, "TensorFlow notebooks need about 2 GB free; this machine has too little memory")
    return Check("memory", WARN, found, "close programs (browser tabs): the notebooks need about 2 GB free")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(loaded: LoadedConfig, cache: Path, vm: bool) -> Check:
    where = _existing_ancestor(cache)
    free = shutil.disk_usage(where).free
    found = f"{human_size(free)} free at {where}"
    missing = sum(
        asset.size or 0
        for asset in loaded.included_assets()
        if asset.kind != "installer" and not (cache / asset.name).is_file()
    )
    need = (VM_MIN_DISK_BYTES if vm else LOCAL_ENV_BYTES) + missing
    if free < need:
        return Check("disk", FAIL, found, f"free at least {human_size(need - free)} more (need {human_size(need)})")
    if free < 2 * need:
        return Check("disk", WARN, found, f"tight: {human_size(need)} needed; free some space")
    return Check("disk", OK, found)


# --- CPU features ---------------------------------------------------------------------------


def cpu_flags(cpuinfo: str) -> set[str]:
    """The x86 feature flags listed in /proc/cpuinfo."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _sysctl(*names: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _windows_feature(feature: int) -> bool:
    try:
        return bool(ctypes.windll.kernel32.IsProcessorFeaturePresent(feature))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return False


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def check_avx() -> Check:
    machine = platform.machine()
    if not _is_x86():
        return Check("avx", OK, f"{machine}: not needed (TensorFlow's {machine} wheels do not use AVX)")
    advice = "TensorFlow needs a CPU with AVX (most since 2011); use a newer machine or the organizers' spare"
    if sys.platform.startswith("linux"):
        flags = cpu_flags(_read_cpuinfo())
        if "avx" in flags:
            return Check("avx", OK, "AVX" + (", AVX2" if "avx2" in flags else ""))
        return Check("avx", FAIL, "no avx flag in /proc/cpuinfo", advice)
    if sys.platform == "darwin":
        features = _sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features").upper()
        if "AVX1.0" in features or "AVX2" in features:
            return Check("avx", OK, "AVX")
        return Check("avx", FAIL, "sysctl shows no AVX", advice)
    if sys.platform == "win32":
        if _windows_feature(39):  # PF_AVX_INSTRUCTIONS_AVAILABLE
            return Check("avx", OK, "AVX")
        return Check("avx", WARN, "Windows did not confirm AVX",
                     "TensorFlow needs AVX; check the CPU model (any Intel/AMD CPU since 2011 has it)")
    return Check("avx", WARN, f"cannot check on {sys.platform}", "TensorFlow needs a CPU with AVX")


# --- ports -------------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as Jupyter would: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let us bind over a live listener
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _listener(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by {psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except (psutil.Error, OSError):
        pass  # listing other users' sockets needs privileges on some systems
    return ""


# Sent by the workshop's own Jupyter (local mode and the VM; local/jupyter/server.json).
WORKSHOP_HEADER = "X-Workshop-Appliance"


def workshop_jupyter_on(host: str, port: int, timeout: float = 3.0) -> str | None:
    """The Jupyter server version when the workshop's own Jupyter answers on host:port, else None.

    /api answers without a token; only the workshop's server sends WORKSHOP_HEADER."""
    address = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        address = "127.0.0.1"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local port: never via a proxy
    try:
        with direct.open(f"http://{address}:{port}/api", timeout=timeout) as response:
            if response.headers.get(WORKSHOP_HEADER) is None:
                return None
            return str(json.loads(response.read(4096)).get("version", "?"))
    except (OSError, ValueError):
        return None


def check_ports(loaded: LoadedConfig, vm: bool) -> list[Check]:
    ports = loaded.workshop.ports
    names = ["jupyter", "tensorboard"] + (["ssh"] if vm else [])
    checks = []
    for name in names:
        port = getattr(ports, name)
        label = f"port {name}"
        where = f"{ports.host_address}:{port}"
        if port_free(ports.host_address, port):
            checks.append(Check(label, OK, f"{where} is free"))
        elif name == "jupyter" and (version := workshop_jupyter_on(ports.host_address, port)):
            checks.append(Check(label, OK, f"{where} is the workshop's Jupyter, already running (server {version})"))
        else:
            checks.append(Check(label, FAIL, f"{where} is in use{_listener(port)}",
                                f"stop that program, or set ports.{name} in {loaded.path.name} to a free port"))
    return checks


# --- assets --------------------------------------------------------------------------------


def check_assets(loaded: LoadedConfig, cache: Path) -> list[Check]:
    checks = []
    for asset in loaded.included_assets():
        if asset.kind == "installer":
            continue
        state = check_cached(asset, cache)
        label = f"asset {asset.name}"
        if state.status in (CACHED, VERIFIED):
            checks.append(Check(label, OK, f"{state.status}, {human_size(state.size)}"))
        elif state.status == UNPINNED:
            checks.append(Check(label, WARN, f"present, {human_size(state.size)}, no hash to check",
                                f"run `appliance fetch --pin {asset.name}` once with internet"))
        elif state.status == MISSING:
            checks.append(Check(label, FAIL, f"missing from {cache}",
                                "run `appliance fetch` with internet, or copy cache/ from the thumb drive"))
        else:
            checks.append(Check(label, FAIL, state.note, f"delete {cache / asset.name} and run `appliance fetch`"))
    return checks


# --- VM host -------------------------------------------------------------------------------


def check_virtualization() -> Check:
    if not _is_x86():
        return Check("virtualization", FAIL, f"{platform.machine()} CPU",
                     "the appliance is an x86-64 VM and cannot run here; use local mode instead")
    firmware = "enable Intel VT-x / AMD-V (SVM) in the BIOS/UEFI setup, then power off and on"
    if sys.platform.startswith("linux"):
        flags = cpu_flags(_read_cpuinfo())
        kvm = Path("/dev/kvm").exists()
        if flags & {"vmx", "svm"}:
            kind = "VT-x (vmx)" if "vmx" in flags else "AMD-V (svm)"
            return Check("virtualization", OK, kind + (", /dev/kvm present" if kvm else ""))
        if kvm:
            return Check("virtualization", WARN, "no vmx/svm flag, but /dev/kvm exists (nested VM?)",
                         "VirtualBox may be slow or refuse 64-bit guests; " + firmware)
        return Check("virtualization", FAIL, "no vmx/svm flag and no /dev/kvm", firmware)
    if sys.platform == "darwin":
        if _sysctl("kern.hv_support").strip() == "1":
            return Check("virtualization", OK, "Hypervisor.framework supported")
        return Check("virtualization", FAIL, "kern.hv_support is not 1", "this Mac cannot run VMs; use local mode")
    if sys.platform == "win32":
        if _windows_feature(21):  # PF_VIRT_FIRMWARE_ENABLED
            return Check("virtualization", OK, "enabled in firmware")
        return Check("virtualization", WARN, "Windows did not confirm VT-x/AMD-V",
                     firmware + "; Task Manager > Performance > CPU shows 'Virtualization: Enabled'")
    return Check("virtualization", WARN, f"cannot check on {sys.platform}", firmware)


def _tool_version(program: str, *args: str) -> str:
    try:
        out = subprocess.run([program, *args], capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _vboxmanage() -> str | None:
    found = shutil.which("VBoxManage") or shutil.which("vboxmanage")
    if found:
        return found
    for candidate in (
        Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "Oracle" / "VirtualBox" / "VBoxManage.exe",
        Path("/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"),
    ):
        if candidate.is_file():
            return str(candidate)
    return None


def check_vm_tools() -> list[Check]:
    checks = []
    vbox = _vboxmanage()
    if vbox:
        checks.append(Check("VirtualBox", OK, f"{_tool_version(vbox, '--version')} ({vbox})"))
    else:
        checks.append(Check("VirtualBox", FAIL, "VBoxManage not found",
                            "install VirtualBox 7 (the thumb drive has installers), then import the .ova"))
    vagrant = shutil.which("vagrant")
    if vagrant:
        checks.append(Check("vagrant", OK, _tool_version(vagrant, "--version")))
    else:
        checks.append(Check("vagrant", WARN, "not found", "only organizers building the VM need vagrant"))
    return checks


# --- build manifest --------------------------------------------------------------------------


def summarize_build_manifest(path: Path) -> Check | None:
    """One row describing the appliance's build manifest, if the file exists."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Check("build manifest", WARN, f"{path}: unreadable ({type(exc).__name__})", "rebuild the appliance")
    if not isinstance(data, dict):
        return Check("build manifest", WARN, f"{path}: not a JSON object")
    parts = []
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            parts.append(f"{key}: {len(value)} entries")
        else:
            parts.append(f"{key}={value}")
    return Check("build manifest", OK, f"{path}: " + ", ".join(parts[:8]) + (", ..." if len(parts) > 8 else ""))


# --- all together -----------------------------------------------------------------------------


def run_checks(loaded: LoadedConfig, cache: Path, *, vm: bool = False, build_manifest: Path = BUILD_MANIFEST) -> list[Check]:
    checks = [
        check_python(vm),
        check_memory(loaded, vm),
        check_disk(loaded, cache, vm),
        check_avx(),
        *check_ports(loaded, vm),
        *check_assets(loaded, cache),
    ]
    if vm:
        checks.append(check_virtualization())
        checks.extend(check_vm_tools())
    manifest_row = summarize_build_manifest(build_manifest)
    if manifest_row:
        checks.append(manifest_row)
    return checks


def any_failed(checks: Sequence[Check]) -> bool:
    return any(check.status == FAIL for check in checks)
