"""The VM tier: `appliance build --provider qemu` on the repository's workshop (its notebooks,
workshop.yml defaults, generated assets in their real formats), then checks from outside the
VM. The root file system is cached between runs (cache/vm); the build runs once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from vm.workshop_maker import TestAsset, make_workshop

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN_WAIT_SECONDS = 900


def _skip_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        return "qemu is not installed (apt-get install qemu-system-x86 qemu-utils)"
    if os.geteuid() != 0 and not any((REPO_ROOT / "cache" / "vm").glob("base-*.qcow2")):
        return "building the qemu base image needs root (mmdebstrap, loop devices) and none is cached"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    if reason:
        for item in items:
            if "tests/vm/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=f"VM tier: {reason}"))


@dataclass
class BuiltVM:
    root: Path
    config_path: Path
    build_output: str
    reprovision_output: str
    machine: object
    token: str
    ports: dict[str, int]
    assets: list[TestAsset]

    @property
    def jupyter_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['jupyter']}"

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.machine.ssh("sh", "-c", _quote(command), timeout=timeout, check=False)


def _quote(command: str) -> str:
    import shlex

    return shlex.quote(command)


def _appliance(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # KVM here runs real-mode code but hangs kernels; the build's own probe would find
    # that out after 30 s per boot, so the tier says it up front (APPLIANCE_QEMU_ACCEL=kvm overrides).
    env.setdefault("APPLIANCE_QEMU_ACCEL", "tcg")
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    log = REPO_ROOT / "cache" / "vm" / "vmtest-last-build.log"
    with log.open("a") as handle:
        handle.write(f"$ appliance {' '.join(args)}\n{result.stdout}\n{result.stderr}\n")
    return result


@dataclass
class BuiltDisk:
    """A workshop built by `appliance build --provider qemu` and provisioned a second time."""

    root: Path
    config_path: Path
    disk: Path
    build_output: str
    reprovision_output: str
    ports: dict[str, int]
    assets: list[TestAsset]


@pytest.fixture(scope="session")
def built_disk(tmp_path_factory, workshop_python) -> BuiltDisk:
    """The halted, provisioned disk (also what the export tests export)."""
    lock = REPO_ROOT / "requirements" / "workshop.lock"
    wheels = REPO_ROOT / "cache" / "wheels"
    if not lock.is_file():
        pytest.fail("the VM tier needs requirements/workshop.lock")
    if not any(wheels.glob("*.whl")):
        from appliance.wheels import build_wheelhouse  # the same wheelhouse `appliance fetch --wheels` makes

        build_wheelhouse(lock, wheels)
    from appliance.config import load_config
    from appliance.vm import qemu
    from appliance.vm.image import ensure_base_image

    root = tmp_path_factory.mktemp("vmtest")
    config_path, ports, assets = make_workshop(root, REPO_ROOT, workshop_python)
    # The bare base image the export tests also boot (cheap from the cached root file system).
    ensure_base_image(REPO_ROOT / "cache" / "vm", load_config(config_path).workshop.vm.disk_gb, print)
    (REPO_ROOT / "cache" / "vm" / "vmtest-last-build.log").unlink(missing_ok=True)

    build = _appliance("build", "--provider", "qemu", "--config", str(config_path), timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-2000:]
    again = _appliance("build", "--provider", "qemu", "--provision-only", "--config", str(config_path), timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    disk = qemu.built_disk_path(load_config(config_path))
    return BuiltDisk(root, config_path, disk, build.stdout, again.stdout, ports, assets)


@pytest.fixture(scope="session")
def built_vm(built_disk) -> BuiltVM:
    from appliance.config import load_config
    from appliance.vm import qemu
    from appliance.vm.cachepaths import jupyter_token_path
    from appliance.vm.image import USER, build_key_path

    config = load_config(built_disk.config_path)
    key = build_key_path(REPO_ROOT / "cache" / "vm")
    os.environ.setdefault("APPLIANCE_QEMU_ACCEL", "tcg")
    # Booting the halted, built disk again is the reboot: the services must come back by themselves.
    machine, _ = qemu.boot_until_ssh(built_disk.disk, config, key, USER, 600)
    try:
        token = jupyter_token_path(config).read_text().split()[0]
        vm = BuiltVM(built_disk.root, built_disk.config_path, built_disk.build_output, built_disk.reprovision_output,
                     machine, token, built_disk.ports, built_disk.assets)
        deadline = time.monotonic() + TOKEN_WAIT_SECONDS
        while True:
            try:
                if requests.get(f"{vm.jupyter_url}/api/status", params={"token": token}, timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "Jupyter did not answer after the reboot"
            time.sleep(5)
        yield vm
    finally:
        machine.shutdown(timeout=120)
