"""Put verified cached assets where the frameworks and notebooks look for them.

A manifest `place` of `keras/<x>` means `$KERAS_HOME/<x>`; `notebooks/<x>` means
`<notebooks dir>/<x>`. Files are hard-linked from the cache when it is on the same file
system (no second copy of 200 MB of weights), copied otherwise, always through a temporary
name in the destination directory so a half-copied file never appears under the real name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from appliance.assets import CACHED, MISSING, UNPINNED, VERIFIED, cached_file, check_cached, file_digest
from appliance.errors import ApplianceError
from appliance.manifest import Asset

LINKED = "linked"
COPIED = "copied"
IDENTICAL = "identical"  # already there with the same content
NOT_PLACED = "FAILED"


@dataclass(frozen=True)
class Placement:
    name: str
    dest: Path | None
    status: str
    note: str = ""


def default_keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def destination(asset: Asset, keras_home: Path, notebooks_dir: Path) -> Path:
    if asset.place is None:
        raise ApplianceError(f"{asset.name} has no `place` in the manifest; it is not placed anywhere")
    root, *rest = PurePosixPath(asset.place).parts
    base = {"keras": keras_home, "notebooks": notebooks_dir}[root]
    return base.joinpath(*rest)


def _same_content(source: Path, dest: Path, asset: Asset) -> bool:
    if not dest.is_file():
        return False
    if os.path.samefile(source, dest):
        return True
    if dest.stat().st_size != source.stat().st_size:
        return False
    if asset.hash is not None:
        return file_digest(dest, asset.algorithm or "sha256") == asset.digest
    return file_digest(dest, "sha256") == file_digest(source, "sha256")


def _link_or_copy(source: Path, dest: Path) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)
            how = LINKED
        except OSError:  # another file system, or one without hard links (FAT)
            shutil.copyfile(source, tmp)
            how = COPIED
        os.replace(tmp, dest)
        return how
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def place_assets(assets: Sequence[Asset], cache: Path, keras_home: Path, notebooks_dir: Path) -> list[Placement]:
    """Place every asset that has a `place`; verify each cached file first."""
    results: list[Placement] = []
    for asset in assets:
        if asset.place is None:
            continue  # installers stay on the thumb drive
        dest = destination(asset, keras_home, notebooks_dir)
        state = check_cached(asset, cache)
        if state.status not in (CACHED, VERIFIED, UNPINNED):
            reason = "missing from the cache" if state.status == MISSING else state.note
            results.append(Placement(asset.name, dest, NOT_PLACED, reason))
            continue
        source = cached_file(cache, asset)
        note = state.note if state.status == UNPINNED else ""
        if dest.is_dir() and not dest.is_symlink():
            results.append(Placement(asset.name, dest, NOT_PLACED, f"{dest} is a folder; fix the asset's place"))
            continue
        try:
            if _same_content(source, dest, asset):
                results.append(Placement(asset.name, dest, IDENTICAL, note))
                continue
            results.append(Placement(asset.name, dest, _link_or_copy(source, dest), note))
        except OSError as exc:
            results.append(Placement(asset.name, dest, NOT_PLACED, f"cannot write {dest}: {exc.strerror or exc}"))
    return results


def failure_line(results: Sequence[Placement], cache: Path) -> str | None:
    failed = [r for r in results if r.status == NOT_PLACED]
    if not failed:
        return None
    names = ", ".join(f"{r.name} ({r.note})" for r in failed)
    if all(r.note.startswith(("cannot write", str(r.dest))) for r in failed):
        return f"not placed: {names}"
    return f"not placed: {names}; run `appliance fetch --cache {cache}` first"
