"""`appliance doctor` on this machine: its rows, a port that is really in use, assets, build manifest."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.doctor import cpu_flags, port_free
from freeports import free_port, free_ports

ASSET = b"a small dataset\n" * 1000


def make_workshop(tmp_path: Path, jupyter: int | None = None, tensorboard: int | None = None, *, cached: bool = True) -> Path:
    spare = [p for p in free_ports(4) if p not in (jupyter, tensorboard)]
    jupyter = jupyter or spare.pop()
    tensorboard = tensorboard or spare.pop()
    ssh = spare.pop()
    (tmp_path / "assets.yml").write_text(
        "assets:\n  - name: d.npz\n    kind: dataset\n    urls: [https://example.org/d.npz]\n"
        f"    hash: sha256:{hashlib.sha256(ASSET).hexdigest()}\n    size: {len(ASSET)}\n    place: keras/datasets/d.npz\n"
    )
    if cached:
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "d.npz").write_bytes(ASSET)
    config = tmp_path / "workshop.yml"
    config.write_text(f'name: t\nversion: "1"\nports:\n  jupyter: {jupyter}\n  tensorboard: {tensorboard}\n  ssh: {ssh}\n')
    return config


def rows(stdout: str) -> dict[str, list[str]]:
    """check name -> [status, rest of the line], from the doctor's table."""
    table: dict[str, list[str]] = {}
    for line in stdout.splitlines()[2:]:
        if not line.strip():
            break
        for status in (" ok ", " warn ", " FAIL "):
            if status in line + " ":
                name, _, rest = (line + " ").partition(status)
                table[name.strip()] = [status.strip(), rest.strip()]
                break
    return table


def doctor(appliance_cli, config: Path, *args: str):
    return appliance_cli("doctor", "--config", str(config), "--cache", str(config.parent / "cache"),
                         "--build-manifest", str(config.parent / "no-build-manifest.json"), *args)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_rows_on_this_machine(appliance_cli, tmp_path: Path) -> None:
    config = make_workshop(tmp_path)
    result = doctor(appliance_cli, config)
    table = rows(result.stdout)
    for name in ("python", "memory", "disk", "avx", "port jupyter", "port tensorboard", "asset d.npz"):
        assert name in table, result.stdout + result.stderr
    assert "port ssh" not in table  # only the VM forwards ssh
    assert table["port jupyter"][0] == "ok"
    assert table["port tensorboard"][0] == "ok"
    assert table["asset d.npz"][0] == "ok"
    expected_python = "ok" if sys.version_info[:2] in {(3, 10), (3, 11), (3, 12), (3, 13)} else None
    if expected_python:
        assert table["python"][0] == "ok"
    failed = [name for name, (status, _) in table.items() if status == "FAIL"]
    assert result.returncode == (1 if failed else 0), result.stdout


def test_a_port_in_use_fails(appliance_cli, tmp_path: Path, listening: int) -> None:
    config = make_workshop(tmp_path, jupyter=listening)
    result = doctor(appliance_cli, config)
    assert result.returncode == 1
    table = rows(result.stdout)
    assert table["port jupyter"][0] == "FAIL"
    assert f"127.0.0.1:{listening} is in use" in table["port jupyter"][1]
    assert "set ports.jupyter in workshop.yml" in table["port jupyter"][1]
    assert table["port tensorboard"][0] == "ok"
    assert "doctor: FAIL: port jupyter" in result.stdout


def test_port_free_sees_a_listener(listening: int) -> None:
    assert not port_free("127.0.0.1", listening)
    assert port_free("127.0.0.1", free_port())


def test_missing_and_corrupted_assets_fail(appliance_cli, tmp_path: Path) -> None:
    config = make_workshop(tmp_path, cached=False)
    missing = doctor(appliance_cli, config)
    assert missing.returncode == 1
    assert rows(missing.stdout)["asset d.npz"][0] == "FAIL"
    assert "missing from" in rows(missing.stdout)["asset d.npz"][1]

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "d.npz").write_bytes(ASSET[::-1])
    corrupted = doctor(appliance_cli, config)
    assert corrupted.returncode == 1
    assert "sha256 mismatch" in rows(corrupted.stdout)["asset d.npz"][1]


def test_vm_rows(appliance_cli, tmp_path: Path) -> None:
    config = make_workshop(tmp_path)
    result = doctor(appliance_cli, config, "--vm")
    table = rows(result.stdout)
    for name in ("virtualization", "VirtualBox", "vagrant", "port ssh", "memory"):
        assert name in table, result.stdout + result.stderr
    if "VBoxManage not found" in table["VirtualBox"][1]:
        assert table["VirtualBox"][0] == "FAIL" and result.returncode == 1


def test_build_manifest_is_summarized(appliance_cli, tmp_path: Path) -> None:
    config = make_workshop(tmp_path)
    manifest = tmp_path / "build-manifest.json"
    manifest.write_text(json.dumps({"name": "dl-workshop", "version": "2026.11", "packages": {"keras": "3.12"}}))
    result = appliance_cli("doctor", "--config", str(config), "--cache", str(tmp_path / "cache"), "--build-manifest", str(manifest))
    table = rows(result.stdout)
    assert table["build manifest"][0] == "ok"
    assert "name=dl-workshop" in table["build manifest"][1] and "packages: 1 entries" in table["build manifest"][1]


def test_cpu_flags_parse_proc_cpuinfo() -> None:
    sample = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 vmx\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx\n"
    assert {"avx", "avx2", "vmx", "sse2"} <= cpu_flags(sample)
    real = Path("/proc/cpuinfo")
    if real.is_file() and "flags" in real.read_text():
        assert "sse2" in cpu_flags(real.read_text())  # every x86-64 CPU has it


def test_the_workshops_own_jupyter_on_the_port_is_ok(appliance_cli, tmp_path: Path, workshop_python: Path) -> None:
    """A real JupyterLab of the workshop env (its settings installed by local/setup.bash) on the port."""
    port = free_port()
    env_bin = workshop_python.parent
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    server_env["JUPYTER_TOKEN"] = "t" * 48
    server = subprocess.Popen(
        [str(env_bin / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
         f"--ServerApp.root_dir={tmp_path}", "--allow-root"],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while port_free("127.0.0.1", port):
            assert server.poll() is None and time.monotonic() < deadline, "jupyter lab did not start"
            time.sleep(0.3)
        time.sleep(1)  # listening comes a moment before the handlers answer
        result = doctor(appliance_cli, make_workshop(tmp_path, jupyter=port))
    finally:
        server.terminate()
        server.wait(timeout=60)
    table = rows(result.stdout)
    assert table["port jupyter"][0] == "ok", result.stdout
    assert f"127.0.0.1:{port} is the workshop's Jupyter, already running" in table["port jupyter"][1]
