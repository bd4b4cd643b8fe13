"""Copy the image folder to many mounted drives at once, one thread per drive.

Each file is written under a temporary name, fsynced and renamed; then every written file is
read back with its cached pages dropped (so the bytes come from the drive) and checked
against SHA256SUMS. A drive records what it verified in a stamp file, so a re-run skips
those files. A drive that fails (full, I/O error, unmounted) fails alone.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.thumbdrive import checksums
from appliance.thumbdrive.layout import STAMP_NAME
from appliance.thumbdrive.targets import Target

CHUNK = 4 * 1024 * 1024
Print = Callable[[str], None]


class DriveFailed(Exception):
    """Ends the work on one drive; the message is the reason shown in the table."""


@dataclass
class DriveState:
    target: Target
    phase: str = "waiting"
    done: int = 0
    total: int = 0
    copied: int = 0
    skipped: int = 0
    verified: int = 0
    status: str = ""
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.target.path} ({self.target.disk})"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "drive full (no space left on device)"
    if exc.errno in (errno.EIO, errno.ENODEV, errno.ENXIO):
        return f"I/O error, drive removed or failing ({exc.strerror})"
    if exc.errno in (errno.ENOTCONN, errno.ESTALE):
        return f"drive disappeared ({exc.strerror})"
    if exc.errno == errno.EROFS:
        return "drive is read-only"
    return f"{exc.strerror or exc} ({exc.filename or ''})".replace(" ()", "")


def _still_mounted(state: DriveState) -> None:
    try:
        if os.stat(state.target.path).st_dev != state.target.st_dev:
            raise DriveFailed("drive is no longer mounted")
    except FileNotFoundError:
        raise DriveFailed("drive disappeared (mount point gone)") from None


def _load_stamp(target: Path) -> dict[str, dict]:
    try:
        data = json.loads((target / STAMP_NAME).read_text(encoding="utf-8"))
        return dict(data.get("files", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _save_stamp(target: Path, files: dict[str, dict]) -> None:
    path = target / STAMP_NAME
    temp = target / (STAMP_NAME + ".partial")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _stamped(stamp: dict[str, dict], rel: str, digest: str, drive_file: Path) -> bool:
    entry = stamp.get(rel)
    if not entry or entry.get("sha256") != digest:
        return False
    try:
        st = drive_file.stat()
    except OSError:
        return False
    return st.st_size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (vfat on old kernels) refuse fsync on directories
    finally:
        os.close(fd)


def _copy_file(source: Path, dest: Path, state: DriveState) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    # An old copy here is unverified anyway; removing it first means a drive needs room for
    # the image, not for the image plus the old copy of its biggest file.
    for stale in (dest, partial):
        if stale.is_file():
            stale.unlink()
    with source.open("rb") as reader, partial.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            state.done += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(partial, dest)
    _fsync_dir(dest.parent)


def write_drive(image: Path, sums: dict[str, str], state: DriveState, verify_only: bool = False,
                reverify: bool = False) -> None:
    """Fill state with the outcome; never raises for a drive problem."""
    target = state.target.path
    try:
        _still_mounted(state)
        stamp = {} if reverify else _load_stamp(target)
        sums_digest = checksums.sha256_file(image / checksums.SUMS_NAME)
        wanted = dict(sums)
        wanted[checksums.SUMS_NAME] = sums_digest
        files = sorted(wanted, key=lambda rel: (rel == checksums.SUMS_NAME, rel))

        if verify_only:
            todo_copy: list[str] = []
            todo_verify = files
        else:
            todo_copy = [rel for rel in files if not _stamped(stamp, rel, wanted[rel], target / rel)]
            todo_verify = list(todo_copy)
        state.skipped = len(files) - len(todo_verify)

        sizes = {rel: (image / rel).stat().st_size for rel in files}
        if todo_copy:
            existing = sum((target / rel).stat().st_size for rel in todo_copy if (target / rel).is_file())
            needed = sum(sizes[rel] for rel in todo_copy) - existing
            fs = os.statvfs(target)
            free = fs.f_bavail * fs.f_frsize
            # FUSE file systems such as fusefat report no sizes (f_blocks 0): ENOSPC will tell.
            if fs.f_blocks and needed > free:
                raise DriveFailed(f"not enough space: needs {needed / 1e9:.2f} GB more, {free / 1e9:.2f} GB free")

        state.phase, state.done, state.total = "copying", 0, sum(sizes[rel] for rel in todo_copy)
        for rel in todo_copy:
            _still_mounted(state)
            stamp.pop(rel, None)
            try:
                _copy_file(image / rel, target / rel, state)
            except OSError as exc:
                raise DriveFailed(f"writing {rel}: {_reason(exc)}") from None
            state.copied += 1

        state.phase, state.done, state.total = "verifying", 0, sum(sizes[rel] for rel in todo_verify)
        bad: list[str] = []
        for rel in todo_verify:
            _still_mounted(state)
            drive_file = target / rel
            if not drive_file.is_file():
                bad.append(f"{rel} missing")
                stamp.pop(rel, None)
                continue
            got = checksums.sha256_file(drive_file, drop_cache=True)
            state.done += sizes[rel]
            if got != wanted[rel]:
                bad.append(f"{rel} checksum mismatch")
                stamp.pop(rel, None)
                continue
            st = drive_file.stat()
            stamp[rel] = {"sha256": got, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            state.verified += 1
        _save_stamp(target, stamp)
        if bad:
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DriveFailed(f"verification failed: {bad[0]}{more}")
        state.status, state.phase = "ok", "done"
    except DriveFailed as exc:
        state.status, state.phase, state.reason = "failed", "failed", str(exc)
    except OSError as exc:
        state.status, state.phase, state.reason = "failed", "failed", _reason(exc)
    finally:
        state.seconds = time.monotonic() - state.started


def progress_line(state: DriveState) -> str:
    elapsed = max(time.monotonic() - state.started, 1e-6)
    if state.phase in ("copying", "verifying") and state.total:
        percent = 100 * state.done // state.total
        return (f"{state.label}: {state.phase} {percent:3d}% ({state.done / 1e9:.2f}/{state.total / 1e9:.2f} GB, "
                f"{state.done / elapsed / 1e6:.1f} MB/s)")
    if state.phase == "failed":
        return f"{state.label}: failed: {state.reason}"
    return f"{state.label}: {state.phase}"


def write_drives(image: Path, targets: list[Target], verify_only: bool = False, reverify: bool = False,
                 say: Print = print, interval: float = 2.0) -> list[DriveState]:
    sums = checksums.read_sums(image)
    states = [DriveState(target) for target in targets]
    threads = [threading.Thread(target=write_drive, args=(image, sums, state, verify_only, reverify),
                                name=f"drive-{state.target.disk}", daemon=True) for state in states]
    for thread in threads:
        thread.start()
    for state in states:
        say(f"{state.label}: {state.target.kind} drive, starting")
    reported: set[int] = set()
    last_lines: dict[int, str] = {}
    while len(reported) < len(states):
        deadline = time.monotonic() + interval
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.01))
        for index, (state, thread) in enumerate(zip(states, threads)):
            if index in reported:
                continue
            if not thread.is_alive():
                reported.add(index)
                if state.status == "ok":
                    say(f"{state.label}: done: {state.copied} copied, {state.skipped} already verified, "
                        f"{state.verified} verified in {state.seconds:.0f} s")
                else:
                    say(f"{state.label}: failed: {state.reason}")
                continue
            line = progress_line(state)
            if last_lines.get(index) != line:
                say(line)
                last_lines[index] = line
    return states


def format_table(states: list[DriveState]) -> str:
    rows = [("drive", "result", "copied", "skipped", "verified", "time", "reason")]
    for state in states:
        rows.append((state.label, state.status or "failed", str(state.copied), str(state.skipped),
                     str(state.verified), f"{state.seconds:.0f}s", state.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)
