"""File access below a drive's mount point that never follows a symbolic link.

The writer runs as root; a link on a drive (`local-mode -> /etc`) must not turn a copy into
a write elsewhere. Every path component is opened relative to its parent's descriptor with
O_NOFOLLOW, so a link anywhere on the way ends in ELOOP/ENOTDIR instead.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkOnDrive(OSError):
    """A symbolic link (or other non-directory) where the image needs a folder or file."""


def _parts(rel: str) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or any(part in ("", ".", "..") or "/" in part for part in parts):
        raise ValueError(f"{rel!r} is not a relative path inside the image")
    return parts


@contextmanager
def parent_dir(root: Path, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
    """(descriptor of the folder holding rel, rel's last name); folders made when create."""
    *folders, name = _parts(rel)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            if create:
                try:
                    os.mkdir(folder, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LinkOnDrive(exc.errno, "a symbolic link or file stands where a folder belongs",
                                      str(root / rel)) from None
                raise
            os.close(fd)
            fd = child
        yield fd, name
    finally:
        os.close(fd)


def lstat(root: Path, rel: str) -> os.stat_result | None:
    """The entry itself (a link is not followed), or None when it or a folder is missing."""
    try:
        with parent_dir(root, rel) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_regular(root: Path, rel: str) -> bool:
    st = lstat(root, rel)
    return st is not None and stat.S_ISREG(st.st_mode)


def open_read(root: Path, rel: str):
    with parent_dir(root, rel) as (fd, name):
        try:
            handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkOnDrive(exc.errno, "a symbolic link stands where a file belongs", str(root / rel)) from None
            raise
    return os.fdopen(handle, "rb")


def remove(root: Path, rel: str) -> None:
    """Unlink rel (a file or a link itself, never what a link points to), if present."""
    try:
        with parent_dir(root, rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise LinkOnDrive(errno.EISDIR, "a folder stands where a file belongs", str(root / rel))
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def write_atomically(root: Path, rel: str, chunks: Iterator[bytes]) -> None:
    """rel.partial created fresh (O_EXCL, no link followed), filled, fsynced, renamed over rel."""
    with parent_dir(root, rel, create=True) as (fd, name):
        partial = name + ".partial"
        for stale in (name, partial):
            try:
                st = os.stat(stale, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                raise LinkOnDrive(errno.EISDIR, "a folder stands where a file belongs", str(root / rel))
            # An old copy here is unverified anyway; removing it first means a drive needs room
            # for the image, not for the image plus the old copy of its biggest file.
            os.unlink(stale, dir_fd=fd)
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                      dir_fd=fd)
        with os.fdopen(out, "wb") as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        os.rename(partial, name, src_dir_fd=fd, dst_dir_fd=fd)
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems (vfat on old kernels) refuse fsync on directories
