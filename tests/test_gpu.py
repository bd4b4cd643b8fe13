"""GPU servers (`servers.gpu: true`): the GPU lock (tensorflow[and-cuda]) resolves for the servers
and matches workshop.lock, the setting is validated, the deploy refuses without the GPU wheels and
passes the GPU lock to python_env, and the nvidia_driver_check role, run for real on this machine
(which has no NVIDIA GPU), stops with what is missing and what to do.

Not runnable here: a real GPU server (a deploy, CUDA in TensorFlow) and the multi-GB CUDA wheels;
their resolution is checked from PyPI's metadata only (no wheel is downloaded)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from appliance.config import load_config
from appliance.errors import ApplianceError
from appliance.lockfile import parse_lock
from appliance.wheels import Target, marker_environment, resolve_command

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements"
GPU_IN = REQUIREMENTS / "workshop-gpu.in"
GPU_LOCK = REQUIREMENTS / "workshop-gpu.lock"
CPU_IN = REQUIREMENTS / "workshop.in"
CPU_LOCK = REQUIREMENTS / "workshop.lock"
BIN = Path(sys.executable).parent
UV = str(BIN / "uv")
SERVER = Target("3.13", "linux_x86_64")  # Debian 13's python3 and Fedora's python3.13 (python_env's vars)
ROLE = REPO_ROOT / "provision" / "roles" / "nvidia_driver_check"
NO_DRIVER = "no NVIDIA kernel driver loaded (/proc/driver/nvidia/version is missing)"


def _uv_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return {**env, "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(cache)}


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split(" #")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def _cpu_pins_on_the_servers() -> dict[str, str]:
    env = marker_environment("3.13.0", SERVER.platform)
    return {pin.name: pin.version for pin in parse_lock(CPU_LOCK) if pin.applies(env)}


# --- the lock ---------------------------------------------------------------------------------

def test_lock_header_names_the_command_in_the_in_file() -> None:
    command = GPU_LOCK.read_text().splitlines()[1].strip("# ").strip()
    assert command.startswith("uv pip compile ") and "--generate-hashes" in command
    assert "--python-version 3.13 --python-platform x86_64-manylinux_2_28" in command
    assert command in GPU_IN.read_text(), "workshop-gpu.in's instructions and the lock's header differ"


def test_the_in_file_is_workshop_in_with_the_cuda_build() -> None:
    """Only the TensorFlow line differs: the same release, the CUDA build instead of tensorflow-cpu."""
    def split(lines: list[str]) -> tuple[list[Requirement], list[str]]:
        tf = [Requirement(line) for line in lines if line.startswith("tensorflow")]
        return tf, [line for line in lines if not line.startswith("tensorflow")]

    cpu_tf, cpu_rest = split(_requirement_lines(CPU_IN))
    gpu_tf, gpu_rest = split(_requirement_lines(GPU_IN))
    assert gpu_rest == cpu_rest
    assert [(r.name, r.extras, r.marker) for r in gpu_tf] == [("tensorflow", {"and-cuda"}, None)]
    cpu_linux = next(r for r in cpu_tf if r.name == "tensorflow-cpu")
    assert gpu_tf[0].specifier == cpu_linux.specifier
    assert "-c workshop.lock" in GPU_IN.read_text().splitlines()


def test_lock_pins_the_cuda_build_with_hashes_and_workshop_locks_versions() -> None:
    pins = parse_lock(GPU_LOCK)
    assert all(pin.marker is None for pin in pins), "one platform: no markers"
    for pin in pins:
        assert pin.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin.hashes), pin.name
    gpu = {pin.name: pin.version for pin in pins}
    assert len(gpu) == len(pins), "one pin per package"
    cpu = _cpu_pins_on_the_servers()
    assert "tensorflow-cpu" not in gpu and gpu["tensorflow"] == cpu["tensorflow-cpu"]
    # every package both share: workshop.lock's version (the -c constraint), so a GPU server runs
    # what the VM runs and the shared wheels are the CPU wheelhouse's own files
    assert {name: (cpu[name], gpu[name]) for name in cpu.keys() & gpu.keys() if cpu[name] != gpu[name]} == {}
    added = set(gpu) - set(cpu)
    assert "tensorflow" in added and all(name.startswith("nvidia-") for name in added - {"tensorflow"})
    assert {name for name in added if name.startswith("nvidia-")} >= {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"}
    assert set(cpu) - set(gpu) == {"tensorflow-cpu"}


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


def _compile_names(requirement: str, cache: Path, scratch: Path) -> set[str]:
    source = scratch / (re.sub(r"[^a-z0-9]+", "-", requirement) + ".in")
    source.write_text(requirement + "\n")
    result = subprocess.run([UV, "pip", "compile", "--no-header", "--no-annotate", "--python-version", SERVER.python,
                             "--python-platform", "x86_64-manylinux_2_28", "--index-url", "https://pypi.org/simple",
                             str(source)], env=_uv_env(cache), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return {Requirement(line).name for line in _requirement_lines_from(result.stdout)}


def _requirement_lines_from(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_lock_holds_exactly_what_the_and_cuda_extra_adds(uv_cache: Path, tmp_path: Path) -> None:
    """From PyPI's metadata: tensorflow[and-cuda] minus plain tensorflow is the lock's nvidia-* set."""
    version = {pin.name: pin.version for pin in parse_lock(GPU_LOCK)}["tensorflow"]
    with_cuda = _compile_names(f"tensorflow[and-cuda]=={version}", uv_cache, tmp_path)
    plain = _compile_names(f"tensorflow=={version}", uv_cache, tmp_path)
    extra = {name.lower() for name in with_cuda - plain}
    assert extra and all(name.startswith("nvidia-") for name in extra), extra
    locked = {pin.name for pin in parse_lock(GPU_LOCK)}
    assert extra <= locked, extra - locked
    assert {name for name in locked if name.startswith("nvidia-")} == extra


def test_lock_resolves_for_the_servers_from_pypi_metadata(uv_cache: Path, tmp_path: Path) -> None:
    """uv resolves the whole lock with --require-hashes for Linux x86_64 CPython 3.13 (every
    package has a wheel there, no dependency is missing) without downloading a wheel."""
    result = subprocess.run(resolve_command(UV, GPU_LOCK, SERVER, tmp_path, None),
                            env=_uv_env(uv_cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    would = re.findall(r"^ \+ ([^=]+)==(\S+)$", result.stderr, re.MULTILINE)
    assert sorted((name.lower(), v) for name, v in would) == sorted((p.name, p.version) for p in parse_lock(GPU_LOCK))
    # metadata only: uv keeps unpacked wheels under archive-v*, and none may be there
    assert not [p for p in uv_cache.glob("archive-v*/*")]
    biggest = max((f.stat().st_size for f in uv_cache.rglob("*") if f.is_file()), default=0)
    assert biggest < 50 * 2**20, f"a {biggest} byte file in uv's cache: a wheel was downloaded"


# --- the setting ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    pytest.param('servers:\n  gpu: "yes"\n', r"w\.yml:4: servers\.gpu: 'yes' has the wrong type; write true or false", id="text"),
    pytest.param("servers:\n  gpu: 1\n", r"w\.yml:4: servers\.gpu: 1 has the wrong type", id="number"),
    pytest.param("servers:\n  gpus: true\n", r"w\.yml:4: servers\.gpus: unknown key", id="unknown-key"),
    pytest.param("servers: true\n", r"w\.yml:3: servers: True has the wrong type; write a mapping", id="not-a-mapping"),
])
def test_bad_gpu_setting_is_one_line_exit_2(appliance_cli, workdir: Path, text: str, expected: str) -> None:
    (workdir / "w.yml").write_text('name: x\nversion: "1"\n' + text)
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 2
    assert re.search(expected, result.stderr) and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_gpu_setting_defaults_to_false_and_is_apart_from_kubernetes(workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: x\nversion: "1"\n')
    assert load_config(workdir / "w.yml").workshop.servers.gpu is False
    (workdir / "w.yml").write_text('name: x\nversion: "1"\nservers:\n  gpu: true\n')
    workshop = load_config(workdir / "w.yml").workshop
    assert workshop.servers.gpu is True and workshop.kubernetes.gpu is False
    assert load_config(REPO_ROOT / "workshop.yml").workshop.servers.gpu is False


# --- fetch: cache/wheels/gpu ------------------------------------------------------------------

def _wheel(path: Path, name: str, payload: str = "") -> str:
    import hashlib
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", payload)
        archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("PIP_RETRIES", "0")


def test_gpu_wheelhouse_links_the_shared_wheels_and_downloads_nothing_else(tmp_path: Path, monkeypatch) -> None:
    from appliance.gpu import fill_gpu_wheels, gpu_wheels_dir

    cpu = tmp_path / "cache" / "wheels"
    cpu.mkdir(parents=True)
    shared = _wheel(cpu / "shared_pkg-1.0-py3-none-any.whl", "shared_pkg")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "workshop-gpu.lock").write_text(f"shared-pkg==1.0 \\\n    --hash=sha256:{shared}\n")
    _no_network(monkeypatch)  # a download would fail
    fill_gpu_wheels(tmp_path, tmp_path / "cache")
    linked = gpu_wheels_dir(tmp_path / "cache") / "shared_pkg-1.0-py3-none-any.whl"
    assert linked.stat().st_ino == (cpu / linked.name).stat().st_ino  # one file on disk
    assert sorted(p.name for p in cpu.glob("*.whl")) == [linked.name]  # nothing added to the CPU wheelhouse


def test_gpu_wheelhouse_never_links_a_wheel_with_another_hash(tmp_path: Path, monkeypatch) -> None:
    from appliance.gpu import fill_gpu_wheels, gpu_wheels_dir

    cpu = tmp_path / "cache" / "wheels"
    cpu.mkdir(parents=True)
    _wheel(cpu / "cuda_pkg-1.0-py3-none-any.whl", "cuda_pkg", payload="the CPU build")
    wanted = _wheel(tmp_path / "cuda_pkg-1.0-py3-none-any.whl", "cuda_pkg", payload="the CUDA build")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "workshop-gpu.lock").write_text(f"cuda-pkg==1.0 \\\n    --hash=sha256:{wanted}\n")
    _no_network(monkeypatch)
    with pytest.raises(ApplianceError, match="could not download the wheels for Python 3.13"):
        fill_gpu_wheels(tmp_path, tmp_path / "cache")
    assert not list(gpu_wheels_dir(tmp_path / "cache").glob("*.whl"))


def _fetch_workdir(workdir: Path, gpu: bool) -> Path:
    (workdir / "assets.yml").write_text("assets: []\n")
    (workdir / "w.yml").write_text(f'name: x\nversion: "1"\nservers:\n  gpu: {str(gpu).lower()}\n')
    (workdir / "cache" / "wheels").mkdir(parents=True)
    (workdir / "cache" / "wheels" / "demo-1.0-py3-none-any.whl").write_bytes(b"")
    (workdir / "requirements").mkdir()
    shutil.copy(GPU_LOCK, workdir / "requirements")
    return workdir / "w.yml"


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "cpu"])
def test_offline_fetch_checks_the_gpu_wheelhouse_only_for_gpu_servers(appliance_cli, workdir: Path, gpu: bool) -> None:
    config = _fetch_workdir(workdir, gpu)
    result = appliance_cli("fetch", "--config", str(config), "--wheels", "--offline", cwd=workdir)
    if gpu:
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"lacks {len(parse_lock(GPU_LOCK))} of the GPU lock's wheels" in result.stderr
        assert "cache/wheels/gpu" in result.stderr and "Traceback" not in result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "GPU" not in result.stdout + result.stderr and "wheels/gpu" not in result.stdout + result.stderr


# --- the deploy -------------------------------------------------------------------------------

def _deploy_workdir(appliance_cli, workdir: Path, gpu: bool) -> Path:
    (workdir / "people.csv").write_text("alice\nbob\n")
    config = workdir / "w.yml"
    config.write_text(f'name: deptest\nversion: "1"\nhub:\n  roster: people.csv\n  url: https://hub.example.org/\nservers:\n  gpu: {str(gpu).lower()}\n')
    (workdir / "inventory").write_text("hub ansible_host=192.0.2.1\n")
    assert appliance_cli("hub", "slips", "--config", "w.yml", cwd=workdir).returncode == 0
    # what the controller-side check looks for (their content is checked by fetch and by the host's installer)
    for folder in ("wheels", "wheels/hub"):
        (workdir / "cache" / folder).mkdir(parents=True, exist_ok=True)
        (workdir / "cache" / folder / "placeholder-1.0-py3-none-any.whl").write_bytes(b"")
    (workdir / "cache" / "npm" / "node_modules").mkdir(parents=True)
    (workdir / "requirements").mkdir()
    shutil.copy(GPU_LOCK, workdir / "requirements")
    return config


def _fill_gpu_placeholders(workdir: Path, skip: str = "") -> None:
    dest = workdir / "cache" / "wheels" / "gpu"
    dest.mkdir(parents=True, exist_ok=True)
    for pin in parse_lock(GPU_LOCK):
        if pin.name != skip:
            (dest / f"{pin.name.replace('-', '_')}-{pin.version}-py3-none-any.whl").write_bytes(b"")


def test_deploy_refuses_without_the_gpu_wheels(appliance_cli, workdir: Path) -> None:
    config = _deploy_workdir(appliance_cli, workdir, gpu=True)
    result = appliance_cli("deploy", "--mode", "hub", "--config", str(config), "--inventory", "inventory",
                           "--dry-run", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert f"lacks {len(parse_lock(GPU_LOCK))} of the GPU lock's wheels" in result.stderr
    assert "run `appliance fetch --wheels`" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    _fill_gpu_placeholders(workdir, skip="nvidia-cudnn-cu12")  # one missing is enough to refuse
    result = appliance_cli("deploy", "--mode", "hub", "--config", str(config), "--inventory", "inventory",
                           "--check", cwd=workdir)
    assert result.returncode == 2 and "lacks 1 of the GPU lock's wheels (nvidia-cudnn-cu12==" in result.stderr
    assert "ansible:" not in result.stdout  # no play started


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "cpu"])
def test_deploy_dry_run_passes_the_chosen_lock_to_python_env(appliance_cli, workdir: Path, gpu: bool) -> None:
    config = _deploy_workdir(appliance_cli, workdir, gpu)
    _fill_gpu_placeholders(workdir)
    result = appliance_cli("deploy", "--mode", "hub", "--config", str(config), "--inventory", "inventory",
                           "--check", "--dry-run", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("ansible: "))
    assert line.endswith("--check --diff") and "hub.yml" in line
    extra = [json.loads(part) for part in re.findall(r"--extra-vars '(\{.*?\})'", line)]
    passed = {k: v for part in extra for k, v in part.items()}
    if gpu:
        assert passed["python_env_lock"] == str(workdir / "requirements" / "workshop-gpu.lock")
        assert passed["python_env_wheelhouse"] == str(workdir / "cache" / "wheels" / "gpu")
    else:
        assert "python_env_lock" not in passed and "workshop-gpu" not in line  # the role's default: workshop.lock
    assert not (workdir / "cache" / "vm").exists() or not list((workdir / "cache" / "vm").rglob("workshop-vars.json"))


# --- the driver check role, for real on this machine ------------------------------------------

def _ansible_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLE.parent), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}


def _run_play(play: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,", str(play),
         # this Python: the machine's `python3` may be a pyenv shim that Ansible's discovery trips on
         "-e", json.dumps({"ansible_python_interpreter": sys.executable, "workshop_root": str(REPO_ROOT),
                           "ansible_become": False}), *extra],
        cwd=tmp_path, env=_ansible_env(tmp_path), capture_output=True, text=True, timeout=300)


def _recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def _hub_play_with_the_check_only(tmp_path: Path, gpu: bool) -> Path:
    """provision/hub.yml as it is, cut after its first role (the driver check with its guard)."""
    plays = yaml.safe_load((REPO_ROOT / "provision" / "hub.yml").read_text())
    first = plays[0]["roles"][0]
    assert first == {"role": "nvidia_driver_check", "when": "workshop.servers.gpu"}, "the check runs first, guarded"
    plays[0]["roles"] = [first]
    (tmp_path / "workshop-vars.json").write_text(json.dumps({"workshop": {"servers": {"gpu": gpu}}}))
    (tmp_path / "accounts.json").write_text("{}")
    play = tmp_path / "hub-check.yml"
    play.write_text(yaml.safe_dump(plays))
    return play


def _no_nvidia_driver_here() -> None:
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver loaded: the negative check needs one without")


@pytest.mark.parametrize("mode", [[], ["--check"]], ids=["run", "check-mode"])
def test_driver_check_fails_here_naming_what_is_missing_and_what_to_do(tmp_path: Path, mode: list[str]) -> None:
    _no_nvidia_driver_here()
    play = _hub_play_with_the_check_only(tmp_path, gpu=True)
    result = _run_play(play, tmp_path, "-e", json.dumps({"workshop_vars": str(tmp_path / "workshop-vars.json"),
                                                         "hub_accounts_file": str(tmp_path / "accounts.json")}), *mode)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert NO_DRIVER in output
    assert "the GPU lock's CUDA 12 wheels need driver 525.60.13 or newer" in output
    assert ("apt install linux-headers-amd64 nvidia-driver" in output and "non-free" in output) or \
        ("dnf install akmod-nvidia" in output and "RPM Fusion" in output)
    assert "set servers.gpu to false" in output
    recap = _recap(output)
    assert recap["failed"] == 1 and recap["changed"] == 0


def test_cpu_servers_skip_the_driver_check(tmp_path: Path) -> None:
    play = _hub_play_with_the_check_only(tmp_path, gpu=False)
    result = _run_play(play, tmp_path, "-e", json.dumps({"workshop_vars": str(tmp_path / "workshop-vars.json"),
                                                         "hub_accounts_file": str(tmp_path / "accounts.json")}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    recap = _recap(output)
    assert recap["failed"] == 0 and recap["changed"] == 0 and recap["skipped"] >= 5
    assert NO_DRIVER not in output


# A stand-in for the driver's nvidia-smi (this machine has none): prints what the real one prints
# for exactly the query the role makes, and refuses any other arguments.
_SMI = """#!/bin/sh
[ "$1" = "--query-gpu=driver_version,name" ] && [ "$2" = "--format=csv,noheader" ] && [ $# -eq 2 ] || {{
    echo "unexpected arguments: $*" >&2; exit 2; }}
{body}
"""


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param('echo "470.57.02, NVIDIA A100-SXM4-40GB"',
                 "runs NVIDIA driver 470.57.02; the GPU lock's CUDA 12 wheels need 525.60.13 or newer: upgrade the driver",
                 id="too-old"),
    # 525.105.17 is newer than 525.60.13 as a version, older as a string
    pytest.param('echo "525.105.17, Tesla T4"', "NVIDIA driver 525.105.17 (1 GPU(s): Tesla T4) runs CUDA 12", id="new-enough"),
    pytest.param("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9",
                 "is missing or fails (NVIDIA-SMI has failed because it couldn't communicate", id="smi-fails"),
    pytest.param(None, "is missing or fails (it did not run: not installed, or not on the PATH)", id="smi-missing"),
])
def test_driver_check_reads_nvidia_smi(tmp_path: Path, body: str | None, expected: str) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  525.105.17\n")
    smi = tmp_path / "nvidia-smi"
    if body is not None:
        smi.write_text(_SMI.format(body=body))
        smi.chmod(0o755)
    play = tmp_path / "check.yml"
    play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "roles": ["nvidia_driver_check"]}]))
    result = _run_play(play, tmp_path, "-e", json.dumps({"nvidia_driver_check_proc": str(proc),
                                                         "nvidia_driver_check_smi": str(smi)}))
    output = result.stdout + result.stderr
    assert expected in output, output
    assert (result.returncode == 0) == (expected.startswith("NVIDIA driver")), output
    # without facts the advice names both distributions' packages
    if result.returncode != 0:
        assert "apt install linux-headers-amd64 nvidia-driver" in output and "dnf install akmod-nvidia" in output


def test_the_role_passes_ansible_lint() -> None:
    result = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor", "roles/nvidia_driver_check"],
                            cwd=REPO_ROOT / "provision", env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
