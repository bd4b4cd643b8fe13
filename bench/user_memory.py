"""Memory of one busy participant: each workshop notebook executed in quick mode in a real kernel
of the workshop environment, the kernel's peak RSS per notebook and the largest, plus the idle
JupyterLab server a participant's pod also holds. `appliance k8s size` sizes nodes from the
largest (appliance/k8s/sizing.py keeps it as MEASURED_BUSY_USER_MB with where it came from).

    .venv/bin/python bench/user_memory.py [--env DIR] [--python PYTHON] [NAME ...]

The environment is built (or, when its stamp matches the lock, reused) with local/workshop_env.py
from cache/wheels, as local mode builds ./env; no network. Assets are the notebook tier's
generated stand-ins at the real places, at quick-mode sizes. Everything runs in a temporary copy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "local"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "notebooks"))
import fake_assets  # noqa: E402
import workshop_env  # noqa: E402
from fake_weights import cached_weights  # noqa: E402
from harness import (  # noqa: E402
    NOTEBOOKS, NotebookFailed, asset_file, assets_mentioned, execute, inject_parameters, kernel_environment,
    write_kernelspec,
)

LOCK = REPO_ROOT / "requirements" / "workshop.lock"
WHEELS = REPO_ROOT / "cache" / "wheels"
DEFAULT_ENV = REPO_ROOT / "cache" / "bench" / "user-memory-env"
ALL_NOTEBOOKS = (
    "00-framework-basics.ipynb", "01-mnist-mlp.ipynb", "02-mnist-cnn.ipynb", "03-imagenet-classification.ipynb",
    "04-commerce-transfer-learning.ipynb", "05-art-style-transfer.ipynb", "06-rnn-shakespeare.ipynb",
    "07-rl-bubble-breaker.ipynb", "08-X-numerical-library-check.ipynb", "08-Z-gpu-chooser.ipynb",
)
# The notebook tier's quick-mode parameters and asset sizes (tests/notebooks), so the numbers are
# those of the runs the tests make. 08-Z gets an address nothing answers: it uses its snapshot.
PARAMS = {
    "05-art-style-transfer.ipynb": {"image_size": [48, 64]},
    "06-rnn-shakespeare.ipynb": {"temperatures": [0.2, 1.0, 1.5]},
    "08-Z-gpu-chooser.ipynb": {"spec_url": "http://127.0.0.1:9/wiki/gpus"},
}
EXTRA_ASSETS = {"03-imagenet-classification.ipynb": {"imagenet_class_index.json"}}
# Pretrained weights the notebooks load through helpers: the tier's cached random weights in the real format.
WEIGHTS = {
    "03-imagenet-classification.ipynb": ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                                         "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
    "04-commerce-transfer-learning.ipynb": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",),
    "05-art-style-transfer.ipynb": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
}
FAKE_SIZES = {"mnist.npz": 3000, "shakespeare.txt": 60_000}


def _peak_memory_class() -> type:
    """bench/notebooks.py's sampler (process tree RSS and the kernel's VmHWM), loaded by path."""
    spec = importlib.util.spec_from_file_location("bench_notebooks", REPO_ROOT / "bench" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.PeakMemory


def ensure_env(env: Path, python: str) -> Path:
    """The workshop environment at env, from cache/wheels only; reused when its stamp matches."""
    version = workshop_env.python_version(python)
    if version is None:
        raise SystemExit(f"{python} is not a working Python; give --python")
    wanted = workshop_env.stamp(workshop_env.sha256_of(LOCK), version, purpose="bench-user-memory")
    if workshop_env.is_current(env, wanted):
        print(f"environment: {env} (current)", flush=True)
        return workshop_env.env_python(env)
    uv = shutil.which("uv") or (str(Path(sys.executable).parent / "uv") if (Path(sys.executable).parent / "uv").exists() else None)
    env.parent.mkdir(parents=True, exist_ok=True)
    print(f"environment: building {env} from {WHEELS} with Python {version} (no network) ...", flush=True)
    start = time.perf_counter()
    workshop_env.make_venv(env, python, uv, offline=True)
    workshop_env.install_lock(env, LOCK, WHEELS, uv, env.parent / "user-memory-env-setup.log")
    workshop_env.write_stamp(env, wanted)
    print(f"environment: built in {time.perf_counter() - start:.0f} s", flush=True)
    return workshop_env.env_python(env)


def default_python() -> str:
    """The first of python3.13, 3.12, 3.11 that runs (a version manager's shim may not), else this one."""
    for name in ("python3.13", "python3.12", "python3.11"):
        found = shutil.which(name)
        if found and workshop_env.minor(workshop_env.python_version(found)) == name.removeprefix("python"):
            return found
    return sys.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def idle_server_rss(python: Path, root: Path, env: dict[str, str]) -> int:
    """RSS of a JupyterLab server that has started and answered once (what a pod holds besides kernels)."""
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [str(python), "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # the bench may run as root (a build machine)
        env={**os.environ, **env, "JUPYTER_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # a server that exits at once (a bad flag, a busy port) is reported, not waited for
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/lab", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        time.sleep(2)
                        return psutil.Process(server.pid).memory_info().rss
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the JupyterLab server did not answer (exit status {server.poll()})")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook files (default: all ten)")
    parser.add_argument("--env", type=Path, default=DEFAULT_ENV, help=f"default: {DEFAULT_ENV.relative_to(REPO_ROOT)}")
    parser.add_argument("--python", default=None,
                        help="the Python the environment is made with (3.11-3.13; default: the first that runs)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)

    python = ensure_env(args.env.resolve(), args.python or default_python())
    names = args.names or [n for n in ALL_NOTEBOOKS if (NOTEBOOKS / n).is_file()]
    PeakMemory = _peak_memory_class()
    workdir = Path(tempfile.mkdtemp(prefix="bench-user-memory-"))
    try:
        notebooks_dir = workdir / "notebooks"
        shutil.copytree(NOTEBOOKS, notebooks_dir,
                        ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))
        keras_home = workdir / "keras"
        keras_home.mkdir()
        kernel_env = kernel_environment(workdir, keras_home)
        kernel_dirs = write_kernelspec(workdir / "kernels", python, kernel_env)
        cpus = len(os.sched_getaffinity(0))
        memory_gb = psutil.virtual_memory().total / 2**30
        print(f"python: {python}; {cpus} CPUs, {memory_gb:.1f} GB; quick mode; work dir: {workdir}", flush=True)

        server = idle_server_rss(python, notebooks_dir, kernel_env)
        print(f"idle JupyterLab server: {server / 2**20:.0f} MB", flush=True)
        made: set[str] = set()
        rows: list[tuple[str, int, float, str]] = []
        for name in names:
            nb = nbformat.read(notebooks_dir / name, as_version=4)
            for asset in sorted((assets_mentioned(nb) | EXTRA_ASSETS.get(name, set())) - made):
                fake_assets.generate_asset(asset, asset_file(asset, keras_home, notebooks_dir), python,
                                           size=FAKE_SIZES.get(asset))
                made.add(asset)
            for weights in WEIGHTS.get(name, ()):
                target = asset_file(weights, keras_home, notebooks_dir)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(cached_weights(weights, python), target)
            inject_parameters(nb, {"quick": True, **PARAMS.get(name, {})})
            print(f"running {name} ...", flush=True)
            memory = PeakMemory()
            start = time.perf_counter()
            status = "ok"
            try:
                execute(nb, notebooks_dir, kernel_dirs, timeout=args.timeout, on_kernel_start=memory.start, name=name)
            except NotebookFailed as error:
                status = "FAILED"
                print(str(error)[-1500:], file=sys.stderr)
            seconds = time.perf_counter() - start
            peak = memory.stop()
            rows.append((name, peak, seconds, status))
            print(f"  {peak / 2**20:7.0f} MB  {seconds:6.1f} s  {status}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'notebook':40} {'kernel peak MB':>14} {'wall s':>7}  status")
    for name, peak, seconds, status in rows:
        print(f"{name:40} {peak / 2**20:14.0f} {seconds:7.1f}  {status}")
    ok = [row for row in rows if row[3] == "ok"]
    if ok:
        top = max(ok, key=lambda row: row[1])
        kernel_mb, server_mb = round(top[1] / 2**20), round(server / 2**20)
        print(f"largest kernel peak: {kernel_mb} MB ({top[0]}); with the idle server ({server_mb} MB): "
              f"{kernel_mb + server_mb} MB per busy participant")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
