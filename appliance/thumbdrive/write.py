"""Copy the image folder to many mounted drives at once, one thread per drive.

Each file is written under a temporary name, fsynced and renamed; then every written file is
read back with its cached pages dropped (so the bytes come from the drive) and checked
against SHA256SUMS. Nothing on a drive is trusted: a re-run re-hashes the files already there
(reading is cheaper than writing) and copies only those that differ. No symbolic link on a
drive is followed (nofollow). A drive that fails (full, I/O error, unmounted) fails alone.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.thumbdrive import checksums, nofollow
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
    if isinstance(exc, nofollow.LinkOnDrive):
        return f"{exc.filename}: {exc.strerror}; remove it from the drive (nothing was written through it)"
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


def _drive_digest(target: Path, rel: str) -> str:
    with nofollow.open_read(target, rel) as handle:
        return checksums.sha256_handle(handle, drop_cache=True)


def _read_chunks(source: Path, state: DriveState):
    with source.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            state.done += len(chunk)
            yield chunk


def _already_there(target: Path, rel: str, size: int, digest: str, state: DriveState) -> bool:
    """The drive holds rel with the right bytes (re-read from the device, not remembered)."""
    st = nofollow.lstat(target, rel)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    same = _drive_digest(target, rel) == digest
    state.done += size
    return same


def write_drive(image: Path, sums: dict[str, str], state: DriveState, verify_only: bool = False) -> None:
    """Fill state with the outcome; never raises for a drive problem."""
    target = state.target.path
    try:
        _still_mounted(state)
        sums_digest = checksums.sha256_file(image / checksums.SUMS_NAME)
        wanted = dict(sums)
        wanted[checksums.SUMS_NAME] = sums_digest
        # SHA256SUMS last: a drive that holds it holds everything it lists.
        files = sorted(wanted, key=lambda rel: (rel == checksums.SUMS_NAME, rel))
        sizes = {rel: (image / rel).stat().st_size for rel in files}

        todo_copy: list[str] = []
        if not verify_only:
            state.phase, state.done, state.total = "checking", 0, sum(
                sizes[rel] for rel in files if (st := nofollow.lstat(target, rel)) and st.st_size == sizes[rel])
            for rel in files:
                _still_mounted(state)
                if _already_there(target, rel, sizes[rel], wanted[rel], state):
                    state.skipped += 1
                    state.verified += 1
                else:
                    todo_copy.append(rel)
        todo_verify = files if verify_only else list(todo_copy)

        if todo_copy:
            existing = sum(st.st_size for rel in todo_copy if (st := nofollow.lstat(target, rel)))
            needed = sum(sizes[rel] for rel in todo_copy) - existing
            fs = os.statvfs(target)
            free = fs.f_bavail * fs.f_frsize
            # FUSE file systems such as fusefat report no sizes (f_blocks 0): ENOSPC will tell.
            if fs.f_blocks and needed > free:
                raise DriveFailed(f"not enough space: needs {needed / 1e9:.2f} GB more, {free / 1e9:.2f} GB free")

        state.phase, state.done, state.total = "copying", 0, sum(sizes[rel] for rel in todo_copy)
        for rel in todo_copy:
            _still_mounted(state)
            try:
                nofollow.write_atomically(target, rel, _read_chunks(image / rel, state))
            except OSError as exc:
                raise DriveFailed(f"writing {rel}: {_reason(exc)}") from None
            state.copied += 1

        state.phase, state.done, state.total = "verifying", 0, sum(sizes[rel] for rel in todo_verify)
        bad: list[str] = []
        for rel in todo_verify:
            _still_mounted(state)
            if not nofollow.is_regular(target, rel):
                bad.append(f"{rel} missing")
                continue
            got = _drive_digest(target, rel)
            state.done += sizes[rel]
            if got != wanted[rel]:
                bad.append(f"{rel} checksum mismatch")
                continue
            state.verified += 1
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
    if state.phase in ("checking", "copying", "verifying") and state.total:
        percent = 100 * state.done // state.total
        return (f"{state.label}: {state.phase} {percent:3d}% ({state.done / 1e9:.2f}/{state.total / 1e9:.2f} GB, "
                f"{state.done / elapsed / 1e6:.1f} MB/s)")
    if state.phase == "failed":
        return f"{state.label}: failed: {state.reason}"
    return f"{state.label}: {state.phase}"


def write_drives(image: Path, targets: list[Target], verify_only: bool = False,
                 say: Print = print, interval: float = 2.0) -> list[DriveState]:
    sums = checksums.read_sums(image)
    states = [DriveState(target) for target in targets]
    threads = [threading.Thread(target=write_drive, args=(image, sums, state, verify_only),
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
                    say(f"{state.label}: done: {state.copied} copied, {state.skipped} already on the drive (re-read), "
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
