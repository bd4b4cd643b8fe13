"""SHA256SUMS in the form `sha256sum -c` reads: `<hex>  <relative/posix/path>`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

SUMS_NAME = "SHA256SUMS"
CHUNK = 4 * 1024 * 1024


def sha256_handle(handle: BinaryIO, drop_cache: bool = False) -> str:
    """Hash an open file; with drop_cache the cached pages are dropped first, so the bytes
    come from the device and not from what was just written."""
    digest = hashlib.sha256()
    if drop_cache:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path, drop_cache: bool = False) -> str:
    with path.open("rb") as handle:
        return sha256_handle(handle, drop_cache)


def format_sums(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))


def parse_sums(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            digest, sep, name = line.partition(" *")
        if not sep or len(digest) != 64 or ".." in Path(name).parts or name.startswith("/"):
            raise ValueError(f"line {number} is not `<sha256>  <file>`")
        entries[name] = digest.lower()
    return entries


def read_sums(image: Path) -> dict[str, str]:
    return parse_sums((image / SUMS_NAME).read_text(encoding="utf-8"))
