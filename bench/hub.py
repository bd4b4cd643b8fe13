"""The class hub under load: for 5, 10 and 20 participants at once, login and spawn time (median,
95th percentile), memory per idle and per busy participant server, and the hub's own memory,
side by side in one run; then how many participants the default VM size and a 64 GB server hold.

    sudo .venv/bin/python bench/hub.py [--waves 5 10 20] [--accel tcg|kvm]

It builds the repository's workshop with the qemu provider (generated assets, as the VM tier),
boots an overlay of it as the hub server, deploys `appliance deploy --mode hub` with a roster of
the largest wave, and before each wave stops every server. "Idle" is a server after one small
cell; "busy" one that has run notebook 00 in quick mode (TensorFlow loaded). Under qemu's
software emulation the times are about 6x a real server's; the memory is the guest's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from appliance.config import load_config  # noqa: E402
from appliance.vm import qemu, qemu_build  # noqa: E402
from vm.hubclient import Hub, execute, log_in_and_start, percentile, start_hub, wait  # noqa: E402
from vm.workshop_maker import make_workshop  # noqa: E402

SERVER_MEMORY_MB = 1024  # each participant's limit during the bench
NOTEBOOK = "00-framework-basics.ipynb"
OS_RESERVE_MB = 1024  # what a server keeps for its kernel, page cache and the hub's own peaks


def stop_all(hub: Hub, admin: str) -> None:
    for user in hub.passwords:
        hub.api(admin, "DELETE", f"/hub/api/users/{user}/server")
    wait(lambda: not any(u["servers"] for u in hub.api(admin, "GET", "/hub/api/users").json()),
         "the servers did not stop")


def unit_mb(hub: Hub, unit: str) -> float:
    value = hub.machine.ssh("systemctl", "show", unit, "-p", "MemoryCurrent", "--value").stdout.strip()
    return int(value) / 2**20 if value.isdigit() else float("nan")


def run_notebook(hub: Hub, user: str) -> None:
    path = f"notebooks/{NOTEBOOK}"
    notebook = hub.api(user, "GET", f"/user/{user}/api/contents/{path}").json()["content"]
    kernel = hub.api(user, "POST", f"/user/{user}/api/kernels", json={"name": "workshop", "path": path}, timeout=300)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            execute(hub, user, kernel.json()["id"], "".join(cell["source"]).replace("quick = False", "quick = True"))


def wave(hub: Hub, size: int) -> dict[str, float]:
    users = list(hub.passwords)[:size]
    with ThreadPoolExecutor(max_workers=size) as pool:
        seconds = list(pool.map(lambda user: log_in_and_start(hub, user), users))
    idle = [unit_mb(hub, f"jupyter-{user}-singleuser") for user in users]
    run_notebook(hub, users[-1])
    busy = unit_mb(hub, f"jupyter-{users[-1]}-singleuser")
    hub_mb = unit_mb(hub, "jupyterhub") + unit_mb(hub, "jupyterhub-proxy")
    logins = [s["login"] for s in seconds]
    spawns = [s["spawn"] for s in seconds]
    return {"login median": statistics.median(logins), "login p95": percentile(logins, 0.95),
            "spawn median": statistics.median(spawns), "spawn p95": percentile(spawns, 0.95),
            "idle server MB": statistics.median(idle), "busy server MB": busy, "hub MB": hub_mb}


def bench(args: argparse.Namespace, tmp: Path) -> None:
    python = REPO_ROOT / "env" / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(REPO_ROOT / "local" / "setup.bash")], check=True, stdout=sys.stderr)
    root = tmp / "workshop"
    root.mkdir()
    config_path, _, _ = make_workshop(root, REPO_ROOT, python, name="benchhub")
    config = load_config(config_path)
    started = time.monotonic()
    qemu_build.build(config, log=lambda line: None)
    print(f"workshop built (qemu provider): {time.monotonic() - started:.0f} s", flush=True)
    largest = max(args.waves)
    scratch = tmp / "hub"
    scratch.mkdir()
    with start_hub(root, config_path, qemu.built_disk_path(config), scratch, users=largest,
                   memory_mb=SERVER_MEMORY_MB, idle_minutes=120, vm_memory_mb=args.vm_memory_mb) as hub:
        print(f"hub deployed for {largest} participants: {hub.deploy_seconds:.0f} s", flush=True)
        admin = next(iter(hub.passwords))
        results = {}
        for size in sorted(args.waves):
            stop_all(hub, admin)
            results[size] = wave(hub, size)
            print(f"wave of {size} done", flush=True)
    rows = list(next(iter(results.values())))
    print(f"\n{'participants at once':<22}" + "".join(f"{size:>10}" for size in results))
    for row in rows:
        unit = "s" if "MB" not in row else ""
        print(f"{row + (' (s)' if unit else ''):<22}" + "".join(f"{results[size][row]:>10.1f}" for size in results))
    busiest = results[largest]
    for label, total_mb in (("the default VM (4096 MB)", 4096), ("a 64 GB server", 64 * 1024)):
        # a class works at once: every server busy is the planning case; idle is the floor
        free = total_mb - OS_RESERVE_MB - busiest["hub MB"]
        print(f"{label}: {int(free // busiest['busy server MB'])} participants all busy, "
              f"{int(free // busiest['idle server MB'])} idle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--vm-memory-mb", type=int, default=8192, help="the hub VM's memory (default 8192)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    args = parser.parse_args()
    if min(args.waves) < 1 or max(args.waves) > 60:
        parser.error("--waves: between 1 and 60 participants")
    os.environ["APPLIANCE_QEMU_ACCEL"] = args.accel
    with tempfile.TemporaryDirectory(prefix="bench-hub-", dir="/var/tmp") as tmp:
        bench(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
