"""Time and peak memory of `appliance config check` on hostile YAML (each in its own process).

The alias bomb took 44 s and 3 GB and a 50 MB list 153 s and 4 GB before anchors, aliases and
files over 1 MiB were refused; this prints what they cost now, next to the largest file that
is still read (a list just under 1 MiB) and the repository's own workshop.yml.
Run: .venv/bin/python bench/bad_yaml.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD = 'name: x\nversion: "1"\n'
BOMB = "\n".join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]'] + [f'l{n}: &l{n} [{", ".join([f"*l{n - 1}"] * 9)}]' for n in range(1, 9)]
) + "\n"


def run(config: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit status of one `config check`."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "appliance", "config", "check", str(config)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - started, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "assets.yml").write_text((ROOT / "assets.yml").read_text())
        (folder / "notebooks").mkdir()
        cases = {
            "alias bomb (600 bytes)": HEAD + BOMB,
            "50 MB list": HEAD + "notebooks:\n" + "  - a.ipynb\n" * 4_500_000,
            "1 MiB list (parsed; exit 2: key)": HEAD + "description: " + "x" * 40 + "\nextra:\n" + "  - a\n" * 170_000,
        }
        print(f"{'case':34} {'seconds':>8} {'peak MB':>8} {'exit':>5}")
        for label, text in cases.items():
            path = folder / "w.yml"
            path.write_text(text)
            seconds, peak, code = run(path)
            print(f"{label:34} {seconds:8.2f} {peak:8.0f} {code:5}")
        seconds, peak, code = run(ROOT / "workshop.yml")
        print(f"{'repository workshop.yml':34} {seconds:8.2f} {peak:8.0f} {code:5}")


if __name__ == "__main__":
    main()
