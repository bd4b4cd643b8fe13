"""Run each workshop notebook in full mode (its lesson defaults) and print the wall time and
the kernel's peak memory side by side. Targets for a 2-vCPU, 2 GB VM: < 5 min, < 1.5 GB each.

    .venv/bin/python bench/notebooks.py [--python ENV/bin/python] [--fake-missing] [NAME ...]

Assets come from their real places ($KERAS_HOME or ~/.keras, notebooks/data). With
--fake-missing, any asset that is not there is generated full-size in the real format
(tests/notebooks/fake_assets.py) and the report says which numbers ran on fake data.
The notebooks run in a temporary copy, so no outputs land in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "notebooks"))
import fake_assets  # noqa: E402
from harness import (  # noqa: E402
    NOTEBOOKS, NotebookFailed, asset_file, assets_mentioned, execute, kernel_environment, write_kernelspec,
)

ALL_NOTEBOOKS = (
    "00-framework-basics.ipynb", "01-mnist-mlp.ipynb", "02-mnist-cnn.ipynb", "03-imagenet-classification.ipynb",
    "04-commerce-transfer-learning.ipynb", "05-art-style-transfer.ipynb", "06-rnn-shakespeare.ipynb",
    "07-rl-bubble-breaker.ipynb", "08-X-numerical-library-check.ipynb", "08-Z-gpu-chooser.ipynb",
)
# Full-size stand-ins: the real MNIST has 60,000 training images, the real text ~1.1 M characters.
FULL_FAKE_SIZES = {"mnist.npz": 60_000, "shakespeare.txt": 1_115_000}


class PeakMemory:
    """Polls the kernel's process tree (the kernel plus any subprocess it starts) for RSS."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, pid: int) -> None:
        self._pid = pid
        self._thread.start()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self._pid)
            total = root.memory_info().rss + sum(child.memory_info().rss for child in root.children(recursive=True))
            # VmHWM is the kernel's own high-water mark: catches spikes between two polls
            hwm = _vm_hwm(self._pid)
            self.peak = max(self.peak, total, hwm)
        except psutil.Error:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> int:
        self._sample()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.peak


def _vm_hwm(pid: int | None) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def prepare_assets(names: set[str], keras_home: Path, workdir: Path, python: Path, fake_missing: bool) -> list[str]:
    """Link real assets into the run's KERAS_HOME / notebooks copy; fake the missing ones."""
    faked = []
    for name in sorted(names):
        target = asset_file(name, workdir / "keras", workdir / "notebooks")
        real = asset_file(name, keras_home, NOTEBOOKS)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if real.is_file():
            target.symlink_to(real)
        elif fake_missing:
            print(f"  {name}: not at {real}; generating a full-size fake", flush=True)
            fake_assets.generate_asset(name, target, python, size=FULL_FAKE_SIZES.get(name))
            faked.append(name)
        else:
            raise SystemExit(f"asset {name} is missing at {real}; run `appliance fetch` or pass --fake-missing")
    return faked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook files (default: all present of the ten)")
    parser.add_argument("--python", type=Path,
                        default=Path(os.environ.get("WORKSHOP_PYTHON") or REPO_ROOT / "env" / "bin" / "python"))
    parser.add_argument("--keras-home", type=Path,
                        default=Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras"))
    parser.add_argument("--fake-missing", action="store_true", help="generate assets that are not present")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    names = args.names or [n for n in ALL_NOTEBOOKS if (NOTEBOOKS / n).is_file()]
    workdir = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
    shutil.copytree(NOTEBOOKS, workdir / "notebooks",
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))
    (workdir / "keras").mkdir()
    kernel_dirs = write_kernelspec(workdir / "kernels", args.python, kernel_environment(workdir, workdir / "keras"))
    print(f"python: {args.python}; CPUs: {len(os.sched_getaffinity(0))}; work dir: {workdir}", flush=True)

    rows = []
    all_faked: set[str] = set()
    for name in names:
        nb = nbformat.read(workdir / "notebooks" / name, as_version=4)
        needed = assets_mentioned(nb)
        all_faked.update(prepare_assets(needed, args.keras_home, workdir, args.python, args.fake_missing))
        faked = sorted(needed & all_faked)
        print(f"running {name} ...", flush=True)
        memory = PeakMemory()
        start = time.perf_counter()
        status = "ok"
        try:
            execute(nb, workdir / "notebooks", kernel_dirs, timeout=args.timeout, on_kernel_start=memory.start, name=name)
        except NotebookFailed as error:
            status = "FAILED"
            print(str(error)[-2000:], file=sys.stderr)
        seconds = time.perf_counter() - start
        peak = memory.stop()
        results_file = workdir / "notebooks" / "results" / f"{Path(name).stem}.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        accuracy = results.get("test_accuracy")
        rows.append((name, seconds, peak, status, accuracy, faked))
        nbformat.write(nb, workdir / f"executed-{name}")
        print(f"  {seconds:7.1f} s  {peak / 2**20:7.0f} MB  {status}", flush=True)

    print()
    print(f"{'notebook':40} {'wall s':>8} {'peak MB':>8}  {'status':6} {'test acc':>8}  fake assets")
    for name, seconds, peak, status, accuracy, faked in rows:
        acc = f"{accuracy:.4f}" if isinstance(accuracy, float) else "-"
        flags = ("  !>5min" if seconds > 300 else "") + ("  !>1.5GB" if peak > 1.5 * 2**30 else "")
        print(f"{name:40} {seconds:8.1f} {peak / 2**20:8.0f}  {status:6} {acc:>8}  {', '.join(faked) or '-'}{flags}")
    return 0 if all(row[3] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
