#!/usr/bin/env python3
"""Export and thumb-drive numbers from one run:

- OVA size vs the data in the guest disk vs the raw (virtual) disk size; export time
- write throughput to 1 and to 3 loop-backed drives at once (`appliance thumbdrive write`,
  copy + fsync + re-read verification) vs a plain `cp -r` + sync of the same image

    sudo .venv/bin/python bench/export.py [--disk cache/vm/<name>-<version>/disk.qcow2]
                                          [--filesystem exfat|fat32] [--used-mb 400]

Without --disk a disk is made: ext4 holding --used-mb of data, half random (incompressible,
like wheels and weights) and half text-like, in a 4 GB virtual disk whose free space is
zero, as after finalize's trim or zero fill.
The drive part needs root (losetup, mount); it is skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from appliance import ova  # noqa: E402
from appliance.config import load_config  # noqa: E402
from appliance.thumbdrive import layout, targets, write  # noqa: E402
from shiphelpers import loop_devices_usable, loop_drives, make_checkout  # noqa: E402


def make_disk(directory: Path, used_mb: int) -> Path:
    content = directory / "content"
    content.mkdir()
    half = used_mb // 2
    with (content / "random.bin").open("wb") as handle:
        for _ in range(half):
            handle.write(os.urandom(1024 * 1024))
    words = b" ".join(b"tensor%d gradient layer epoch %d" % (i, i * 7) for i in range(40000)) + b"\n"
    with (content / "text.txt").open("wb") as handle:
        written = 0
        while written < (used_mb - half) * 1024 * 1024:
            handle.write(words)
            written += len(words)
    raw = directory / "disk.raw"
    subprocess.run(["truncate", "-s", "4G", str(raw)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(raw)], check=True)
    shutil.rmtree(content)
    disk = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    return disk


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def bench_export(disk: Path, work: Path) -> Path:
    config = load_config(ROOT / "workshop.yml")
    settings = ova.settings_from_workshop(config.workshop)
    result = ova.export_qemu(settings, disk, work / "dist", lambda message: None)
    info = result.disk
    print("== export (qemu-img streamOptimized VMDK + OVF + manifest, ustar tar)")
    print(f"raw (virtual) disk size     {mb(info.virtual_size)}")
    print(f"disk image file on host     {mb(info.file_size)}")
    print(f"data in the guest disk      {mb(info.data_bytes)}")
    print(f"OVA                         {mb(result.ova_size)}")
    print(f"OVA / guest data            {result.ova_size / info.data_bytes:.3f}")
    print(f"OVA / raw disk              {result.ova_size / info.virtual_size:.4f}")
    print(f"export time                 {result.seconds:.1f} s "
          f"({info.data_bytes / result.seconds / 1e6:.1f} MB/s of guest data)")
    return result.ova


def _timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def bench_drives(ova_path: Path, work: Path, filesystem: str) -> None:
    reason = loop_devices_usable()
    if reason:
        print(f"== drives: skipped ({reason})")
        return
    checkout = make_checkout(work / "checkout", wheel_bytes=20_000_000)
    config = load_config(checkout / "workshop.yml")
    plan = layout.plan_image(config, ova_path)
    image = layout.build_image(plan, work / "image", lambda message: None)
    size = sum(p.stat().st_size for p in image.rglob("*") if p.is_file())
    drive_mb = max(256, int(size * 1.5 / 1e6) + 64)
    print(f"== drives ({filesystem} on loop devices, {drive_mb} MB each; image {mb(size)}, "
          f"{sum(1 for p in image.rglob('*') if p.is_file())} files)")
    with loop_drives(work, [(filesystem, drive_mb)] * 5) as drives:
        def cp_one() -> None:
            for item in image.iterdir():
                subprocess.run(["cp", "-r", str(item), str(drives[0].mount_point)], check=True)
            subprocess.run(["sync"], check=True)
        cp_seconds = _timed(cp_one)

        def appliance_write(indices: list[int]) -> None:
            checked = [targets.check_target(drives[i].mount_point) for i in indices]
            states = write.write_drives(image, checked, say=lambda line: None)
            bad = [s for s in states if s.status != "ok"]
            if bad:
                raise SystemExit(f"write failed: {bad[0].reason}")
        one_seconds = _timed(lambda: appliance_write([1]))
        three_seconds = _timed(lambda: appliance_write([2, 3, 4]))
        # drive 0 holds cp's copy: nothing on a drive is trusted, so it is re-read, not rewritten
        for drive in drives[:2]:
            drive.drop_caches()
        rerun_seconds = _timed(lambda: appliance_write([0, 1]))
    cp_rate = size / cp_seconds
    one_rate = size / one_seconds
    three_rate = 3 * size / three_seconds
    print(f"cp -r + sync, 1 drive       {cp_seconds:6.2f} s  {cp_rate / 1e6:7.1f} MB/s  (copy only)")
    print(f"appliance write, 1 drive    {one_seconds:6.2f} s  {one_rate / 1e6:7.1f} MB/s  "
          f"= {one_rate / cp_rate:.2f} x cp (copy + fsync + verified re-read)")
    print(f"appliance write, 3 drives   {three_seconds:6.2f} s  {three_rate / 1e6:7.1f} MB/s total  "
          f"= {three_rate / cp_rate:.2f} x cp, {three_seconds / cp_seconds:.2f} x the time of one cp")
    print(f"re-run on 2 full drives     {rerun_seconds:6.2f} s  {2 * size / rerun_seconds / 1e6:7.1f} MB/s total  "
          "(every file re-read from the device, none copied)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk", type=Path, help="a built disk (default: a made one)")
    parser.add_argument("--used-mb", type=int, default=400, help="data in the made disk (default 400)")
    parser.add_argument("--filesystem", choices=("exfat", "fat32"), default="exfat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        disk = args.disk or make_disk(work, args.used_mb)
        ova_path = bench_export(disk, work)
        bench_drives(ova_path, work, args.filesystem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
