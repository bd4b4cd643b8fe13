"""`workshop-update`: the organizer's newer notebooks into a participant's folder, after the day,
without losing the participant's work.

The merge is nbgitpuller's (in the workshop lock): edits the participant made are kept, files
the organizer added or changed arrive. Where both changed the same notebook, the participant's
copy stays as it is and the organizer's new version lands beside it as `<name>-updated.ipynb`
(a textual merge of two notebooks' JSON helps no one).

A participant's folder that is not yet a git checkout (the VM's and local mode's copies) becomes
one at its first update: files equal to the shipped (pristine) copy count as unedited and take
the organizer's version; any other difference is the participant's edit.

Standalone on purpose (standard library + nbgitpuller, imported when used): the VM runs this
file with its venv's Python, where the `appliance` package is not installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

UPDATED_SUFFIX = "-updated"
# Commits the update makes in the participant's folder carry this identity, not theirs.
GIT_IDENTITY = ["-c", "user.name=workshop-update", "-c", "user.email=workshop-update@localhost"]


class UpdateError(Exception):
    """Bad input or an unreachable source: one line for the participant."""


@dataclass
class UpdateReport:
    arrived: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the participant's copy kept, the new one beside

    def summary(self) -> str:
        if not (self.arrived or self.updated or self.kept):
            return "the notebooks are up to date; nothing changed"
        parts = []
        if self.arrived:
            parts.append(f"new: {', '.join(self.arrived)}")
        if self.updated:
            parts.append(f"updated: {', '.join(self.updated)}")
        if self.kept:
            parts.append("your edits kept, the organizer's version beside them: "
                         + ", ".join(f"{k} -> {beside_name(k)}" for k in self.kept))
        return "; ".join(parts)


def _git(*args: str, cwd: Path, check: bool = True) -> str:
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UpdateError(f"git {args[0]} failed in {cwd}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return result.stdout


def resolve_source(source: str) -> str:
    """A git URL, or a folder holding a git repository (a clone or a bare one, e.g. on a thumb drive)."""
    if "://" in source or source.startswith("git@"):
        return source
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise UpdateError(f"{source}: no such folder and not a git URL; give the organizer's git URL "
                          "or the folder on the thumb drive that holds the notebooks repository")
    if not ((folder / ".git").exists() or ((folder / "HEAD").is_file() and (folder / "objects").is_dir())):
        raise UpdateError(f"{source} is not a git repository; give the folder that holds the organizer's "
                          "notebooks repository (it has a .git folder, or is a bare repository)")
    return str(folder.resolve())


def beside_name(relative: str) -> str:
    path = Path(relative)
    return str(path.with_name(path.stem + UPDATED_SUFFIX + path.suffix))


def _write_beside(folder: Path, relative: str, content: bytes) -> None:
    """The organizer's version next to the participant's; never over a different file of theirs."""
    target = folder / beside_name(relative)
    counter = 2
    while target.exists() and target.read_bytes() != content:
        target = folder / Path(relative).with_name(f"{Path(relative).stem}{UPDATED_SUFFIX}-{counter}{Path(relative).suffix}")
        counter += 1
    _replace(target, content)


def _replace(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.workshop-update")
    tmp.write_bytes(content)
    tmp.replace(path)


def _tracked(folder: Path, ref: str = "HEAD") -> list[str]:
    return [line for line in _git("ls-tree", "-r", "--name-only", ref, cwd=folder).splitlines() if line]


def _show(folder: Path, ref: str, relative: str) -> bytes:
    return subprocess.run(["git", "show", f"{ref}:{relative}"], cwd=folder, capture_output=True, check=True).stdout


def first_update(url: str, branch: str, notebooks: Path, pristine: Path | None) -> UpdateReport:
    """Make `notebooks` (not a git checkout yet) one of `url`, keeping the participant's edits."""
    report = UpdateReport()
    notebooks.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".workshop-update-", dir=notebooks.parent) as tmp:
        clone = Path(tmp) / "clone"
        result = subprocess.run(["git", "clone", "--quiet", "--branch", branch, "--", url, str(clone)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise UpdateError(f"cannot get the notebooks from {url} (branch {branch}): "
                              f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'git clone failed'}")
        for relative in _tracked(clone):
            new = (clone / relative).read_bytes()
            mine = notebooks / relative
            if not mine.exists():
                _replace(mine, new)
                report.arrived.append(relative)
            elif mine.read_bytes() == new:
                continue
            elif pristine is not None and (pristine / relative).is_file() \
                    and (pristine / relative).read_bytes() == mine.read_bytes():
                _replace(mine, new)  # as shipped: not an edit of the participant's
                report.updated.append(relative)
            else:
                _write_beside(notebooks, relative, new)
                report.kept.append(relative)
        (clone / ".git").rename(notebooks / ".git")
    # the participant's edits become a commit on top of the organizer's, as nbgitpuller would make
    _git("commit", "--quiet", "--allow-empty", "-am", "workshop-update: the participant's work at the first update",
         cwd=notebooks)
    return report


def later_update(url: str, branch: str, notebooks: Path, log: Callable[[str], None]) -> UpdateReport:
    """nbgitpuller's merge in a folder that is already a checkout, conflicts kept as two files."""
    from nbgitpuller.pull import GitPuller

    report = UpdateReport()
    _git("fetch", "--quiet", "origin", branch, cwd=notebooks)
    upstream = f"origin/{branch}"
    base = _git("merge-base", "HEAD", upstream, cwd=notebooks).strip()
    theirs = {}
    for line in _git("diff", "--name-status", base, upstream, cwd=notebooks).splitlines():
        status, _, relative = line.partition("\t")
        theirs[relative] = status[:1]
    mine = set(_git("diff", "--name-only", base, cwd=notebooks).splitlines())  # working tree vs the base
    both = sorted(relative for relative, status in theirs.items()
                  if relative in mine and status != "D" and (notebooks / relative).exists())
    saved = {relative: (notebooks / relative).read_bytes() for relative in both}
    for relative, status in sorted(theirs.items()):
        if relative in saved or status == "D":
            continue
        (report.arrived if status == "A" and not (notebooks / relative).exists() else report.updated).append(relative)

    puller = GitPuller(url, str(notebooks), branch=branch, depth=0)
    for line in puller.pull():
        log(str(line).rstrip())
    for relative, content in saved.items():
        new = _show(notebooks, upstream, relative)
        if new == content:
            continue
        _replace(notebooks / relative, content)  # exactly the participant's, not a textual merge
        _write_beside(notebooks, relative, new)
        report.kept.append(relative)
    if saved:
        _git("commit", "--quiet", "--allow-empty", "-am", "workshop-update: the participant's copies kept", cwd=notebooks)
    return report


def update_notebooks(source: str, notebooks: Path, *, branch: str = "main", pristine: Path | None = None,
                     log: Callable[[str], None] = lambda line: None) -> UpdateReport:
    if shutil.which("git") is None:
        raise UpdateError("git is not installed; install git (Debian/Ubuntu: sudo apt install git)")
    url = resolve_source(source)
    if not (notebooks / ".git").is_dir():
        return first_update(url, branch, notebooks, pristine)
    current = _git("remote", "get-url", "origin", cwd=notebooks, check=False).strip()
    if current != url:
        _git("remote", "set-url", "origin", url, cwd=notebooks)  # a new source: the git URL or another drive
    return later_update(url, branch, notebooks, log)


def main(argv: list[str] | None = None, prog: str = "workshop-update") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Get the organizer's newer notebooks, keeping your edits.")
    parser.add_argument("--from", dest="source", required=True, metavar="GIT_URL_OR_FOLDER",
                        help="the organizer's git URL, or a folder holding the notebooks repository (a thumb drive)")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--notebooks", type=Path, required=True, help="the participant's notebooks folder")
    parser.add_argument("--pristine", type=Path, help="the notebooks as shipped (tells unedited files from edits)")
    parser.add_argument("--verbose", action="store_true", help="show git's and nbgitpuller's output")
    args = parser.parse_args(argv)
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda line: None)
    print(f"{prog}: updating {args.notebooks} from {args.source} ({args.branch})", file=sys.stderr)
    try:
        report = update_notebooks(args.source, args.notebooks.resolve(), branch=args.branch,
                                  pristine=args.pristine, log=log)
    except UpdateError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    print(f"{prog}: {report.summary()}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
