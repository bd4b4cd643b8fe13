"""Lay out the thumb-drive image folder, after checking it fits the drive.

Layout (names FAT accepts):
    <name>-<version>.ova       the appliance
    virtualbox/<installer>     VirtualBox installers from the asset cache
    local-mode/                workshop.yml, assets.yml, appliance/, local/, notebooks/,
                               requirements/, cache/ (assets), drive.json: a checkout subset
    wheels/                    the wheels of every drive platform, each file once
    tools/<platform>/uv[.exe]  uv per platform; python/: CPython per platform + downloads.json
    Start workshop (Windows).cmd, Start workshop (macOS).command, start-workshop-linux.sh
    index.html, README.txt     the participant guide
    SHA256SUMS                 over every other file
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.paths import cache_dir, dist_dir
from appliance.thumbdrive import checksums, guide, localmode

Progress = Callable[[str], None]

FAT32_MAX_FILE = 4 * 1024**3  # a FAT32 file must be smaller than 4 GiB
# Allocation unit the formatters pick for a 8-64 GB drive; every file takes whole clusters.
CLUSTER = {"fat32": 32 * 1024, "exfat": 128 * 1024}
# Space the file system's own tables take (FAT copies, bitmap, directories), kept free.
FS_OVERHEAD = 0.02
_FAT_BAD = re.compile(r'[<>:"\\|?*\x00-\x1f]')
_FAT_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_SKIP_NAMES = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".git", ".DS_Store"}
# Written into every image folder this tool makes: only a folder holding it is replaced
# by a new build without --force. Not listed in SHA256SUMS, so never copied to drives.
MARKER_NAME = ".workshop-thumbdrive-image"
_PARTIAL = ".partial-"


class OutFolderError(ApplianceError):
    """--out names a place the image must not replace."""

    exit_code = 2


class LinkOutError(ApplianceError):
    """A symbolic link in what the drive carries from the checkout leads out of the repository."""

    exit_code = 2


def follow_link(link: Path, inside: Path) -> Path:
    """Where a symbolic link in the checkout leads, when that stays inside the repository.

    The drive carries what a link points to (FAT and exFAT hold no links), so a link out of the
    repository would put a file of the build machine (a key, someone's home folder) on every
    drive: refused, like a broken or looping link."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        raise LinkOutError(f"{link}: a symbolic link that leads nowhere (broken or a loop); "
                           "remove it or replace it with the file itself") from None
    if not target.is_relative_to(inside):
        raise LinkOutError(f"{link}: a symbolic link to {target}, outside the repository {inside}; the drive would "
                           "carry that file: copy what the workshop needs into the repository, or remove the link")
    return target


@dataclass(frozen=True)
class Entry:
    path: str                      # posix path inside the image
    size: int
    source: Path | None = None     # copied from here...
    content: bytes | None = None   # ...or written from this


@dataclass
class Plan:
    entries: list[Entry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # what the image should hold but the cache lacks
    platform_sizes: dict[str, int] = field(default_factory=dict)  # local mode's bytes per platform

    def add_file(self, path: str, source: Path) -> None:
        self.entries.append(Entry(path, source.stat().st_size, source=source))

    def add_tree(self, prefix: str, source: Path, inside: Path) -> None:
        """Every file below source (the content of links that stay inside `inside`, the
        repository); LinkOutError for a link that leaves it or loops."""
        if source.is_symlink():
            follow_link(source, inside)
        # real folders on the way down from source: a folder link back into one of them loops
        above: dict[Path, frozenset[Path]] = {source: frozenset({source.resolve()})}
        for walked, dirs, files in os.walk(source, followlinks=True):
            root = Path(walked)
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_NAMES and not d.startswith("."))
            for name in dirs:
                full = root / name
                real = follow_link(full, inside) if full.is_symlink() else full.resolve()
                if real in above[root]:
                    raise LinkOutError(f"{full}: a symbolic link back to {real}, a folder it is in (a loop); "
                                       "remove it")
                above[full] = above[root] | {real}
            for name in sorted(files):
                if name in _SKIP_NAMES or name.startswith(".") or name.endswith((".pyc", ".partial")):
                    continue
                full = root / name
                copied = follow_link(full, inside) if full.is_symlink() else full
                self.add_file(str(PurePosixPath(prefix, full.relative_to(source).as_posix())), copied)

    def add_content(self, path: str, content: bytes) -> None:
        self.entries.append(Entry(path, len(content), content=content))

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.entries)


def parse_size(text: str) -> int:
    """16G, 32GB (decimal, as drives are sold), 16GiB (binary), or bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ApplianceError(f"{text!r} is not a size; write e.g. 16G, 32GB or 64GiB")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def fat_name_problem(path: str) -> str | None:
    for part in PurePosixPath(path).parts:
        if _FAT_BAD.search(part):
            return f"{path}: {part!r} has a character FAT file systems reject"
        if part.split(".")[0].upper() in _FAT_RESERVED:
            return f"{path}: {part!r} is a reserved name on Windows"
        if part.endswith((" ", ".")):
            return f"{path}: {part!r} ends in a space or dot, which Windows drops"
        if len(part) > 255:
            return f"{path}: a name longer than 255 characters"
    return None


def cached_asset(root: Path, name: str) -> Path | None:
    for candidate in (cache_dir(root) / name, cache_dir(root) / "installers" / name):
        if candidate.is_file():
            return candidate
    return None


def default_ova(loaded: LoadedConfig) -> Path:
    return dist_dir(loaded.root) / f"{loaded.workshop.artifact_name}.ova"


def default_out(loaded: LoadedConfig) -> Path:
    return dist_dir(loaded.root) / "thumbdrive" / loaded.workshop.artifact_name


def plan_image(loaded: LoadedConfig, ova: Path) -> Plan:
    root = loaded.root
    plan = Plan()
    if not ova.is_file():
        raise ApplianceError(f"{ova}: no OVA; run `appliance export` first or pass --ova")
    plan.add_file(ova.name, ova)

    installers: dict[str, str] = {}
    for asset in loaded.manifest.assets:
        if asset.kind != "installer" or (asset.platform or "").startswith(("uv-", "cpython")):
            continue  # uv and CPython go under tools/ and python/, for the drive's platforms only
        found = cached_asset(root, asset.name)
        if found is None:
            plan.missing.append(f"virtualbox/{asset.name} ({asset.platform}; run `appliance fetch`)")
            continue
        plan.add_file(f"virtualbox/{asset.name}", found)
        installers[asset.platform or asset.name] = asset.name

    inside = root.resolve()
    for name in ("workshop.yml", loaded.workshop.assets.manifest, "pyproject.toml"):
        if (root / name).is_file():
            if (root / name).is_symlink():
                follow_link(root / name, inside)
            plan.add_file(f"local-mode/{name}", root / name)
    for folder in ("appliance", "local", "requirements", loaded.workshop.jupyter.root):
        if (root / folder).is_dir():
            plan.add_tree(f"local-mode/{folder}", root / folder, inside)
        else:
            plan.missing.append(f"local-mode/{folder}/ (not in the checkout)")
    for asset in loaded.included_assets():
        if asset.kind == "installer":
            continue
        found = cached_asset(root, asset.name)
        if found is None:
            plan.missing.append(f"local-mode/cache/{asset.name} (run `appliance fetch`)")
        else:
            plan.add_file(f"local-mode/cache/{asset.name}", found)
    local = localmode.plan_local_mode(loaded)
    for path, source in local.files:
        plan.add_file(path, source)
    for path, content in local.contents:
        plan.add_content(path, content)
    plan.platform_sizes = local.sizes

    facts = guide.GuideFacts(loaded.workshop, ova.name, installers, local.sizes)
    plan.add_content("index.html", guide.index_html(facts).encode("utf-8"))
    plan.add_content("README.txt", guide.readme_text(facts).encode("utf-8"))
    return plan


def space_needed(plan: Plan, filesystem: str) -> int:
    cluster = CLUSTER[filesystem]
    files = sum(math.ceil(entry.size / cluster) * cluster for entry in plan.entries)
    directories = len({str(PurePosixPath(e.path).parent) for e in plan.entries}) * cluster
    sums = cluster  # SHA256SUMS
    return files + directories + sums


def check_fits(plan: Plan, drive_size: int, filesystem: str) -> int:
    """Raise with the reason when the layout cannot go on such a drive; return the space it takes."""
    for entry in plan.entries:
        problem = fat_name_problem(entry.path)
        if problem:
            raise ApplianceError(f"{problem}; rename it")
        if filesystem == "fat32" and entry.size >= FAT32_MAX_FILE:
            raise ApplianceError(
                f"{entry.path} is {entry.size / 1024**3:.2f} GiB; FAT32 cannot hold a file of 4 GiB or more: "
                "use --filesystem exfat (and format the drives exFAT) or make the VM disk smaller")
    needed = space_needed(plan, filesystem)
    usable = int(drive_size * (1 - FS_OVERHEAD))
    if needed > usable:
        raise ApplianceError(
            f"the image needs {needed / 1e9:.2f} GB but a {drive_size / 1e9:.0f} GB drive holds about "
            f"{usable / 1e9:.2f} GB; use a bigger --drive-size")
    return needed


def _copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same file system: no copy of a multi-GB OVA
    except OSError:
        shutil.copyfile(source, target)


def check_out_folder(out: Path, force: bool, protected: list[Path]) -> Path:
    """The absolute image folder, or OutFolderError with the one line saying why not.

    A new build replaces the folder: that is only safe for a folder an earlier build made
    (it holds MARKER_NAME). --force allows any other folder, never the file system root,
    the home folder or a folder holding the workshop checkout."""
    target = Path(os.path.abspath(out))
    if target.parent == target:
        raise OutFolderError(f"--out {out}: is the root of the file system; give a new folder such as "
                             "dist/thumbdrive/NAME")
    if out.is_symlink():
        raise OutFolderError(f"--out {out}: is a symbolic link; give the real folder")
    real = target.resolve()
    for place in [Path.home(), *protected]:
        place = place.resolve()
        if real == place or real in place.parents:
            raise OutFolderError(f"--out {out}: holds {place}; give a new folder such as dist/thumbdrive/NAME")
    if not target.exists():
        return target
    if not target.is_dir():
        raise OutFolderError(f"--out {out}: is a file, not a folder; give a new folder (the file is kept)")
    if not (target / MARKER_NAME).is_file() and not force:
        raise OutFolderError(f"--out {out}: is a folder this tool did not make (no {MARKER_NAME}); give a new "
                             "folder, or --force to replace it")
    return target


def _remove_stale_partials(out: Path) -> None:
    """Folders an interrupted build left next to out (hidden, marked): never anything else."""
    for stale in out.parent.glob(f".{out.name}{_PARTIAL}*"):
        if stale.is_dir() and not stale.is_symlink() and (stale / MARKER_NAME).is_file():
            shutil.rmtree(stale)


def build_image(plan: Plan, out: Path, progress: Progress) -> Path:
    """Write the image folder under a fresh hidden name, hash everything, then swap it in.
    Call check_out_folder first: an existing out is replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}", dir=out.parent))
    os.chmod(partial, 0o755)
    (partial / MARKER_NAME).write_text("made by `appliance thumbdrive build`; replaced by the next build\n",
                                       encoding="utf-8")
    sums: dict[str, str] = {}
    done = 0
    for entry in plan.entries:
        target = partial / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.content is not None:
            target.write_bytes(entry.content)
        else:
            assert entry.source is not None
            _copy(entry.source, target)
        sums[entry.path] = checksums.sha256_file(target)
        done += entry.size
        if entry.size > 50_000_000:
            progress(f"{entry.path}: {entry.size / 1e9:.2f} GB hashed ({100 * done // max(plan.total, 1)}% of the image)")
    (partial / checksums.SUMS_NAME).write_text(checksums.format_sums(sums), encoding="utf-8")
    if out.exists():
        # The old image moves aside under a name nothing else uses, then goes; it is marked
        # (or --force was given), so a stale copy is removed by the next build.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}old-", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        os.replace(partial, out)
    return out
